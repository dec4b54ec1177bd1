"""The replay cache of DPoP proofs: a proof's `jti` is accepted once per key, on every
worker and instance sharing the database, for as long as its `iat` keeps it acceptable.

Bounded: a row is a fixed-size key and lives only until the proof could no longer be
accepted anyway (`iat` + DPOP_MAX_SKEW_SECONDS), after which it is deleted, so the cache
holds at most the proofs of the last two skew windows (about two minutes by default).

- SQLite: a file of its own beside the database (`<name>-dpop.db`), in WAL mode, on one
  connection per process. The main database has one writer at a time, and every sign-in,
  refresh and limit takes its write lock; an insert there on every authenticated request
  would queue behind them (and them behind it). The cache's own file has its own lock,
  held for the few microseconds of one insert, and `synchronous=NORMAL` (no fsync per
  insert in WAL mode): after a power loss the last proofs could be replayed once within
  their minute, which is what the PostgreSQL side also accepts (UNLOGGED).
- PostgreSQL: `INSERT ... ON CONFLICT DO NOTHING` on the UNLOGGED `dpop_proofs` table
  (see the migration 0007_dpop for why unlogged), on the principal loader's pool.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg

from conductor_api.errors import ServiceUnavailable
from conductor_api.storage import make_private_file

# How often (seconds) a process deletes the proofs that aged out, beside the pruner.
PRUNE_EVERY_SECONDS = 30.0


class ReplayCache(Protocol):
    """Remembers proofs until they age out."""

    async def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """Record `key` until `expires_at`; whether it was not there yet (first use)."""

    async def close(self) -> None:
        """Release connections."""


def sqlite_cache_path(database: str) -> Path:
    """The cache file beside a SQLite database: `conductor.db` -> `conductor-dpop.db`."""
    path = Path(database)
    return path.with_name(f"{path.stem}-dpop.db")


class SqliteReplayCache:
    """The cache in its own SQLite file (see the module's docstring)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pruned_at = 0.0

    def _connect(self) -> sqlite3.Connection:
        # Owner-only, like the database (SQLite gives its -wal and -shm files this mode).
        make_private_file(self._path)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # An insert holds the lock for microseconds; a wait beyond a second means trouble.
        conn.execute(f"PRAGMA busy_timeout={int(min(self._timeout, 1.0) * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dpop_proofs "
            "(key BLOB PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE INDEX IF NOT EXISTS ix_dpop_proofs_expires_at ON dpop_proofs (expires_at)"
        )
        return conn

    async def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """See `ReplayCache.first_use`. Runs on the event loop: one insert on a file of its
        own takes microseconds, less than handing it to a thread would."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                self._conn.execute("DELETE FROM dpop_proofs WHERE expires_at < ?", (int(now),))
            # 128 bits of the SHA-256 tell proofs apart; a small key is a small B-tree.
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO dpop_proofs (key, expires_at) VALUES (?, ?)",
                (bytes.fromhex(key)[:16], int(expires_at) + 1),
            )
            return cursor.rowcount == 1
        except (sqlite3.Error, OSError) as e:
            await self.close()
            raise ServiceUnavailable() from e

    async def close(self) -> None:
        """See `ReplayCache.close`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresReplayCache:
    """The cache in the UNLOGGED `dpop_proofs` table."""

    _INSERT = (
        "INSERT INTO dpop_proofs (key, expires_at) VALUES ($1, $2) "
        "ON CONFLICT (key) DO NOTHING RETURNING 1"
    )

    def __init__(self, pool: Callable[[], Awaitable[asyncpg.Pool]], timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._pruned_at = 0.0

    async def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """See `ReplayCache.first_use`."""
        try:
            pool = await self._pool()
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                await pool.execute(
                    "DELETE FROM dpop_proofs WHERE expires_at < $1",
                    datetime.fromtimestamp(now, UTC),
                    timeout=self._timeout,
                )
            row = await pool.fetchval(
                self._INSERT, key, datetime.fromtimestamp(expires_at, UTC), timeout=self._timeout
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise ServiceUnavailable() from e
        return row is not None

    async def close(self) -> None:
        """See `ReplayCache.close` (the pool is the principal loader's)."""
