"""Queries on TOTP factors, recovery codes and pending sign-ins."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Uuid, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Writer, execute_direct, insert_row
from conductor_api.mfa.models import MfaToken, RecoveryCode, TotpFactor

# Built once: a password change and the TOTP flows ask it (a sign-in reads it with the user
# row, `users.hold`), and a sign-in with TOTP on adds a pending sign-in.
_CONFIRMED = select(TotpFactor.confirmed).where(
    TotpFactor.user_id == bindparam("user_id", type_=Uuid())
)
_INSERT_PENDING = insert_row(MfaToken)


async def factor_confirmed(db: Writer, user_id: uuid.UUID) -> bool:
    """Whether the user has a TOTP factor and it is confirmed (straight to the driver: no
    caller has a factor of its own unflushed when it asks)."""
    rows = await execute_direct(db, _CONFIRMED, {"user_id": user_id})
    return bool(rows and rows[0][0])


async def get_factor(
    db: AsyncSession, user_id: uuid.UUID, *, lock: bool = False
) -> TotpFactor | None:
    """A user's TOTP factor, confirmed or not; `lock` reads it under the factor's row lock
    (PostgreSQL): the changes to a user's factor and recovery codes take turns on it, and
    each then sees the one before."""
    statement = select(TotpFactor).where(TotpFactor.user_id == user_id)
    if lock:
        statement = statement.with_for_update()
    return await db.scalar(statement.execution_options(populate_existing=True))


async def any_factor(db: AsyncSession) -> TotpFactor | None:
    """One stored factor, any (to check the KEK at start)."""
    return await db.scalar(select(TotpFactor).limit(1))


async def add_factor(db: AsyncSession, factor: TotpFactor) -> None:
    """Insert a factor (the caller removed any earlier unconfirmed one)."""
    db.add(factor)
    await db.flush()


async def delete_factor(db: AsyncSession, user_id: uuid.UUID) -> bool:
    """Remove a user's factor; whether there was one."""
    result = await db.execute(
        delete(TotpFactor).where(TotpFactor.user_id == user_id).returning(TotpFactor.user_id)
    )
    return result.first() is not None


async def take_step(db: AsyncSession, user_id: uuid.UUID, step: int, *, confirmed: bool) -> bool:
    """Record `step` as the last one used on the user's factor (a confirmed one, or with
    `confirmed=False` one waiting for its confirmation), only if it is later than the last
    one: one statement, so two requests with the same code cannot both pass."""
    t = TotpFactor
    result = await db.execute(
        update(t)
        .where(
            t.user_id == user_id,
            t.confirmed.is_(confirmed),
            t.last_used_step.is_(None) | (t.last_used_step < step),
        )
        .values(last_used_step=step)
        .returning(t.user_id)
    )
    return result.first() is not None


async def confirm_factor(db: AsyncSession, user_id: uuid.UUID, now: datetime) -> bool:
    """Turn the user's factor on, if it is waiting for its confirmation; whether it was."""
    t = TotpFactor
    result = await db.execute(
        update(t)
        .where(t.user_id == user_id, t.confirmed.is_(False))
        .values(confirmed=True, confirmed_at=now)
        .returning(t.user_id)
    )
    return result.first() is not None


async def replace_recovery_codes(
    db: AsyncSession, user_id: uuid.UUID, hashes: Sequence[str], now: datetime
) -> None:
    """Void a user's recovery codes and store these."""
    await delete_recovery_codes(db, user_id)
    for code_hash in hashes:
        db.add(RecoveryCode(id=uuid.uuid4(), user_id=user_id, code_hash=code_hash, created_at=now))
    await db.flush()


async def delete_recovery_codes(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Void every recovery code of a user."""
    await db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


async def use_recovery_code(
    db: AsyncSession, user_id: uuid.UUID, code_hash: str, now: datetime
) -> bool:
    """Spend an unused code; whether it was one (atomic: a code is spent once)."""
    r = RecoveryCode
    result = await db.execute(
        update(r)
        .where(r.user_id == user_id, r.code_hash == code_hash, r.used_at.is_(None))
        .values(used_at=now)
        .returning(r.id)
    )
    return len(result.all()) > 0


async def recovery_codes_left(db: AsyncSession, user_id: uuid.UUID) -> int:
    """How many unused recovery codes a user has."""
    count = await db.scalar(
        select(func.count()).where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
    )
    return int(count or 0)


async def users_with_totp(db: AsyncSession) -> set[uuid.UUID]:
    """The ids of every user whose TOTP factor is on."""
    rows = await db.scalars(select(TotpFactor.user_id).where(TotpFactor.confirmed.is_(True)))
    return set(rows.all())


async def add_pending(db: Writer, values: dict[str, object]) -> None:
    """Insert a pending sign-in: `values` has every column."""
    await execute_direct(db, _INSERT_PENDING, values)


_PENDING_KEPT = select(MfaToken.id).where(MfaToken.id == bindparam("token_id", type_=Uuid()))


async def pending_kept(db: Writer, token_id: uuid.UUID) -> bool:
    """Whether a pending sign-in's row is still there (nothing voided it: a password change,
    a disable, TOTP turned off), read straight from the driver."""
    return bool(await execute_direct(db, _PENDING_KEPT, {"token_id": token_id}))


async def get_pending(
    db: AsyncSession, token_hash: str, now: datetime, *, max_failures: int
) -> MfaToken | None:
    """A pending sign-in that is not spent, not expired and not used up."""
    m = MfaToken
    return await db.scalar(
        select(m)
        .where(
            m.token_hash == token_hash,
            m.spent_at.is_(None),
            m.expires_at > now,
            m.failures < max_failures,
        )
        .execution_options(populate_existing=True)
    )


async def lock_live_pending(
    db: AsyncSession, token_id: uuid.UUID, now: datetime, *, max_failures: int
) -> bool:
    """Whether the pending sign-in is still live; takes its row lock (PostgreSQL)."""
    m = MfaToken
    found = await db.scalar(
        select(m.id)
        .where(
            m.id == token_id,
            m.spent_at.is_(None),
            m.expires_at > now,
            m.failures < max_failures,
        )
        .with_for_update()
    )
    return found is not None


async def spend_pending(db: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
    """Mark a pending sign-in used."""
    await db.execute(update(MfaToken).where(MfaToken.id == token_id).values(spent_at=now))


async def fail_pending(db: AsyncSession, token_id: uuid.UUID) -> None:
    """Count a wrong code against a pending sign-in."""
    await db.execute(
        update(MfaToken).where(MfaToken.id == token_id).values(failures=MfaToken.failures + 1)
    )


async def delete_pending_for_user(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Drop a user's pending sign-ins (the factor they wait for is gone)."""
    await db.execute(delete(MfaToken).where(MfaToken.user_id == user_id))
