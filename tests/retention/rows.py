"""Rows of every expiring kind, placed around the retention cut-offs, for prune tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from conductor_api.auth.models import LoginThrottle
from conductor_api.devices.models import DeviceToken
from conductor_api.dpop.models import SeenProof
from conductor_api.events.models import SecurityEvent
from conductor_api.mfa.models import MfaToken
from conductor_api.passkeys.models import WebAuthnChallenge
from conductor_api.sessions.models import DeviceSession


@dataclass
class Expected:
    """What a prune with the default settings must delete, and what it must keep."""

    deleted: dict[str, set[object]] = field(default_factory=dict)
    kept: dict[str, set[object]] = field(default_factory=dict)

    def add(self, table: str, key: object, *, delete: bool) -> None:
        """Record one row the test inserted."""
        target = self.deleted if delete else self.kept
        target.setdefault(table, set()).add(key)


async def insert_event(conn: AsyncConnection, user_id: uuid.UUID | None, at: datetime) -> uuid.UUID:
    """One login_failed event at `at`."""
    event_id = uuid.uuid4()
    await conn.execute(
        insert(SecurityEvent).values(
            id=event_id, user_id=user_id, username_key="x", type="login_failed", created_at=at
        )
    )
    return event_id


async def insert_session(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    now: datetime,
    *,
    expires: timedelta,
    revoked: timedelta | None = None,
) -> uuid.UUID:
    """A session whose refresh expiry is `now + expires`, revoked at `now + revoked`."""
    session_id = uuid.uuid4()
    await conn.execute(
        insert(DeviceSession).values(
            id=session_id, user_id=user_id, device_name="d", ip_address="192.0.2.1",
            user_agent="ua", created_at=now - timedelta(days=200), last_used_at=now,
            expires_at=now + expires, absolute_expires_at=now + expires + timedelta(days=1),
            revoked_at=None if revoked is None else now + revoked,
            revoked_reason=None if revoked is None else "logout",
            refresh_token_hash="0" * 64, generation=0,
        )
    )  # fmt: skip
    return session_id


async def insert_counter(
    conn: AsyncConnection,
    scope: str,
    key: str,
    window_started_at: datetime,
    locked_until: datetime | None = None,
    pending_until: datetime | None = None,
) -> tuple[str, str]:
    """A login_throttles row; with `pending_until`, one check in flight until then."""
    await conn.execute(
        insert(LoginThrottle).values(
            scope=scope, key=key, failures=3, window_started_at=window_started_at,
            locked_until=locked_until, pending=0 if pending_until is None else 1,
            pending_until=pending_until,
        )
    )  # fmt: skip
    return scope, key


async def insert_device_token(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    now: datetime,
    *,
    expires: timedelta,
    revoked: timedelta | None = None,
) -> uuid.UUID:
    """A device token that expires at `now + expires`, revoked at `now + revoked`."""
    token_id = uuid.uuid4()
    await conn.execute(
        insert(DeviceToken).values(
            id=token_id, user_id=user_id, token_hash=uuid.uuid4().hex * 2,
            created_at=now - timedelta(days=200), last_used_at=now - timedelta(days=100),
            expires_at=now + expires, revoked_at=None if revoked is None else now + revoked,
        )
    )  # fmt: skip
    return token_id


async def insert_mfa_token(
    conn: AsyncConnection, user_id: uuid.UUID, now: datetime, *, expires: timedelta, spent: bool
) -> uuid.UUID:
    """A pending second-factor sign-in that expires at `now + expires`."""
    token_id = uuid.uuid4()
    await conn.execute(
        insert(MfaToken).values(
            id=token_id, token_hash=uuid.uuid4().hex * 2, user_id=user_id, device_name="d",
            created_at=now + expires - timedelta(minutes=5), expires_at=now + expires,
            failures=0, spent_at=now + expires - timedelta(minutes=4) if spent else None,
        )
    )  # fmt: skip
    return token_id


async def insert_challenge(
    conn: AsyncConnection, now: datetime, *, expires: timedelta, spent: timedelta | None = None
) -> uuid.UUID:
    """A WebAuthn challenge that expires at `now + expires`, spent at `now + spent`."""
    challenge_id = uuid.uuid4()
    await conn.execute(
        insert(WebAuthnChallenge).values(
            id=challenge_id, challenge=b"c" * 32, purpose="authentication", user_id=None,
            created_at=now + expires - timedelta(minutes=5), expires_at=now + expires,
            spent_at=None if spent is None else now + spent,
        )
    )  # fmt: skip
    return challenge_id


async def seed_around_cutoffs(
    conn: AsyncConnection, user_id: uuid.UUID, now: datetime, *, exact: bool = True
) -> Expected:
    """Rows on both sides of each cut-off of the defaults (events 90 days, sessions 30 days,
    counters LOCKOUT_MINUTES = 15); with `exact`, also one right on a cut-off (kept: only
    what is older than the retention goes), which needs a clock that does not move."""
    day, minute = timedelta(days=1), timedelta(minutes=1)
    e = Expected()
    events = [(91 * day, True), (89 * day, False), (0 * day, False)]
    if exact:
        events.append((90 * day, False))
    for age, delete in events:
        e.add("security_events", await insert_event(conn, user_id, now - age), delete=delete)
    # An unknown name's event has no user; it expires all the same.
    e.add("security_events", await insert_event(conn, None, now - 100 * day), delete=True)
    sessions = (
        (dict(expires=5 * day), False),  # live
        (dict(expires=-29 * day), False),  # expired, not long enough ago
        (dict(expires=-31 * day), True),  # expired long ago
        (dict(expires=-25 * day, revoked=-31 * day), True),  # revoked long ago
        (dict(expires=-22 * day, revoked=-29 * day), False),  # revoked recently
        (dict(expires=40 * day, revoked=-29 * day), False),  # revoked recently, unexpired
        (dict(expires=-40 * day, revoked=-1 * day), True),  # revoked long after it expired
    )
    for kwargs, delete in sessions:
        sid = await insert_session(conn, user_id, now, **kwargs)
        e.add("sessions", sid, delete=delete)
    counters = (
        (("ip", "192.0.2.1", now - 16 * minute), True),  # window passed
        (("ip", "192.0.2.2", now - 14 * minute), False),  # window still open
        (("user", "idle", now - 16 * minute), True),  # failures forgiven after a quiet window
        (("user", "recent", now - 1 * minute), False),
        (("user", "locked", now - 16 * minute, now + 5 * minute), False),  # holds a lock
        (("user", "was-locked", now - 40 * minute, now - 1 * minute), True),  # lock ran out
        # A check still in flight keeps its row, however old the window.
        (("user", "in-flight", now - 16 * minute, None, now + 1 * minute), False),
        (("user", "stale-slot", now - 16 * minute, None, now - 1 * minute), True),
    )
    for args, delete in counters:
        e.add("login_throttles", await insert_counter(conn, *args), delete=delete)
    # Device tokens end like sessions: at revocation or expiry, kept 30 days after.
    device_tokens = (
        (dict(expires=100 * day), False),  # live
        (dict(expires=-29 * day), False),  # expired recently
        (dict(expires=-31 * day), True),  # expired long ago
        (dict(expires=50 * day, revoked=-31 * day), True),  # revoked long ago
        (dict(expires=50 * day, revoked=-29 * day), False),  # revoked recently
    )
    for kwargs, delete in device_tokens:
        tid = await insert_device_token(conn, user_id, now, **kwargs)
        e.add("device_tokens", tid, delete=delete)
    # A pending sign-in is useless once expired, spent or not.
    mfa_tokens = (
        (2 * minute, False, False),  # still pending
        (2 * minute, True, False),  # spent, not yet expired
        (-1 * minute, False, True),  # expired unused
        (-1 * minute, True, True),  # expired after it was spent
    )
    for expires, spent, delete in mfa_tokens:
        mid = await insert_mfa_token(conn, user_id, now, expires=expires, spent=spent)
        e.add("mfa_tokens", mid, delete=delete)
    # DPoP proofs are remembered until they could no longer be accepted anyway.
    for key, until, delete in (("aged", now - minute, True), ("live", now + minute, False)):
        await conn.execute(insert(SeenProof).values(key=key, expires_at=until))
        e.add("dpop_proofs", key, delete=delete)
    second = timedelta(seconds=1)
    challenges = (
        (dict(expires=4 * minute), False),  # live
        (dict(expires=-1 * second), True),  # expired, never answered
        (dict(expires=4 * minute, spent=-1 * second), True),  # answered: single use
    )
    for kwargs, delete in challenges:
        e.add("webauthn_challenges", await insert_challenge(conn, now, **kwargs), delete=delete)
    return e


async def keys(conn: AsyncConnection) -> dict[str, set[object]]:
    """The primary keys each expiring table holds."""
    return {
        "security_events": set((await conn.scalars(select(SecurityEvent.id))).all()),
        "sessions": set((await conn.scalars(select(DeviceSession.id))).all()),
        "login_throttles": {
            (r[0], r[1]) for r in await conn.execute(select(LoginThrottle.scope, LoginThrottle.key))
        },
        "device_tokens": set((await conn.scalars(select(DeviceToken.id))).all()),
        "mfa_tokens": set((await conn.scalars(select(MfaToken.id))).all()),
        "dpop_proofs": set((await conn.scalars(select(SeenProof.key))).all()),
        "webauthn_challenges": set((await conn.scalars(select(WebAuthnChallenge.id))).all()),
    }
