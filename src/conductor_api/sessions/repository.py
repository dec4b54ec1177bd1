"""Queries on device sessions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import BindParameter, ColumnElement, Update, bindparam, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import UTCDateTime, Writer, execute_direct, insert_later, insert_row
from conductor_api.sessions.models import DeviceSession
from conductor_api.users.models import User

_INSERT = insert_row(DeviceSession)


def _live(now: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """A session neither revoked nor expired at `now`: what the session lists show, and all
    that revoking touches."""
    return DeviceSession.revoked_at.is_(None) & (DeviceSession.expires_at > now)


async def add(db: Writer, values: dict[str, object]) -> None:
    """Insert a session row: `values` has every column (built once: every sign-in starts
    a session)."""
    await insert_later(db, _INSERT, values)


async def get(
    db: AsyncSession, session_id: uuid.UUID, *, lock: bool = False
) -> DeviceSession | None:
    """A session by id; `lock` takes a row lock (PostgreSQL) for a read-modify-write."""
    query = select(DeviceSession).where(DeviceSession.id == session_id)
    if lock:
        query = query.with_for_update()
    return await db.scalar(query.execution_options(populate_existing=True))


async def list_active(
    db: AsyncSession, user_id: uuid.UUID, now: datetime
) -> Sequence[DeviceSession]:
    """A user's live sessions, most recently used first."""
    rows = await db.scalars(
        select(DeviceSession)
        .where(DeviceSession.user_id == user_id, _live(now))
        .order_by(DeviceSession.last_used_at.desc(), DeviceSession.created_at.desc())
    )
    return rows.all()


async def revoke(db: AsyncSession, session_id: uuid.UUID, now: datetime, reason: str) -> bool:
    """Revoke one session if it is live (neither revoked nor expired); whether this call
    revoked it. An expired session has ended already: no token of it verifies any more."""
    result = await db.execute(
        update(DeviceSession)
        .where(DeviceSession.id == session_id, _live(now))
        .values(revoked_at=now, revoked_reason=reason)
        .returning(DeviceSession.id)
    )
    return result.first() is not None


def _revoke_statement(except_one: bool, one_device: bool) -> Update:
    s = DeviceSession
    now = bindparam("p_now", type_=UTCDateTime())
    query = update(s).where(s.user_id == bindparam("p_user_id"), _live(now))
    if except_one:
        query = query.where(s.id != bindparam("p_except_id"))
    if one_device:
        query = query.where(s.device_fingerprint == bindparam("p_fingerprint"))
    return query.values(revoked_at=now, revoked_reason=bindparam("p_reason")).returning(s.id)


# Built once, keyed by (all but one session, one device's): a sign-in with a device
# fingerprint runs one, and building the statement cost several times running it.
_REVOKE = {(a, b): _revoke_statement(a, b) for a in (False, True) for b in (False, True)}


async def revoke_for_user(
    db: Writer,
    user_id: uuid.UUID,
    now: datetime,
    reason: str,
    *,
    except_id: uuid.UUID | None = None,
    fingerprint: str | None = None,
) -> list[uuid.UUID]:
    """Revoke a user's live sessions (all but `except_id`, or one device's); their ids.
    Expired ones are left as they are: they ended already, so they are neither counted nor
    recorded again."""
    rows = await execute_direct(
        db,
        _REVOKE[except_id is not None, fingerprint is not None],
        {
            "p_user_id": user_id,
            "p_now": now,
            "p_reason": reason,
            "p_except_id": except_id,
            "p_fingerprint": fingerprint,
        },
    )
    return [row[0] for row in rows]


async def count_active(db: AsyncSession, now: datetime) -> dict[uuid.UUID, int]:
    """The number of live sessions of every user that has one."""
    s = DeviceSession
    rows = await db.execute(select(s.user_id, func.count()).where(_live(now)).group_by(s.user_id))
    return {user_id: int(n) for user_id, n in rows.tuples()}


async def list_for_user(db: AsyncSession, user_id: uuid.UUID) -> Sequence[DeviceSession]:
    """Every session of a user, newest first (the operator's view)."""
    rows = await db.scalars(
        select(DeviceSession)
        .where(DeviceSession.user_id == user_id)
        .order_by(DeviceSession.created_at.desc())
    )
    return rows.all()


def _rotate_statement() -> Update:
    s = DeviceSession
    user_active = exists().where(User.id == bindparam("p_user_id"), User.is_active.is_(True))
    return (
        update(s)
        .where(
            s.id == bindparam("p_session_id"),
            s.user_id == bindparam("p_user_id"),
            s.refresh_token_hash == bindparam("p_presented_hash"),
            s.revoked_at.is_(None),
            s.absolute_expires_at > bindparam("p_now"),
            s.created_at > bindparam("p_started_after"),
            user_active,
        )
        .values(
            previous_token_hash=bindparam("p_presented_hash"),
            refresh_token_hash=bindparam("p_child_hash"),
            rotated_at=bindparam("p_now"),
            expires_at=bindparam("p_expires_at"),
            last_used_at=bindparam("p_now"),
            generation=s.generation + 1,
        )
        .returning(s.id)
    )


# Built once: the statement runs on every refresh, and building and cache-keying a fresh
# one cost more than the database's work.
ROTATE_IF_CURRENT = _rotate_statement()


def rotate_if_current(
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    presented_hash: str,
    child_hash: str,
    now: datetime,
    expires_at: datetime,
    started_after: datetime,
) -> tuple[Update, dict[str, object]]:
    """Replace the current refresh token in one compare-and-swap statement: it applies only
    if `presented_hash` is still current, the session live (and begun after
    `started_after`) and its user active; it returns the session id when it did. Atomic on
    its own, so it needs no transaction around it."""
    return ROTATE_IF_CURRENT, {
        "p_session_id": session_id,
        "p_user_id": user_id,
        "p_presented_hash": presented_hash,
        "p_child_hash": child_hash,
        "p_now": now,
        "p_expires_at": expires_at,
        "p_started_after": started_after,
    }


async def owner(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user a session belongs to (a refresh needs its name and whether it is active)."""
    return await db.get(User, user_id)
