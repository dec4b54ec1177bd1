"""Queries on passkeys and WebAuthn challenges."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Uuid, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Writer, execute_direct
from conductor_api.passkeys.models import Passkey, WebAuthnChallenge


async def add_challenge(db: AsyncSession, row: WebAuthnChallenge) -> None:
    """Store a new challenge."""
    db.add(row)
    await db.flush()


async def spend_challenge(
    db: AsyncSession,
    challenge_id: uuid.UUID,
    purpose: str,
    now: datetime,
    user_id: uuid.UUID | None,
) -> bytes | None:
    """Spend a live challenge of this purpose (and user, for a registration) in one guarded
    UPDATE, so that of two answers only one gets it; its bytes, or None."""
    conditions = [
        WebAuthnChallenge.id == challenge_id,
        WebAuthnChallenge.purpose == purpose,
        WebAuthnChallenge.spent_at.is_(None),
        WebAuthnChallenge.expires_at > now,
    ]
    if user_id is not None:
        conditions.append(WebAuthnChallenge.user_id == user_id)
    result = await db.execute(
        update(WebAuthnChallenge)
        .where(*conditions)
        .values(spent_at=now)
        .returning(WebAuthnChallenge.challenge)
    )
    row = result.first()
    return None if row is None else bytes(row[0])


async def find_by_credential(db: AsyncSession, credential_id: bytes) -> Passkey | None:
    """The passkey with this credential id."""
    result: Passkey | None = await db.scalar(
        select(Passkey).where(Passkey.credential_id == credential_id)
    )
    return result


async def credential_exists(db: AsyncSession, credential_id: bytes) -> bool:
    """Whether any user registered this credential id."""
    found = await db.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id))
    return found is not None


async def list_for_user(db: AsyncSession, user_id: uuid.UUID) -> Sequence[Passkey]:
    """A user's passkeys, oldest first."""
    rows = await db.scalars(
        select(Passkey).where(Passkey.user_id == user_id).order_by(Passkey.created_at, Passkey.id)
    )
    return rows.all()


async def get_for_user(
    db: AsyncSession, passkey_id: uuid.UUID, user_id: uuid.UUID
) -> Passkey | None:
    """One of the user's passkeys."""
    result: Passkey | None = await db.scalar(
        select(Passkey).where(Passkey.id == passkey_id, Passkey.user_id == user_id)
    )
    return result


async def add(db: AsyncSession, row: Passkey) -> None:
    """Store a new passkey."""
    db.add(row)
    await db.flush()


async def delete_for_user(db: AsyncSession, passkey_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Delete one of the user's passkeys; whether there was one."""
    result = await db.execute(
        delete(Passkey).where(Passkey.id == passkey_id, Passkey.user_id == user_id)
    )
    return bool(getattr(result, "rowcount", 0))


async def rename(db: AsyncSession, passkey_id: uuid.UUID, user_id: uuid.UUID, name: str) -> bool:
    """Rename one of the user's passkeys; whether there was one."""
    result = await db.execute(
        update(Passkey)
        .where(Passkey.id == passkey_id, Passkey.user_id == user_id)
        .values(name=name)
    )
    return bool(getattr(result, "rowcount", 0))


# Built once, for `execute_direct`: every passkey sign-in runs it in its last transaction.
_USED = (
    update(Passkey)
    .where(
        Passkey.id == bindparam("passkey_id", type_=Uuid()),
        Passkey.sign_count == bindparam("old_count"),
    )
    .values(
        sign_count=bindparam("new_count"),
        backup_state=bindparam("backup_state"),
        last_used_at=bindparam("now"),
    )
    .returning(Passkey.id)
)


async def used(
    db: Writer,
    passkey_id: uuid.UUID,
    *,
    old_count: int,
    new_count: int,
    backup_state: bool,
    now: datetime,
) -> bool:
    """Record a sign-in with a passkey: its new counter, backup state and time. Guarded by
    the counter that was checked, so that of two assertions with one counter only one
    passes; whether the passkey (still) had that counter."""
    rows = await execute_direct(
        db, _USED,
        {
            "passkey_id": passkey_id, "old_count": old_count, "new_count": new_count,
            "backup_state": backup_state, "now": now,
        },
    )  # fmt: skip
    return bool(rows)


async def counts(db: AsyncSession) -> dict[uuid.UUID, int]:
    """How many passkeys each user has (for `users list`)."""
    rows = await db.execute(select(Passkey.user_id, func.count()).group_by(Passkey.user_id))
    return {user_id: n for user_id, n in rows.tuples()}


async def count_for_user(db: AsyncSession, user_id: uuid.UUID) -> int:
    """How many passkeys a user has."""
    n = await db.scalar(select(func.count()).select_from(Passkey).where(Passkey.user_id == user_id))
    return int(n or 0)
