"""The replay cache of DPoP proofs: a proof's `jti` is accepted once per key, on every
worker and instance sharing the database, for as long as its `iat` keeps it acceptable.

Bounded: a row is a fixed-size key and lives only until the proof could no longer be
accepted anyway (`iat` + DPOP_MAX_SKEW_SECONDS), after which it is deleted, so the cache
holds at most the proofs of the last two skew windows (about two minutes by default).

- SQLite: a file of its own beside the database (`<name>-dpop.db`), in WAL mode, written
  by one thread per process in group commits. The main database has one writer at a
  time, and every sign-in, refresh and limit takes its write lock; an insert there on
  every authenticated request would queue behind them (and them behind it). The cache's
  own file has its own lock, held for a fraction of a millisecond per batch, and only the
  writer thread ever waits for it, never the event loop. `synchronous=NORMAL` (no fsync
  per commit in WAL mode): after a power loss the last proofs could be replayed once
  within their minute, which is what the PostgreSQL side also accepts (UNLOGGED).
- PostgreSQL: `INSERT ... ON CONFLICT DO NOTHING` on the UNLOGGED `dpop_proofs` table
  (see the migration 0007_dpop for why unlogged), on the principal loader's pool.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from conductor_api.db import ASYNCPG_UNAVAILABLE, RawPool, fetch_bounded
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


def prune_sqlite_cache(path: Path, now: float) -> int:
    """Delete the proofs of a cache file that have aged out (for the pruner and `prune`:
    the cache itself only deletes them while it takes in new proofs); how many. 0 when
    the file or its table does not exist yet."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, isolation_level=None, timeout=1.0)
    try:
        return conn.execute(_SQLITE_PRUNE, (int(now),)).rowcount
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0
        raise
    finally:
        conn.close()


class SqliteReplayCache:
    """The cache in its own SQLite file (see the module's docstring).

    Written by one thread of its own, in group commits: the event loop only queues a proof
    and waits; the thread inserts whatever has queued meanwhile in one transaction (the
    commit is most of the cost, and sqlite3 lets other Python code run while SQLite
    works). Each proof still gets its own answer (a key twice in one batch: the second is
    refused)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._pruned_at = 0.0
        self._now = 0
        self._lock = threading.Lock()
        self._queued: list[tuple[bytes, int, asyncio.Future[bool]]] = []
        self._writing = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="dpop-replay")

    def _connect(self) -> sqlite3.Connection:
        # Owner-only, like the database (SQLite gives its -wal and -shm files this mode).
        make_private_file(self._path)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # A batch holds the lock for a fraction of a millisecond; a wait beyond a second
        # means trouble.
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
        """See `ReplayCache.first_use`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        # 128 bits of the SHA-256 tell proofs apart; a small key is a small B-tree.
        with self._lock:
            self._queued.append((bytes.fromhex(key)[:16], int(expires_at) + 1, future))
            self._now = max(self._now, int(now))
            start, self._writing = not self._writing, True
        if start:
            loop.run_in_executor(self._thread, self._drain, loop)
        return await future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the writer thread: commit what has queued, until nothing has."""
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._writing = False
                    return
                now = self._now
            try:
                answers: list[bool] | None = self._insert(batch, now)
            except BaseException:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                answers = None
            loop.call_soon_threadsafe(_settle, batch, answers)

    def _insert(self, batch: list[tuple[bytes, int, asyncio.Future[bool]]], now: int) -> list[bool]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                conn.execute(_SQLITE_PRUNE, (now,))
            answers = [
                conn.execute(_SQLITE_INSERT, (key, expires_at)).rowcount == 1
                for key, expires_at, _ in batch
            ]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return answers

    async def close(self) -> None:
        """See `ReplayCache.close`."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_SQLITE_INSERT = "INSERT OR IGNORE INTO dpop_proofs (key, expires_at) VALUES (?, ?)"
_SQLITE_PRUNE = "DELETE FROM dpop_proofs WHERE expires_at < ?"


def _settle(
    batch: list[tuple[bytes, int, asyncio.Future[bool]]], answers: list[bool] | None
) -> None:
    """On the event loop: each waiting request gets its answer (or a 503)."""
    for i, (_, _, future) in enumerate(batch):
        if future.done():
            continue  # the request was cancelled meanwhile
        if answers is None:
            future.set_exception(ServiceUnavailable())
        else:
            future.set_result(answers[i])


class PostgresReplayCache:
    """The cache in the UNLOGGED `dpop_proofs` table. The proofs that reach the check in the
    same turn of the event loop share one INSERT (like the principal loader's reads)."""

    _INSERT = (
        "INSERT INTO dpop_proofs (key, expires_at) "
        "SELECT * FROM unnest($1::varchar[], $2::timestamptz[]) "
        "ON CONFLICT (key) DO NOTHING RETURNING key"
    )

    def __init__(self, pool: RawPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._pruned_at = 0.0
        self._now = 0.0
        self._waiting: list[tuple[str, float, asyncio.Future[bool]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def first_use(self, key: str, expires_at: float, now: float) -> bool:
        """See `ReplayCache.first_use`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._dispatch)
        self._waiting.append((key, expires_at, future))
        self._now = max(self._now, now)
        return await future

    def _dispatch(self) -> None:
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._insert(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _insert(self, batch: list[tuple[str, float, asyncio.Future[bool]]]) -> None:
        # A key twice in one batch: only its first request may have it.
        first: dict[str, float] = {}
        for key, expires_at, _ in batch:
            first.setdefault(key, expires_at)
        try:
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                await fetch_bounded(
                    self._pool,
                    "DELETE FROM dpop_proofs WHERE expires_at < $1",
                    datetime.fromtimestamp(self._now, UTC),
                    bound=self._timeout,
                )
            rows = await fetch_bounded(
                self._pool, self._INSERT, list(first),
                [datetime.fromtimestamp(e, UTC) for e in first.values()], bound=self._timeout,
            )  # fmt: skip
        except BaseException as e:
            error = ServiceUnavailable() if isinstance(e, ASYNCPG_UNAVAILABLE) else e
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if error is e:
                raise
            return
        inserted = {row[0] for row in rows}
        for key, _, future in batch:
            if not future.done():
                future.set_result(key in inserted)
            inserted.discard(key)

    async def close(self) -> None:
        """See `ReplayCache.close` (the pool is the principal loader's)."""
