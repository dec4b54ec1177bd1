"""Queries on device tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Uuid, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import UTCDateTime, Writer, execute_direct, insert_later, insert_row
from conductor_api.devices.models import DeviceToken
from conductor_api.sessions.models import DeviceSession

_INSERT = insert_row(DeviceToken)


async def add(
    db: Writer,
    token_id: uuid.UUID,
    user_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Insert a device token row (built once: every sign-in issues one)."""
    await insert_later(
        db, _INSERT,
        {
            "id": token_id, "user_id": user_id, "token_hash": token_hash, "created_at": now,
            "last_used_at": now, "expires_at": expires_at, "revoked_at": None,
        },
    )  # fmt: skip


async def find_live(db: AsyncSession, token_hash: str, now: datetime) -> DeviceToken | None:
    """The unrevoked, unexpired device token with this digest."""
    return await db.scalar(
        select(DeviceToken).where(
            DeviceToken.token_hash == token_hash,
            DeviceToken.revoked_at.is_(None),
            DeviceToken.expires_at > now,
        )
    )


# Built once, for `execute_direct`: a sign-in that presents its device token runs both.
_LIVE_OWNER = select(DeviceToken.user_id).where(
    DeviceToken.id == bindparam("token_id", type_=Uuid()),
    DeviceToken.revoked_at.is_(None),
    DeviceToken.expires_at > bindparam("now", type_=UTCDateTime()),
)
_TOUCH = (
    update(DeviceToken)
    .where(DeviceToken.id == bindparam("token_id", type_=Uuid()))
    .values(last_used_at=bindparam("now", type_=UTCDateTime()))
)


async def live_owner(db: Writer, token_id: uuid.UUID, now: datetime) -> uuid.UUID | None:
    """The user of the unrevoked, unexpired device token with this id, if there is one."""
    rows = await execute_direct(db, _LIVE_OWNER, {"token_id": token_id, "now": now})
    return rows[0][0] if rows else None


async def of_session(
    db: AsyncSession, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> uuid.UUID | None:
    """The device token a session's sign-in presented, if it is still live for `user_id`."""
    return await db.scalar(
        select(DeviceToken.id)
        .join(DeviceSession, DeviceSession.device_token_id == DeviceToken.id)
        .where(
            DeviceSession.id == session_id,
            DeviceToken.user_id == user_id,
            DeviceToken.revoked_at.is_(None),
            DeviceToken.expires_at > now,
        )
    )


async def ids_for_user(db: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Every device token id of a user, live or not."""
    return list(
        (await db.scalars(select(DeviceToken.id).where(DeviceToken.user_id == user_id))).all()
    )


async def touch(db: Writer, token_id: uuid.UUID, now: datetime) -> None:
    """Record a sign-in with this device token."""
    await execute_direct(db, _TOUCH, {"token_id": token_id, "now": now})


async def revoke_for_user(db: AsyncSession, user_id: uuid.UUID, now: datetime) -> int:
    """Revoke every live device token of a user; how many."""
    result = await db.execute(
        update(DeviceToken)
        .where(DeviceToken.user_id == user_id, DeviceToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(DeviceToken.id)
    )
    return len(result.all())
