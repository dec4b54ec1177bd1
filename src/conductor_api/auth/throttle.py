"""Counters per username and per client address: settled failures and checks in flight.

Every change is one atomic statement: `read` shows the counter without a lock, the caller
decides, and `take` reserves a slot with an UPDATE guarded by the same condition. A
check-then-increment across the `await` of the password hash would let every parallel
request read the same count and all get through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, delete, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.models import LoginThrottle
from conductor_api.db import UTCDateTime

USER = "user"
IP = "ip"
# A device token's own counter, keyed by the token's id (trusted devices).
DEVICE = "device"
# Registrations per client address (each one costs an Argon2id hash).
REGISTER = "register"
T = LoginThrottle


@dataclass(frozen=True, slots=True)
class Counter:
    """A counter's state right after a statement changed it."""

    failures: int
    pending: int
    locked_until: datetime | None
    window_started_at: datetime


_RETURNING = (T.failures, T.pending, T.locked_until, T.window_started_at)


def _insert(db: AsyncSession) -> Any:
    dialect = db.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(LoginThrottle)


def _ts(value: datetime) -> ColumnElement[datetime]:
    return literal(value, UTCDateTime())


def _row(scope: str, key: str) -> ColumnElement[bool]:
    return (T.scope == scope) & (T.key == key)


def _counter(row: Any) -> Counter:
    return Counter(row[0], row[1], row[2], row[3])


def _restart(now: datetime, window: timedelta | None) -> ColumnElement[bool]:
    """Whether the failures start again: a lock that has expired, or for an address
    (`window` given) a window that has."""
    if window is None:
        return T.locked_until.is_not(None) & (T.locked_until <= _ts(now))
    return T.window_started_at <= _ts(now - window)


def _stale(now: datetime) -> ColumnElement[bool]:
    """Whether the reservations were left behind by a process that died during its checks."""
    return T.pending_until.is_(None) | (T.pending_until <= _ts(now))


def _effective(now: datetime, window: timedelta | None) -> tuple[Any, Any, Any]:
    """Failures, reservations and lock as they count at `now`."""
    restart = _restart(now, window)
    failures = case((restart, 0), else_=T.failures)
    pending = case((_stale(now), 0), else_=T.pending)
    locked = case((restart, None), else_=T.locked_until) if window is None else T.locked_until
    return failures, pending, locked


async def read(
    db: AsyncSession, scope: str, key: str, now: datetime, *, window: timedelta | None
) -> Counter | None:
    """A counter as it counts at `now`, read without a lock (None when there is none)."""
    failures, pending, locked = _effective(now, window)
    row = (
        await db.execute(
            select(failures, pending, locked, T.window_started_at).where(_row(scope, key))
        )
    ).first()
    return None if row is None else _counter(row)


async def create(db: AsyncSession, scope: str, key: str, now: datetime) -> None:
    """A counter at zero, unless there is one."""
    await db.execute(
        _insert(db)
        .values(scope=scope, key=key, failures=0, pending=0, window_started_at=now)
        .on_conflict_do_nothing(index_elements=["scope", "key"])
    )


async def take(
    db: AsyncSession,
    scope: str,
    key: str,
    now: datetime,
    *,
    limit: int,
    window: timedelta | None,
    ttl: timedelta,
) -> Counter | None:
    """Reserve a slot for one check if the key is not locked and its failures and checks in
    flight stay under `limit`: one guarded UPDATE, whose condition PostgreSQL evaluates
    again on the locked row, so that no two requests take the last slot. The counter as it
    was before (None when nothing was taken). All slots are stale after `ttl` without a new
    one: a process killed during its checks cannot give them back."""
    restart = _restart(now, window)
    failures, pending, locked = _effective(now, window)
    open_ = (locked.is_(None) | (locked <= _ts(now))) & (failures + pending < limit)
    # A name's row dates from its last attempt (retention prunes rows idle for a window);
    # an address's from the start of its failure window.
    started = case((restart, _ts(now)), else_=T.window_started_at) if window else _ts(now)
    row = (
        await db.execute(
            update(T)
            .where(_row(scope, key), open_)
            .values(
                # Every right-hand side sees the row as it was before this statement.
                failures=failures,
                window_started_at=started,
                locked_until=locked,
                pending=pending + 1,
                pending_until=_ts(now + ttl),
            )
            .returning(*_RETURNING)
        )
    ).first()
    return None if row is None else Counter(row[0], row[1] - 1, row[2], row[3])


