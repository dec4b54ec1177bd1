"""Device tokens: issued at every sign-in, presented at the next one, revoked with the
password. A valid one moves a login's failures from the username to the token
(`auth.limits.DeviceTokenLimit`)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Writer
from conductor_api.devices import repository
from conductor_api.security.tokens import token_digest

# A token longer than this was not made here: refused before it is hashed or looked up.
MAX_DEVICE_TOKEN_LENGTH = 256


@dataclass(frozen=True, slots=True)
class TrustedDevice:
    """A device token that is valid for the user a login names."""

    id: uuid.UUID
    token: str


async def find(
    db: AsyncSession, token: str | None, user_id: uuid.UUID | None, now: datetime
) -> TrustedDevice | None:
    """The device token if it is live and belongs to `user_id`; otherwise None, because an
    unknown, forged, expired, revoked or other user's token counts as no token at all."""
    # Every token made here is ASCII; any other was not (and one with a lone surrogate, a
    # JSON escape, could not even be hashed).
    if not token or user_id is None or len(token) > MAX_DEVICE_TOKEN_LENGTH or not token.isascii():
        return None
    row = await repository.find_live(db, token_digest(token), now)
    if row is None or row.user_id != user_id:
        return None
    return TrustedDevice(row.id, token)


async def live_id(
    db: Writer, token_id: uuid.UUID | None, user_id: uuid.UUID, now: datetime
) -> uuid.UUID | None:
    """`token_id` if that device token is still live for `user_id` (a pending sign-in's
    token may have been revoked since), else None."""
    if token_id is None:
        return None
    return token_id if await repository.live_owner(db, token_id, now) == user_id else None


async def of_session(
    db: AsyncSession, session_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> uuid.UUID | None:
    """The device token a session's sign-in presented, while it stays live for `user_id`:
    the session's own password and code checks count against it instead of the name."""
    return await repository.of_session(db, session_id, user_id, now)


async def issue(
    db: Writer,
    user_id: uuid.UUID,
    now: datetime,
    *,
    days: int,
    presented: TrustedDevice | None = None,
) -> str:
    """The device token of a successful sign-in: the one presented, if it is still live for
    this user, or a new one (only its digest is stored)."""
    if presented is not None and await live_id(db, presented.id, user_id, now):
        await repository.touch(db, presented.id, now)
        return presented.token
    token = secrets.token_urlsafe(32)
    await repository.add(
        db, uuid.uuid4(), user_id, token_digest(token), now, now + timedelta(days=days)
    )
    return token


async def ids_of(db: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids of every device token of a user (their counters are keyed by them)."""
    return await repository.ids_for_user(db, user_id)


async def revoke_all(db: AsyncSession, user_id: uuid.UUID, now: datetime) -> int:
    """Revoke a user's device tokens (password change, `set-password`, `disable`)."""
    return await repository.revoke_for_user(db, user_id, now)
