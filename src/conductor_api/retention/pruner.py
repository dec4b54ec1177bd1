"""Deletes what the rules say has expired: bounded batches, one pruner per database at once."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Delete, delete, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conductor_api.config import Settings
from conductor_api.dpop.models import SeenProof
from conductor_api.dpop.replay import prune_sqlite_cache, sqlite_cache_path
from conductor_api.retention.rules import RULES, Expiring, Retention

# Arbitrary but fixed: every instance on one PostgreSQL database contends for this key.
ADVISORY_LOCK_KEY = 0x636F6E6450  # "condP"


def batch_delete(rule: Expiring, retention: Retention, limit: int, dialect: str) -> Delete:
    """Delete at most `limit` rows that `rule` says have expired, in one statement.

    Neither PostgreSQL nor a stock SQLite has DELETE ... LIMIT, so the rows are chosen by a
    subquery with LIMIT. On PostgreSQL they are named by `ctid` (`= ANY(ARRAY(...))` is a
    TID scan, where `pk IN (...)` may be planned as a scan of the whole table joined to the
    subquery). The condition is repeated outside: a row that a request changed meanwhile is
    checked again as it is now (and keeps a new `ctid`), so it is never deleted on the
    strength of what it was.

    On PostgreSQL the rows are locked as they are chosen, passing over those that a
    request holds (`SKIP LOCKED`): the DELETE then never waits for a request. A sign-in
    takes its two counters in one statement (the address's, then the name's), so a
    DELETE that held the name's idle row and waited for the address's would deadlock with
    it; a row passed over is pruned by a later run."""
    condition = rule.condition(retention)
    if dialect == "postgresql":
        ctid: ColumnElement[Any] = literal_column("ctid")
        chosen = (
            select(ctid)
            .where(condition)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        return delete(rule.table).where(ctid == func.any(func.array(chosen)), condition)
    pk = list(rule.table.primary_key.columns)
    keys = select(*pk).where(condition).limit(limit)
    target: Any = pk[0] if len(pk) == 1 else tuple_(*pk)
    return delete(rule.table).where(target.in_(keys), condition)


class Pruner:
    """Deletes expired rows of every rule, `batch` rows per statement and transaction."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        now: Callable[[], datetime],
        rules: Sequence[Expiring] = RULES,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._now = now
        self._rules = rules

    async def run(self) -> dict[str, int] | None:
        """Prune once: rows deleted per table, or None when another pruner holds the lock."""
        retention = Retention.at(self._now(), self._settings)
        if self._settings.is_sqlite:
            with FileLock(Path(self._settings.sqlite_path + ".prune-lock")) as locked:
                return await self._prune(None, retention) if locked else None
        async with self._engine.connect() as conn:
            # Session-level: it outlives the per-batch transactions, and PostgreSQL drops it
            # by itself if this connection dies.
            lock = select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY))
            locked = bool((await conn.execute(lock)).scalar())
            await conn.commit()
            if not locked:
                return None
            try:
                return await self._prune(conn, retention)
            finally:
                await conn.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
                await conn.commit()

    async def _prune(self, conn: AsyncConnection | None, retention: Retention) -> dict[str, int]:
        deleted: dict[str, int] = {}
        for rule in self._rules:
            count = await self._drain(conn, rule, retention)
            deleted[rule.name] = deleted.get(rule.name, 0) + count
        if self._settings.is_sqlite and SeenProof.__tablename__ in deleted:
            # On SQLite the proofs live in a file of their own beside the database.
            path = sqlite_cache_path(self._settings.sqlite_path)
            aged = await asyncio.to_thread(prune_sqlite_cache, path, retention.now.timestamp())
            deleted[SeenProof.__tablename__] += aged
        return deleted

    async def _drain(self, conn: AsyncConnection | None, rule: Expiring, r: Retention) -> int:
        limit = self._settings.prune_batch_size
        statement = batch_delete(rule, r, limit, self._engine.dialect.name)
        total = 0
        while True:
            if conn is None:
                # SQLite: a pooled connection per batch (BEGIN IMMEDIATE ... COMMIT), given
                # back in between so that requests waiting for the writer go first.
                async with self._engine.begin() as c:
                    count = (await c.execute(statement)).rowcount
            else:
                async with conn.begin():
                    count = (await conn.execute(statement)).rowcount
            total += count
            if count < limit:
                return total
            await asyncio.sleep(0)


class FileLock:
    """An exclusive, non-blocking flock on `path`; `locked` says whether it was obtained."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> bool:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            return False
        return True

    def __exit__(self, *_: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
