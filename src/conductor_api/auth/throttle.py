"""Failure counters per username and per client address, each change one atomic statement.

An attempt is reserved (counted) *before* its password is checked, and the count is reset
only when the password turns out right. A check-then-increment across the `await` of the
password hash would let every parallel request read the same count and all get through.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.models import LoginThrottle
from conductor_api.db import UTCDateTime

USER = "user"
IP = "ip"


@dataclass(frozen=True, slots=True)
class Counter:
    """A counter's state right after a statement changed it."""

    failures: int
    locked_until: datetime | None
    window_started_at: datetime


def _insert(db: AsyncSession) -> Any:
    dialect = db.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(LoginThrottle)


def _ts(value: datetime) -> Any:
    return literal(value, UTCDateTime())


async def _upsert(
    db: AsyncSession, scope: str, key: str, now: datetime, set_: dict[str, Any]
) -> Counter:
    statement = (
        _insert(db)
        .values(scope=scope, key=key, failures=1, window_started_at=now, locked_until=None)
        .on_conflict_do_update(index_elements=["scope", "key"], set_=set_)
        .returning(
            LoginThrottle.failures, LoginThrottle.locked_until, LoginThrottle.window_started_at
        )
    )
    row = (await db.execute(statement)).one()
    return Counter(row[0], row[1], row[2])


async def reserve_user(
    db: AsyncSession, key: str, now: datetime, *, max_failures: int, lockout: timedelta
) -> Counter:
    """Count one attempt for a username. The attempt past `max_failures` (in flight or
    failed) locks the name; an expired lock starts the count again."""
    t = LoginThrottle
    locked = t.locked_until > _ts(now)
    expired = t.locked_until.is_not(None)
    return await _upsert(
        db,
        USER,
        key,
        now,
        {
            # Every right-hand side sees the row as it was before this statement.
            "failures": case(
                (locked, t.failures),
                (expired, 1),
                # The attempt that finds the limit reached is refused, not counted: a success
                # among those in flight must be able to bring the count back under the limit.
                ((t.locked_until.is_(None)) & (t.failures >= max_failures), t.failures),
                else_=t.failures + 1,
            ),
            "locked_until": case(
                (locked, t.locked_until),
                ((t.locked_until.is_(None)) & (t.failures >= max_failures), _ts(now + lockout)),
                else_=None,
            ),
            "window_started_at": case((locked, t.window_started_at), else_=_ts(now)),
        },
    )


async def fail_user(
    db: AsyncSession, key: str, now: datetime, *, max_failures: int, lockout: timedelta
) -> Counter | None:
    """Keep a reserved attempt as a failure; lock the name once failures reach the limit."""
    t = LoginThrottle
    result = await db.execute(
        update(t)
        .where(t.scope == USER, t.key == key)
        .values(
            locked_until=case(
                ((t.locked_until.is_(None)) & (t.failures >= max_failures), _ts(now + lockout)),
                else_=t.locked_until,
            )
        )
        .returning(t.failures, t.locked_until, t.window_started_at)
    )
    row = result.first()
    return None if row is None else Counter(row[0], row[1], row[2])


async def reset_user(db: AsyncSession, key: str, reserved: int, *, max_failures: int) -> None:
    """A right password, whose reservation made the count `reserved`: it forgives itself and
    every attempt counted before it, not those counted after it and still being checked
    (a reset to zero would let each success hand out that many extra guesses)."""
    t = LoginThrottle
    left = t.failures - reserved
    await db.execute(
        update(t)
        .where(t.scope == USER, t.key == key)
        .values(
            failures=case((left > 0, left), else_=0),
            locked_until=case((left >= max_failures, t.locked_until), else_=None),
        )
    )


async def add_ip_failure(
    db: AsyncSession, address: str, now: datetime, *, window: timedelta
) -> Counter:
    """Count one failure from an address, in a fixed window of `window` length."""
    t = LoginThrottle
    stale = t.window_started_at <= _ts(now - window)
    return await _upsert(
        db,
        IP,
        address,
        now,
        {
            "failures": case((stale, 1), else_=t.failures + 1),
            "window_started_at": case((stale, _ts(now)), else_=t.window_started_at),
        },
    )


async def ip_failures(
    db: AsyncSession, address: str, now: datetime, *, window: timedelta
) -> Counter | None:
    """An address's failures in the current window (None when it has none).

    Unlike a name's, an address's attempts are not reserved before the password check:
    many people can share one address (a NAT, a proxy), and their logins in flight are not
    failures. The name's reservation is what bounds the guesses at any one account."""
    t = LoginThrottle
    row = (
        await db.execute(
            select(t.failures, t.locked_until, t.window_started_at).where(
                t.scope == IP, t.key == address, t.window_started_at > _ts(now - window)
            )
        )
    ).first()
    return None if row is None else Counter(row[0], row[1], row[2])


async def unlock_user(db: AsyncSession, key: str) -> bool:
    """Clear a name's lockout and count (the operator's `users unlock`)."""
    result = await db.execute(
        update(LoginThrottle)
        .where(LoginThrottle.scope == USER, LoginThrottle.key == key)
        .values(failures=0, locked_until=None)
        .returning(LoginThrottle.key)
    )
    return result.first() is not None