_RELEASE = case((T.pending > 0, T.pending - 1), else_=0)


async def release(db: AsyncSession, scope: str, key: str) -> None:
    """Give a slot back without counting anything (the attempt was refused or abandoned)."""
    await db.execute(update(T).where(_row(scope, key)).values(pending=_RELEASE))


async def fail_user(
    db: AsyncSession,
    key: str,
    now: datetime,
    *,
    max_failures: int,
    lockout: timedelta,
    scope: str = USER,
) -> bool:
    """Turn a name's slot into a failure; whether this failure locked the name."""
    reached = T.locked_until.is_(None) & (T.failures + 1 >= max_failures)
    row = (
        await db.execute(
            update(T)
            .where(_row(scope, key))
            .values(
                pending=_RELEASE,
                failures=T.failures + 1,
                locked_until=case((reached, _ts(now + lockout)), else_=T.locked_until),
            )
            .returning(*_RETURNING)
        )
    ).first()
    return row is not None and row[2] == now + lockout


async def forgive_user(
    db: AsyncSession, key: str, forgiven: int, *, max_failures: int, scope: str = USER
) -> None:
    """A right password gives its slot back and forgives the `forgiven` failures settled
    before it took the slot, not those settled since (a reset to zero would let each
    success hand out that many extra guesses)."""
    left = T.failures - forgiven
    await db.execute(
        update(T)
        .where(_row(scope, key))
        .values(
            pending=_RELEASE,
            failures=case((left > 0, left), else_=0),
            locked_until=case((left >= max_failures, T.locked_until), else_=None),
        )
    )


async def fail_ip(db: AsyncSession, address: str, now: datetime, *, window: timedelta) -> None:
    """Turn an address's slot into a failure, in a fixed window of `window` length."""
    stale = T.window_started_at <= _ts(now - window)
    await db.execute(
        update(T)
        .where(_row(IP, address))
        .values(
            pending=_RELEASE,
            failures=case((stale, 1), else_=T.failures + 1),
            window_started_at=case((stale, _ts(now)), else_=T.window_started_at),
        )
    )


async def release_ip(db: AsyncSession, address: str) -> None:
    """Give an address's slot back uncounted; a row with nothing left in it goes (logins
    that did not fail leave no trace of an address)."""
    await release(db, IP, address)
    await db.execute(delete(T).where(_row(IP, address), T.failures == 0, T.pending == 0))


async def add_failure(
    db: AsyncSession, scope: str, key: str, now: datetime, *, window: timedelta
) -> Counter:
    """Count one event in a fixed window of `window` length, in one atomic upsert, outside
    a sign-in's slots (a forged refresh token from an address, a registration)."""
    stale = T.window_started_at <= _ts(now - window)
    statement = (
        _insert(db)
        .values(scope=scope, key=key, failures=1, pending=0, window_started_at=now)
        .on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={
                "failures": case((stale, 1), else_=T.failures + 1),
                "window_started_at": case((stale, _ts(now)), else_=T.window_started_at),
            },
        )
        .returning(*_RETURNING)
    )
    return _counter((await db.execute(statement)).one())


async def unlock_user(db: AsyncSession, key: str, device_keys: Sequence[str] = ()) -> bool:
    """Clear a name's lockout and count, and those of the given device tokens (the
    operator's `users unlock`); whether any of them held a lock or a failure."""
    targets = _row(USER, key)
    if device_keys:
        targets = targets | ((T.scope == DEVICE) & T.key.in_(device_keys))
    result = await db.execute(
        update(T)
        .where(targets, (T.failures > 0) | T.locked_until.is_not(None))
        .values(failures=0, locked_until=None)
        .returning(T.key)
    )
    return result.first() is not None


async def locks(db: AsyncSession, now: datetime) -> dict[str, datetime]:
    """Names locked at `now`, with the end of each lock."""
    rows = await db.execute(
        select(T.key, T.locked_until).where(T.scope == USER, T.locked_until > _ts(now))
    )
    return {key: until for key, until in rows.tuples() if until is not None}
