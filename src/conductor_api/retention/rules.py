"""The registry of expiring things: one `Expiring(table, condition)` line per kind of row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, or_

from conductor_api.auth.models import LoginThrottle
from conductor_api.config import Settings
from conductor_api.devices.models import DeviceToken
from conductor_api.dpop.models import SeenProof
from conductor_api.events.models import SecurityEvent
from conductor_api.mfa.models import MfaToken
from conductor_api.passkeys.models import WebAuthnChallenge
from conductor_api.sessions.models import DeviceSession


@dataclass(frozen=True, slots=True)
class Retention:
    """The cut-off times of one prune round."""

    now: datetime
    events_before: datetime
    sessions_ended_before: datetime
    counters_idle_before: datetime

    @classmethod
    def at(cls, now: datetime, settings: Settings) -> Retention:
        """The cut-offs that the settings give at `now`."""
        return cls(
            now=now,
            events_before=now - timedelta(days=settings.event_retention_days),
            sessions_ended_before=now - timedelta(days=settings.session_retention_days),
            # The per-name and per-address window are both LOCKOUT_MINUTES.
            counters_idle_before=now - timedelta(minutes=settings.lockout_minutes),
        )


@dataclass(frozen=True, slots=True)
class Expiring:
    """Rows of `table` that `condition` (given the round's cut-offs) says are past keeping."""

    table: Table
    condition: Callable[[Retention], ColumnElement[bool]]

    @property
    def name(self) -> str:
        """The table's name, as `conductor-api prune` prints it."""
        return self.table.name


def _old_event(r: Retention) -> ColumnElement[bool]:
    return SecurityEvent.created_at < r.events_before


def _revoked_session(r: Retention) -> ColumnElement[bool]:
    return DeviceSession.revoked_at < r.sessions_ended_before


def _expired_session(r: Retention) -> ColumnElement[bool]:
    # The refresh expiry never passes the absolute one, so this is every unrevoked session
    # that ended by itself, and also one revoked only after it had expired (it ended then).
    return DeviceSession.expires_at < r.sessions_ended_before


def _aged_proof(r: Retention) -> ColumnElement[bool]:
    # A proof past `iat` + DPOP_MAX_SKEW_SECONDS is refused for its age anyway: its jti
    # need not be remembered (each process also deletes these every half minute).
    return SeenProof.expires_at < r.now


def _idle_counter(r: Retention) -> ColumnElement[bool]:
    # `window_started_at` is the last attempt counted. Once the window has passed with no
    # attempt and no lock is held, the row says nothing the absence of a row would not:
    # an address's count restarts anyway, and a name's failures are forgiven after a quiet
    # window. A lock that has run out is no lock (the next attempt restarts the count), and
    # a slot still held by a check in flight keeps the row whose count it will settle.
    t = LoginThrottle
    return and_(
        t.window_started_at < r.counters_idle_before,
        or_(t.locked_until.is_(None), t.locked_until <= r.now),
        or_(t.pending == 0, t.pending_until.is_(None), t.pending_until <= r.now),
    )


def _revoked_device_token(r: Retention) -> ColumnElement[bool]:
    # Kept as long as an ended session: the operator can still see what a device was.
    return DeviceToken.revoked_at < r.sessions_ended_before


def _expired_device_token(r: Retention) -> ColumnElement[bool]:
    # Its counter (a `login_throttles` row keyed by its id) goes by `_idle_counter`.
    return DeviceToken.expires_at < r.sessions_ended_before


def _expired_mfa_token(r: Retention) -> ColumnElement[bool]:
    # A pending sign-in is good for five minutes and once: past its expiry, spent or not,
    # it can never be used, and it says nothing the events do not.
    return MfaToken.expires_at < r.now


def _expired_challenge(r: Retention) -> ColumnElement[bool]:
    return WebAuthnChallenge.expires_at < r.now


def _spent_challenge(r: Retention) -> ColumnElement[bool]:
    return WebAuthnChallenge.spent_at < r.now


# One line per expiring thing; later features add theirs here.
RULES: tuple[Expiring, ...] = (
    Expiring(SecurityEvent.__table__, _old_event),  # type: ignore[arg-type]
    # A session ends at its revocation or its expiry, whichever comes first. Two lines, not
    # one OR: each is then one index range scan that stops after a batch, where an OR is
    # a bitmap of every match, rebuilt for each batch.
    Expiring(DeviceSession.__table__, _revoked_session),  # type: ignore[arg-type]
    Expiring(DeviceSession.__table__, _expired_session),  # type: ignore[arg-type]
    Expiring(LoginThrottle.__table__, _idle_counter),  # type: ignore[arg-type]
    Expiring(DeviceToken.__table__, _revoked_device_token),  # type: ignore[arg-type]
    Expiring(DeviceToken.__table__, _expired_device_token),  # type: ignore[arg-type]
    Expiring(MfaToken.__table__, _expired_mfa_token),  # type: ignore[arg-type]
    Expiring(SeenProof.__table__, _aged_proof),  # type: ignore[arg-type]
    # A WebAuthn challenge is single use and lives WEBAUTHN_CHALLENGE_SECONDS: once spent
    # or expired it can only be refused. Two lines for two index range scans, as above.
    Expiring(WebAuthnChallenge.__table__, _expired_challenge),  # type: ignore[arg-type]
    Expiring(WebAuthnChallenge.__table__, _spent_challenge),  # type: ignore[arg-type]
)
