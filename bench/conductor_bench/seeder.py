"""Fill a database fast for the scale benchmark: N users, 3N sessions, 10N events.

PostgreSQL gets its rows by COPY (asyncpg's `copy_records_to_table`), SQLite by executemany
in one transaction, both in chunks of users so that memory stays flat at any N. The schema
is the server's own (its migrations run first). The shape, relative to now:

- users `seed0000000`, `seed0000001`, ...; every one has the password SEED_PASSWORD (one
  Argon2id hash with the server's parameters, computed once and shared);
- per user 3 sessions: a live one for every other user (otherwise one that expired), one
  revoked and one expired, their ends spread over the last 400 days, so most are ended
  and most of those are past SESSION_RETENTION_DAYS;
- per user 10 events spread over the last 730 days (most past EVENT_RETENTION_DAYS), and
  `heavy_events` more for user 0 within the last 30 days (the GET /auth/events case).

Rows are written as the server writes them (UUIDs as 32 hex digits and naive UTC text on
SQLite), so the server, `conductor-api prune` and the benchmark read them like their own.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED_PASSWORD = "seeded users share this long passphrase"
EVENT_TYPES = (
    ("login_succeeded",) * 6
    + ("login_failed",) * 2
    + (
        "session_revoked",
        "password_changed",
    )
)
DAY = timedelta(days=1)

USER_COLUMNS = (
    "id", "username", "username_key", "password_hash", "is_active", "created_at",
    "password_changed_at",
)  # fmt: skip
SESSION_COLUMNS = (
    "id", "user_id", "device_name", "ip_address", "user_agent", "created_at", "last_used_at",
    "expires_at", "absolute_expires_at", "revoked_at", "revoked_reason", "refresh_token_hash",
    "generation",
)  # fmt: skip
EVENT_COLUMNS = (
    "id", "user_id", "username_key", "type", "created_at", "ip_address", "user_agent",
)  # fmt: skip


@dataclass
class Rows:
    """One chunk of rows, as Python values (UUIDs, aware datetimes, bools)."""

    users: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True)
class Shape:
    """What to seed."""

    users: int
    now: datetime
    password_hash: str
    heavy_events: int = 1000
    chunk: int = 20_000
    seed: int = 1


def username(i: int) -> str:
    """The name of seeded user `i`."""
    return f"seed{i:07d}"


def _id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _session(rng: random.Random, user_id: uuid.UUID, now: datetime, kind: str) -> tuple[Any, ...]:
    revoked_at = None
    if kind == "live":
        created = now - rng.uniform(0, 60) * DAY
        expires = now + rng.uniform(1, 7) * DAY
        last_used = max(created, now - rng.uniform(0, 1) * DAY)
    else:
        ended = now - rng.uniform(0, 400) * DAY
        created = ended - rng.uniform(7, 60) * DAY
        last_used = ended if kind == "expired" else created
        if kind == "revoked":
            revoked_at = ended
            expires = ended + rng.uniform(0, 7) * DAY
        else:
            expires = ended
    return (
        _id(rng), user_id, "Pixel 8", "198.51.100.7", "seed", created, last_used, expires,
        created + 90 * DAY, revoked_at, "logout" if revoked_at else None,
        f"{rng.getrandbits(256):064x}", 0,
    )  # fmt: skip


def _event(rng: random.Random, user_id: uuid.UUID, name: str, at: datetime) -> tuple[Any, ...]:
    return (_id(rng), user_id, name, rng.choice(EVENT_TYPES), at, "198.51.100.7", "seed")


def chunks(shape: Shape) -> Iterator[Rows]:
    """The rows of `shape`, `shape.chunk` users at a time."""
    rng = random.Random(shape.seed)
    now = shape.now
    for start in range(0, shape.users, shape.chunk):
        rows = Rows()
        for i in range(start, min(start + shape.chunk, shape.users)):
            user_id, name = _id(rng), username(i)
            joined = now - rng.uniform(400, 800) * DAY
            rows.users.append((user_id, name, name, shape.password_hash, True, joined, joined))
            first = "live" if i % 2 == 0 else "expired"
            for kind in (first, "revoked", "expired"):
                rows.sessions.append(_session(rng, user_id, now, kind))
            for _ in range(10):
                rows.events.append(_event(rng, user_id, name, now - rng.uniform(0, 730) * DAY))
            if i == 0:
                for k in range(shape.heavy_events):
                    at = now - (k + 1) * (30 * DAY / (shape.heavy_events + 1))
                    rows.events.append(_event(rng, user_id, name, at))
        yield rows


async def seed_postgres(url: str, shape: Shape) -> None:
    """COPY every chunk into PostgreSQL (one connection; each COPY commits by itself)."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=30)
    try:
        for rows in chunks(shape):
            await conn.copy_records_to_table("users", records=rows.users, columns=USER_COLUMNS)
            await conn.copy_records_to_table(
                "sessions", records=rows.sessions, columns=SESSION_COLUMNS
            )
            await conn.copy_records_to_table(
                "security_events", records=rows.events, columns=EVENT_COLUMNS
            )
        await conn.execute("ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def _sqlite_value(value: Any) -> Any:
    # As SQLAlchemy stores them on SQLite: Uuid as 32 hex digits, UTCDateTime as naive UTC
    # text (so that text comparison orders by time), booleans as 0/1.
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, datetime):
        return (
            value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        )
    if isinstance(value, bool):
        return int(value)
    return value


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    # Table and column names are this module's constants, never input.
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608


# SQLite's page cache while seeding: the tables' indexes grow by random keys (UUIDs), and
# with the default 2 MiB every insert reads and writes index pages through the OS.
SEED_CACHE_KIB = 1 << 20


def seed_sqlite(path: str, shape: Shape) -> None:
    """executemany every chunk into SQLite, all in one transaction.

    The transaction goes straight into the database file (a rollback journal, which holds
    nothing for the pages it adds past the file's end), not through the WAL: in WAL mode
    gigabytes would be written twice, to the WAL and then by the checkpoint. The file is
    back in WAL mode, as the server keeps it, before this returns."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA cache_size=-{SEED_CACHE_KIB}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        for rows in chunks(shape):
            for table, columns, values in (
                ("users", USER_COLUMNS, rows.users),
                ("sessions", SESSION_COLUMNS, rows.sessions),
                ("security_events", EVENT_COLUMNS, rows.events),
            ):
                conn.executemany(
                    _insert_sql(table, columns),
                    ([_sqlite_value(v) for v in row] for row in values),
                )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def seed(database_url: str, shape: Shape) -> None:
    """Seed the database of `database_url` (sqlite:///path or postgresql://...), and have
    what it wrote on disk before it returns.

    Gigabytes written a moment ago are still dirty in the page cache: the kernel would
    write them back while the scenarios run, taking CPU and holding up every fsync (each
    SQLite checkpoint, each PostgreSQL commit), so that the seeded group would measure
    the seeding's tail, not the database's size. A server that has run for a year has
    nothing of the kind pending."""
    if database_url.startswith("sqlite"):
        seed_sqlite(database_url.split(":///", 1)[1], shape)
    else:
        asyncio.run(seed_postgres(database_url.replace("+asyncpg", ""), shape))
    os.sync()


def database_bytes(database_url: str) -> int:
    """The size of the database on disk (SQLite: file and WAL; PostgreSQL: the database)."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.split(":///", 1)[1])
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())

    async def size() -> int:
        import asyncpg

        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=30)
        try:
            value: int = await conn.fetchval("SELECT pg_database_size(current_database())")
            return value
        finally:
            await conn.close()

    return asyncio.run(size())
