"""Who a bearer token speaks for, with the revocation check that runs on every request.

The check is one primary-key read of the session joined to its user, issued straight on
the driver: no ORM unit of work and no thread hand-off. On SQLite the read runs on the
event loop (WAL readers never wait for writers; a point read takes microseconds), on
PostgreSQL it is one prepared statement on a small asyncpg pool. Nothing is cached, so a
revocation committed by any worker or instance is seen by the very next request.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from conductor_api.config import Settings
from conductor_api.db import ASYNCPG_UNAVAILABLE, RawPool, asyncpg_dsn, fetch_bounded
from conductor_api.errors import ServiceUnavailable

_SQL = (
    "SELECT u.id, u.username, u.created_at, u.is_active, s.revoked_at "
    "FROM sessions AS s JOIN users AS u ON u.id = s.user_id WHERE s.id = {param}"
)

# Concurrent checks share one query; the session id is returned to tell their rows apart.
POSTGRES_SQL = _SQL.format(param="ANY($1::uuid[])").replace("SELECT u.id", "SELECT s.id, u.id")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a live session of an active user."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    username: str
    created_at: datetime
    is_active: bool


class PrincipalLoader(Protocol):
    """Reads the caller's session and user in one query."""

    async def load(self, session_id: uuid.UUID, user_id: uuid.UUID) -> Principal | None:
        """The principal, or None when the session is gone, revoked or its user disabled."""

    async def close(self) -> None:
        """Release connections."""


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _live(
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    same_user: bool,
    username: str,
    created_at: Any,
    is_active: Any,
    revoked_at: Any,
) -> Principal | None:
    """The principal of a session row, unless the session is revoked, its user disabled, or
    the token's `sub` is not the session's user."""
    if revoked_at is not None or not is_active or not same_user:
        return None
    return Principal(user_id, session_id, username, _utc(created_at), bool(is_active))


class SqlitePrincipalLoader:
    """One synchronous sqlite3 connection per worker, in autocommit mode."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._sql = _SQL.format(param="?")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # Short: this runs on the event loop, and a WAL reader only waits during recovery.
        conn.execute("PRAGMA busy_timeout=200")
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def load(self, session_id: uuid.UUID, user_id: uuid.UUID) -> Principal | None:
        """See `PrincipalLoader.load`."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            # fetchall() steps the statement to its end, so no read transaction stays open.
            rows = self._conn.execute(self._sql, (session_id.hex,)).fetchall()
        except sqlite3.Error as e:
            await self.close()
            raise ServiceUnavailable() from e
        if not rows:
            return None
        uid, username, created_at, is_active, revoked_at = rows[0]
        return _live(
            session_id, user_id, uid == user_id.hex, username, created_at, is_active, revoked_at
        )

    async def close(self) -> None:
        """See `PrincipalLoader.close`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresPrincipalLoader:
    """Lookups on a small asyncpg pool, coalesced: the requests that arrive while a query is
    out share the next one, a single `WHERE s.id = ANY($1)` query.

    At most `in_flight` queries are out at once; a request that finds them all out waits
    for the first to come back, with every other request that arrived meanwhile, and they go
    together. Idle, a request's query is sent in the same turn of the event loop; under
    load, one round trip to the database serves a whole batch, so the database's work and
    the wake-ups per request shrink as load grows (on a machine whose cores the database
    shares, that is what lets a second worker add throughput).

    A request only joins a query that has not been sent yet, so every answer is read after
    the request arrived: a revocation committed before it is always seen. The pool is made
    on first use, so that a database down at start is answered with 503s rather than a
    process that will not start.
    """

    def __init__(self, dsn: str, timeout: float, max_size: int = 8, in_flight: int = 1) -> None:
        self._timeout = timeout
        self._max_in_flight = in_flight
        self._in_flight = 0
        self._pool = RawPool(dsn, timeout, max_size)
        self._sql = POSTGRES_SQL
        self._waiting: dict[uuid.UUID, list[asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> RawPool:
        """The loader's pool (the DPoP replay cache, the refresh-token swaps and
        `Autocommit` share it)."""
        return self._pool

    async def load(self, session_id: uuid.UUID, user_id: uuid.UUID) -> Principal | None:
        """See `PrincipalLoader.load`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting and self._in_flight < self._max_in_flight:
            loop.call_soon(self._dispatch)
        self._waiting.setdefault(session_id, []).append(future)
        row = await future
        if row is None:
            return None
        _, uid, username, created_at, is_active, revoked_at = row
        return _live(
            session_id, user_id, uid == user_id, username, created_at, is_active, revoked_at
        )

    def _dispatch(self) -> None:
        # Nothing left (a returning query took the batch first), or every query out: the
        # next one to come back sends what is waiting.
        if not self._waiting or self._in_flight >= self._max_in_flight:
            return
        batch, self._waiting = self._waiting, {}
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._query(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _query(self, batch: dict[uuid.UUID, list[asyncio.Future[Any]]]) -> None:
        try:
            await self._answer(batch)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _answer(self, batch: dict[uuid.UUID, list[asyncio.Future[Any]]]) -> None:
        try:
            rows = await fetch_bounded(self._pool, self._sql, list(batch), bound=self._timeout)
        except ASYNCPG_UNAVAILABLE:
            # Those that waited for this query waited for the database as long as it may
            # take: they are answered now, not after a query of their own times out too.
            waited, self._waiting = self._waiting, {}
            self._fail(batch, ServiceUnavailable())
            self._fail(waited, ServiceUnavailable())
            return
        except BaseException as e:
            # Whatever happens, no request may be left waiting on this batch.
            self._fail(batch, e)
            raise
        found = {row[0]: row for row in rows}
        for sid, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(sid))

    @staticmethod
    def _fail(batch: dict[uuid.UUID, list[asyncio.Future[Any]]], error: BaseException) -> None:
        for futures in batch.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        """See `PrincipalLoader.close`."""
        await self._pool.close()


def make_principal_loader(settings: Settings) -> PrincipalLoader:
    """The loader for the configured database."""
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        return SqlitePrincipalLoader(url.split(":///", 1)[1], settings.database_timeout_seconds)
    return PostgresPrincipalLoader(asyncpg_dsn(settings), settings.database_timeout_seconds)
