"""Every query on the signing_keys table, and on the check values (kek_checks,
setting_checks)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import dialect_insert, dialect_of
from conductor_api.keys.models import GeneratedSecret, KekCheck, SettingCheck, SigningKey

# Any constant: the advisory lock that serializes key-set changes across instances.
_PG_LOCK_ID = 0x436F6E644B657973  # "CondKeys"


async def lock(db: AsyncSession) -> None:
    """Serialize key-set changes: a transaction-scoped advisory lock on PostgreSQL. SQLite
    transactions here already begin IMMEDIATE, which takes the database's write lock."""
    if dialect_of(db) == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})


async def all_keys(db: AsyncSession) -> Sequence[SigningKey]:
    """Every key, oldest first."""
    result = await db.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.kid))
    return result.all()


async def add(db: AsyncSession, key: SigningKey) -> SigningKey:
    """Insert a key and flush, so the one-current/one-next index is checked at once."""
    db.add(key)
    await db.flush()
    return key


async def raise_lifetime(db: AsyncSession, kid: str, seconds: int) -> None:
    """Record that an instance whose access tokens live `seconds` may sign with `kid`: the
    stored lifetime only ever grows (one statement, so two instances never undo each
    other's)."""
    k = SigningKey
    await db.execute(
        update(k)
        .where(k.kid == kid, or_(k.access_ttl_seconds.is_(None), k.access_ttl_seconds < seconds))
        .values(access_ttl_seconds=seconds)
        .execution_options(synchronize_session=False)
    )


async def save(db: AsyncSession) -> None:
    """Flush a state change now: the unique index must see each change in order."""
    await db.flush()


async def kek_check(db: AsyncSession) -> bytes | None:
    """The sealed check value of KEY_ENCRYPTION_KEY, if one was stored."""
    return await db.scalar(select(KekCheck.sealed).where(KekCheck.id == 1))


async def add_kek_check(db: AsyncSession, sealed: bytes, now: datetime) -> None:
    """Store the check value unless another instance stored one first."""
    statement = dialect_insert(dialect_of(db), KekCheck).values(id=1, sealed=sealed, created_at=now)
    await db.execute(statement.on_conflict_do_nothing(index_elements=["id"]))


async def generated_secrets(db: AsyncSession) -> dict[str, bytes]:
    """The sealed JWT secrets the first instance that generated its own stored, by name."""
    rows = await db.execute(select(GeneratedSecret.name, GeneratedSecret.sealed))
    return {name: sealed for name, sealed in rows}


async def add_generated_secret(db: AsyncSession, name: str, sealed: bytes, now: datetime) -> None:
    """Store a generated secret unless another instance stored one first."""
    statement = dialect_insert(dialect_of(db), GeneratedSecret).values(
        name=name, sealed=sealed, created_at=now
    )
    await db.execute(statement.on_conflict_do_nothing(index_elements=["name"]))


async def setting_digests(db: AsyncSession) -> dict[str, bytes]:
    """Each shared setting's digest, as the last start that changed it recorded it."""
    rows = await db.execute(select(SettingCheck.name, SettingCheck.digest))
    return {name: digest for name, digest in rows}


async def record_setting(db: AsyncSession, name: str, digest: bytes, now: datetime) -> None:
    """Record a start's digest of a shared setting, over any earlier one."""
    statement = dialect_insert(dialect_of(db), SettingCheck).values(
        name=name, digest=digest, recorded_at=now
    )
    await db.execute(
        statement.on_conflict_do_update(
            index_elements=["name"], set_={"digest": digest, "recorded_at": now}
        )
    )
