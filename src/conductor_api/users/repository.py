"""Queries on users."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, String, Table, Uuid, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Executor, Writer, dialect_of, execute_direct
from conductor_api.mfa.models import TotpFactor
from conductor_api.users.models import User

# Built once, with bind parameters: every sign-in runs these, and building and cache-keying
# a fresh statement cost as much as running it.
_BY_KEY = select(User).where(User.username_key == bindparam("key"))
_BY_ID = select(User).where(User.id == bindparam("user_id", type_=Uuid()))
# FOR NO KEY UPDATE, the lock an UPDATE of the row takes: it orders password changes and
# disables after the sign-ins in flight, yet lets other transactions insert rows that
# reference the user (events, sessions), which FOR UPDATE would block into deadlocks.
_LOCKED = _BY_ID.with_for_update(key_share=True).execution_options(populate_existing=True)


# The same two reads as a sign-in makes them: straight to the driver (`execute_direct`),
# for a copy of the row that no session tracks (sign-ins only read it).
_COLUMNS = tuple(c.key for c in cast(Table, User.__table__).columns)
_ROW_BY_KEY = select(*cast(Table, User.__table__).columns).where(
    User.username_key == bindparam("key")
)
# The row and whether the user's sign-ins need a second factor: one round trip fewer on
# PostgreSQL.
_ROW = select(
    *cast(Table, User.__table__).columns,
    select(TotpFactor.confirmed).where(TotpFactor.user_id == User.id).scalar_subquery(),
).where(User.id == bindparam("user_id", type_=Uuid()))
# FOR SHARE, a sign-in's: it waits for a password change or disable in flight, and makes
# them wait, but sign-ins of one user do not wait for each other.
_ROW_SHARED = _ROW.with_for_update(read=True, of=User)
# FOR NO KEY UPDATE, a password change's (`_LOCKED`'s): a change that held the shared lock
# and then asked for this one would deadlock with a second change doing the same.
_ROW_EXCLUSIVE = _ROW.with_for_update(key_share=True, of=User)
# The same, for a sign-in that names its device (a fingerprint) on PostgreSQL: it also takes
# a transaction-scoped advisory lock on (user, device), in the same round trip, so that two
# sign-ins of one device run their "revoke the device's old session, start the new one" one
# after the other (the second then sees, and revokes, the first's session: READ COMMITTED
# gives each later statement a new snapshot). Sign-ins of other devices do not wait.
_ROW_SHARED_DEVICE = _ROW_SHARED.add_columns(
    func.pg_advisory_xact_lock(func.hashtextextended(bindparam("device", type_=String()), 0))
)


def _user(columns: Sequence[Any]) -> User:
    return User(**dict(zip(_COLUMNS, columns, strict=True)))


def _detached(rows: list[tuple[Any, ...]]) -> User | None:
    return _user(rows[0]) if rows else None


async def read_by_key(db: Executor, username_key: str) -> User | None:
    """A copy of the user whose normalized name is `username_key`, not tracked by `db`."""
    return _detached(await execute_direct(db, _ROW_BY_KEY, {"key": username_key}))


def by_key(username_key: str) -> tuple[Select[Any], dict[str, object]]:
    """`read_by_key` as its statement and parameters, for a statement that carries it (a
    sign-in's first round trip); `from_columns` makes its row a user."""
    return _ROW_BY_KEY, {"key": username_key}


def from_columns(columns: Sequence[Any]) -> User | None:
    """The user of a row of `by_key`'s statement (None: all NULL, no such user)."""
    return None if columns[0] is None else _user(columns)


async def read_shared(
    db: Writer, user_id: uuid.UUID, device: str | None = None, *, exclusive: bool = False
) -> tuple[User, bool] | None:
    """A copy of the user with this id, read under a shared row lock (PostgreSQL; on
    SQLite every transaction already holds the write lock), not tracked by `db`, and
    whether the user has a confirmed TOTP factor. With `device` (a fingerprint), on
    PostgreSQL, also the lock that orders the sign-ins of that device (`_ROW_SHARED_DEVICE`)."""
    if exclusive:
        rows = await execute_direct(db, _ROW_EXCLUSIVE, {"user_id": user_id})
    elif device is not None and dialect_of(db) == "postgresql":
        rows = await execute_direct(
            db, _ROW_SHARED_DEVICE, {"user_id": user_id, "device": f"{user_id}/{device}"}
        )
        rows = [row[:-1] for row in rows]  # the lock's own column (void)
    else:
        rows = await execute_direct(db, _ROW_SHARED, {"user_id": user_id})
    if not rows:
        return None
    *columns, confirmed = rows[0]
    return _user(columns), bool(confirmed)


async def get_by_key(db: AsyncSession, username_key: str) -> User | None:
    """The user whose normalized name is `username_key`."""
    return await db.scalar(_BY_KEY, {"key": username_key})


async def skeleton_taken(db: AsyncSession, skeleton: str) -> bool:
    """Whether a user's name has this confusable skeleton digest."""
    found = await db.scalar(select(User.id).where(User.username_skeleton == skeleton))
    return found is not None


async def get(db: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    """The user with this id; `lock` reads it afresh under an exclusive row lock
    (PostgreSQL; on SQLite every transaction already holds the write lock)."""
    if not lock:
        return await db.get(User, user_id)
    return await db.scalar(_LOCKED, {"user_id": user_id})


async def replace_hash(db: AsyncSession, user_id: uuid.UUID, old_hash: str, new_hash: str) -> bool:
    """Replace `old_hash` by `new_hash` only if it is still the stored one; whether it was."""
    result = await db.execute(
        update(User)
        .where(User.id == user_id, User.password_hash == old_hash)
        .values(password_hash=new_hash)
        .returning(User.id)
    )
    return result.first() is not None


async def add(db: AsyncSession, user: User) -> User:
    """Insert a user; the caller handles a duplicate name."""
    db.add(user)
    await db.flush()
    return user


async def set_password(
    db: AsyncSession, user_id: uuid.UUID, password_hash: str, changed_at: datetime
) -> None:
    """Store a new password's hash and when it was changed."""
    await db.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=password_hash, password_changed_at=changed_at)
    )


async def list_all(db: AsyncSession) -> Sequence[User]:
    """Every user, by normalized name."""
    return (await db.scalars(select(User).order_by(User.username_key))).all()
