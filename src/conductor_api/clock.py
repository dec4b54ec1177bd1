"""An injectable clock, so that expiry and lockout are tested without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """The wall clock in UTC."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)


class FrozenClock(Clock):
    """A clock that only moves when told to; for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        """The time this clock was last set to."""
        return self._now

    def advance(self, **delta: float) -> None:
        """Move the clock forward, e.g. `advance(minutes=15)`."""
        self._now += timedelta(**delta)
