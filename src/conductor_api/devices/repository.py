"""Queries on device tokens."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import execute_direct, insert_row
from conductor_api.devices.models import DeviceToken

_INSERT = insert_row(DeviceToken)


async def add(
    db: AsyncSession,
    token_id: uuid.UUID,
    user_id: uuid.UUID,
    token_hash: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    """Insert a device token row (built once: every sign-in issues one)."""
    await execute_direct(
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


async def get_live(db: AsyncSession, token_id: uuid.UUID, now: datetime) -> DeviceToken | None:
    """The unrevoked, unexpired device token with this id."""
    return await db.scalar(
        select(DeviceToken).where(
            DeviceToken.id == token_id,
            DeviceToken.revoked_at.is_(None),
            DeviceToken.expires_at > now,
        )
    )


async def ids_for_user(db: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Every device token id of a user, live or not."""
    return list(
        (await db.scalars(select(DeviceToken.id).where(DeviceToken.user_id == user_id))).all()
    )


async def touch(db: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
    """Record a sign-in with this device token."""
    await db.execute(update(DeviceToken).where(DeviceToken.id == token_id).values(last_used_at=now))


async def revoke_for_user(db: AsyncSession, user_id: uuid.UUID, now: datetime) -> int:
    """Revoke every live device token of a user; how many."""
    result = await db.execute(
        update(DeviceToken)
        .where(DeviceToken.user_id == user_id, DeviceToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(DeviceToken.id)
    )
    return len(result.all())
