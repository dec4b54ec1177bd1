"""Declarative base, column types, and the engine and session factories."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import aiosqlite
import asyncpg
from sqlalchemy import (
    DateTime,
    Engine,
    Executable,
    Insert,
    MetaData,
    Table,
    bindparam,
    event,
    insert,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import ClauseElement, TextClause
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.util import find_tables
from sqlalchemy.types import TypeDecorator

from conductor_api.config import Settings
from conductor_api.storage import prepare_sqlite

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every table; constraint names are stable so migrations can name them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        # SQLite has no time zones: keep naive UTC so that text comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one is refused (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


def sqlite_utc_text(value: datetime | None) -> str | None:
    """What `UTCDateTime` then SQLite's DATETIME make of a value for SQLite, in one step:
    the naive UTC time as "YYYY-MM-DD HH:MM:SS.ffffff" (microseconds always written, so that
    text comparison orders correctly). `execute_direct` binds with it: the two processors
    in a row were a few percent of a sign-in's CPU."""
    if value is None:
        return None
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _bind_processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The function that turns a value of `type_` into the driver's, for `dialect`."""
    if isinstance(type_, UTCDateTime) and dialect.name == "sqlite":
        return sqlite_utc_text
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor


def make_engine(
    settings: Settings, *, inline: bool = True, autocheckpoint: bool = True
) -> AsyncEngine:
    """Create the async engine for the configured database. On SQLite its statements run
    on the event loop's thread (`InlineSqlite`) unless `inline` is False: then each goes
    through aiosqlite's thread (the background pruner's, whose batched deletes take long
    enough that the event loop must not wait for them). Without `autocheckpoint` its
    connections leave the WAL to a `sqlite_wal.WalCheckpointer` (the server's)."""
    url = settings.sqlalchemy_url
    timeout = settings.database_timeout_seconds
    # hide_parameters: statement parameters (hashes, token digests) never reach a message.
    kwargs: dict[str, Any] = {"pool_timeout": timeout, "hide_parameters": True}
    if settings.is_sqlite:
        prepare_sqlite(url)
        kwargs["connect_args"] = (
            {
                "isolation_level": None,
                "async_creator_fn": partial(InlineSqlite.connect, timeout=timeout),
            }
            if inline
            else {"isolation_level": None, "timeout": timeout}
        )
        # One connection per process: every transaction here writes (BEGIN IMMEDIATE), and
        # SQLite admits one writer at a time. Waiting in the pool's queue hands the
        # connection over at once; several connections would instead contend for the
        # file lock, and SQLite's busy handler waits by sleeping 1, 2, 5, ... 100 ms.
        kwargs["pool_size"] = 1
        kwargs["max_overflow"] = 0
    else:
        kwargs["connect_args"] = {"timeout": timeout, "command_timeout": timeout}
        # Above pool_size, overflow connections are opened and closed per use: with 16
        # requests in flight and a pool of 10, that was ~70 new backends a second.
        kwargs["pool_size"] = 20
        kwargs["max_overflow"] = 10
        kwargs["pool_pre_ping"] = False
    engine = create_async_engine(url, **kwargs)
    if settings.is_sqlite:
        # InlineSqlite keeps a busy timeout of zero and waits for a lock itself.
        _pragmas_on_connect(engine.sync_engine, None if inline else timeout, autocheckpoint)
        _begin_immediate(engine)
        if inline:
            _drop_stale_connections(engine)
    else:
        _drop_closed_connections(engine)
    return engine


class RawPool:
    """A small asyncpg pool of plain connections, made on first use (so that a database
    down at start is answered with 503s rather than a process that will not start): the
    per-request statements that need no ORM and no transaction run on it.

    A connection whose statement succeeded is kept aside (`park`) rather than given back to
    asyncpg's pool, and the next statement takes the last one kept (`acquire`): asyncpg's
    acquire and release (its queue, the connection holder's bookkeeping, a task for the
    acquire's timeout) cost about 40 µs of CPU a statement here, as much as the statement's
    own round trip. Kept connections still count against the pool's size, so there are
    never more than `max_size`, and none is kept while a caller waits for asyncpg's pool
    (it goes back there, to that caller); one that failed in any way goes back to
    asyncpg's pool too, which cancels, rolls back or replaces it as before."""

    def __init__(self, dsn: str, timeout: float, max_size: int = 8) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        # The pool connections go back to, kept by `close` for those still out (asyncpg's
        # close waits for them).
        self._made: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._parked: list[asyncpg.Connection] = []
        # Callers in asyncpg's `acquire`: while there are any, no connection is kept.
        self._waiting = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> RawPool:
        """A pool on the configured PostgreSQL database."""
        return cls(asyncpg_dsn(settings), settings.database_timeout_seconds)

    async def get(self) -> asyncpg.Pool:
        """asyncpg's pool (made now, if this is its first use)."""
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = self._made = await asyncpg.create_pool(
                        self._dsn, min_size=0, max_size=self._max_size,
                        timeout=self._timeout, command_timeout=self._timeout, reset=_kept,
                    )  # fmt: skip
        return self._pool

    async def acquire(self, bound: float) -> asyncpg.Connection:
        """A connection: the one kept last, else asyncpg's pool's, waiting no longer than
        `bound` seconds for one to be free."""
        while self._parked:
            kept = self._parked.pop()
            if _alive(kept):
                return kept
            # Lost while kept (the server ended it): asyncpg has given it back to its pool
            # (whose holder connects anew), or does so now.
            self.release_later(kept)
        self._waiting += 1
        try:
            pool = await self.get()
            connection: asyncpg.Connection = await pool.acquire(timeout=bound)
        except asyncpg.PostgresError as error:
            # Refused while connecting (no slot left, the database closed or dropped, the
            # role refused): an outage, reported as the engine's connections report one.
            raise DBAPIError(
                "connect", None, error, hide_parameters=True, connection_invalidated=True
            ) from error
        finally:
            self._waiting -= 1
        return connection

    def park(self, connection: asyncpg.Connection) -> None:
        """Keep a connection whose statements all succeeded, for the next `acquire`; or,
        when a caller waits for one in asyncpg's pool, give it back there."""
        if (
            self._waiting
            or self._pool is None
            or not _alive(connection)
            or connection.is_in_transaction()
        ):
            self.release_later(connection)
            return
        self._parked.append(connection)

    async def release(self, connection: asyncpg.Connection) -> None:
        """Give a connection back to asyncpg's pool (after an error: it resets or replaces
        it, and first waits for the cancellation of a statement that timed out)."""
        if self._made is not None:
            await self._made.release(connection)

    def release_later(self, connection: asyncpg.Connection) -> None:
        """`release` in the background: the caller has its error without waiting for it."""
        _in_background(self.release(connection))

    async def close(self) -> None:
        """Close every connection."""
        parked, self._parked = self._parked, []
        pool, self._pool = self._pool, None
        if pool is not None:
            for connection in parked:
                with contextlib.suppress(Exception):
                    await pool.release(connection)
            await pool.close()


def _alive(connection: asyncpg.Connection) -> bool:
    """Whether a connection of a pool is still connected to the server. One the server
    closed has been given back to its pool by asyncpg already, and answers nothing."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


async def fetch_bounded(pool: RawPool, sql: str, *args: Any, bound: float) -> list[asyncpg.Record]:
    """`sql`'s rows on a connection of `pool`, in about twice `bound` seconds at most: as
    long to get a connection, as long for the statement.

    `Pool.fetch` would wait for a free connection without a bound, and the release of a
    connection whose statement timed out waits until asyncpg has cancelled the statement,
    over a new connection to the server that did not answer: against a silent database
    one statement took twice the timeout, and a request queued behind it more than three
    times. Here that release (and the cancellation, which keeps a statement stuck on a
    lock from running later) goes on in the background, and the caller has its error."""
    conn = await pool.acquire(bound)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args, timeout=bound)
    except TimeoutError:
        pool.release_later(conn)
        raise
    except BaseException:
        await pool.release(conn)
        raise
    pool.park(conn)
    return rows


# Releases under way in the background (a reference, so that they are not collected).
_RELEASING: set[asyncio.Task[None]] = set()


def _in_background(release: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(release)
    _RELEASING.add(task)
    task.add_done_callback(_released)


def _released(task: asyncio.Task[None]) -> None:
    _RELEASING.discard(task)
    # A release that failed has closed its connection, which is all it could do.
    if not task.cancelled():
        task.exception()


def asyncpg_dsn(settings: Settings) -> str:
    """The configured PostgreSQL database's address as asyncpg takes it."""
    return settings.sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _kept(_connection: asyncpg.Connection) -> None:
    """A connection goes back to a `RawPool` as it is.

    By default asyncpg resets every connection it takes back (advisory locks, cursors,
    LISTEN, settings: four statements and a round trip after every query, as much work
    for the database as the query itself). Nothing sent on these pools changes any of
    those: single statements, each its own transaction. asyncpg still rolls back a
    transaction left open."""


# At most this many of an `Autocommit`'s direct transactions at once on PostgreSQL: half of
# a `RawPool`'s connections, so that sign-ins' transactions held up (a slow commit, a lock
# wait) never take every connection that each request's session check needs.
PG_TRANSACTIONS = 4


class Autocommit:
    """Runs single statements that are atomic on their own (a sign-in's lockout counters
    and its first read of the user, the refresh-token swap on SQLite) with no transaction
    or session around them: no BEGIN or COMMIT round trip on PostgreSQL, and none of an
    ORM session's work (about 0.2 ms a transaction, more than the statement's own).

    Each statement is compiled once (`_Compiled`) and sent straight to the driver:
    SQLAlchemy's per-execution work (cache key, parameter and result processing) cost
    more than the database's for a one-row statement, on paths that run on every sign-in.
    On SQLite it runs on a connection of its own (`InlineSqlite`: on the event loop's
    thread, and on aiosqlite's only to wait for another connection's write lock), in
    autocommit mode; on PostgreSQL on a `RawPool` (`pool`: a shared one, the session checks'; by
    default one of its own). `transaction` opens the write transactions of sign-ins on
    the same connection or pool. A driver's error is raised as SQLAlchemy's (`DBAPIError`
    and its subclasses), as from any other query, so that an outage is a 503.
    """

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        pool: RawPool | None = None,
        *,
        autocheckpoint: bool = True,
    ) -> None:
        self._dialect = engine.dialect
        self._pragmas = sqlite_pragmas(autocheckpoint)
        # SQLite: the connection (opened on first use), and how to open it.
        self._sqlite: InlineSqlite | None = None
        self._opening = asyncio.Lock()
        # SQLite: held by a `transaction` for its whole length (statements wait for it),
        # and the task that holds it.
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[Any] | None = None
        self._path = settings.sqlite_path if settings.is_sqlite else ""
        self._timeout = settings.database_timeout_seconds
        # PostgreSQL: the transactions open at once (`PG_TRANSACTIONS`), the pool, and the
        # one this object made (and closes), if any.
        self._transactions = asyncio.Semaphore(PG_TRANSACTIONS)
        self._own: RawPool | None = None
        self._pool = pool
        if not settings.is_sqlite and pool is None:
            self._own = RawPool.for_settings(settings)
            self._pool = self._own

    @property
    def dialect_name(self) -> str:
        """The database's dialect (`sqlite`, `postgresql`)."""
        return self._dialect.name

    async def first(
        self, statement: Executable, params: Mapping[str, object]
    ) -> tuple[Any, ...] | None:
        """Execute `statement` with `params` and return its first row, if any."""
        rows = await self.rows(statement, params)
        return rows[0] if rows else None

    async def rows(
        self, statement: Executable, params: Mapping[str, object]
    ) -> list[tuple[Any, ...]]:
        """Execute `statement` with `params` and return its rows."""
        compiled = _compiled(statement, self._dialect)
        args = compiled.arguments(params)
        if self._pool is not None:
            # A connection that fails is the pool's to replace; an error that means no
            # answer (no connection, a timeout) is already an outage (`app.DATABASE_DOWN`).
            try:
                rows = await fetch_bounded(self._pool, compiled.sql, *args, bound=self._timeout)
            except (OSError, TimeoutError):
                raise
            except Exception as e:
                raise _asyncpg_dbapi_error(compiled.sql, e) from e
            return [compiled.row(row) for row in rows]
        # On an error the connection stays: every statement here is a transaction of its
        # own and is read to its end, so none is left open, and sign-ins and refreshes of
        # this process share it.
        if self._writing.locked():
            # A `transaction` is open on the connection: a statement now would join it.
            if self._writer is asyncio.current_task():
                raise RuntimeError("an autocommit statement inside this task's transaction")
            async with self._writing:
                return await _on_sqlite(await self._connection(compiled.sql), compiled, args)
        return await _on_sqlite(await self._connection(compiled.sql), compiled, args)

    async def _connection(self, sql: str) -> InlineSqlite:
        if self._sqlite is not None and self._sqlite.stale:
            # Read-only for good (`InlineSqlite._note_refusal`): a new one, which writes
            # once the file can be written again. Closed after what is queued on it.
            stale, self._sqlite = self._sqlite, None
            _in_background(_close_quietly(stale))
        try:
            return self._sqlite or await self._open_sqlite()
        except sqlite3.Error as e:
            raise _sqlite_error(sql, e) from e

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[DirectTransaction]:
        """A write transaction for statements sent with `execute_direct` (no ORM), committed
        at the end of the block and rolled back if it raises (or is cancelled).

        SQLite: on this object's own connection; meanwhile its single statements, and other
        transactions, wait for it. A sign-in's transaction, on the connection of its single
        statements rather than on the engine's pool: a SQLite connection drops its page
        cache whenever another connection has written, so two connections taking turns
        read their pages afresh at every turn: that and the ORM session's own work were
        about a quarter of a password sign-in's CPU outside the hash (bench/RESULTS.md).

        PostgreSQL: on a connection of the pool, held for the block (the single statements
        go on on the others; at most `PG_TRANSACTIONS` are open at once, the next waiting
        for a place as long as it would for a statement). An ORM session's transaction
        costs more CPU than its statements: about 0.5 ms a sign-in, on cores the database
        shares. A connection whose transaction could not be ended (a timeout, a lost
        server) is closed, never given back with the transaction open."""
        if self._pool is not None:
            async with self._pg_transaction() as transaction:
                yield transaction
            return
        async with self._writing:
            self._writer = asyncio.current_task()
            try:
                connection = await self._connection("BEGIN IMMEDIATE")
                await _run_sqlite(connection, "BEGIN IMMEDIATE")
                try:
                    yield DirectTransaction(connection, self._dialect, self._timeout)
                    await _run_sqlite(connection, "COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        with contextlib.suppress(DBAPIError):
                            await _run_sqlite(connection, "ROLLBACK")
                    raise
            finally:
                self._writer = None

    @contextlib.asynccontextmanager
    async def _pg_transaction(self) -> AsyncIterator[DirectTransaction]:
        pool = self._pool
        assert pool is not None
        # A place among the transactions first (waiting no longer than a statement may).
        async with asyncio.timeout(self._timeout):
            await self._transactions.acquire()
        try:
            connection = await pool.acquire(self._timeout)
            try:
                await _run_asyncpg(connection, "BEGIN", self._timeout)
                transaction = DirectTransaction(connection, self._dialect, self._timeout)
                yield transaction
                await transaction.flush()
                await _run_asyncpg(connection, "COMMIT", self._timeout)
            except TimeoutError:
                # asyncpg is cancelling the statement, and the rollback waits for that: in
                # the background, so that the caller has its error after one timeout, not two.
                _in_background(_abandon(pool, connection, self._timeout))
                raise
            except BaseException:
                await _abandon(pool, connection, self._timeout)
                raise
            pool.park(connection)
        finally:
            self._transactions.release()

    async def _open_sqlite(self) -> InlineSqlite:
        """The connection, opened by the first statement (once, however many arrive)."""
        async with self._opening:
            if self._sqlite is None:
                connection = InlineSqlite.connect(
                    self._path, timeout=self._timeout, isolation_level=None
                )
                await connection
                try:
                    for pragma in self._pragmas:
                        await connection.statement(pragma, (), False)
                except BaseException:
                    await _close_quietly(connection)
                    raise
                self._sqlite = connection
        return self._sqlite

    async def dispose(self) -> None:
        """Close the SQLite connection, or the pool this object made."""
        connection, self._sqlite = self._sqlite, None
        if connection is not None:
            await _close_quietly(connection)
        if self._own is not None:
            await self._own.close()


class DirectTransaction:
    """An open `Autocommit.transaction`: what `execute_direct` runs its statements in, and
    `insert_later` queues its inserts in (PostgreSQL)."""

    __slots__ = ("_connection", "_dialect", "_later", "_timeout", "dialect_name")

    def __init__(
        self, connection: InlineSqlite | asyncpg.Connection, dialect: Dialect, timeout: float
    ) -> None:
        self._connection = connection
        self._dialect = dialect
        self._timeout = timeout
        self.dialect_name = dialect.name
        self._later: list[tuple[_Compiled, tuple[Any, ...]]] = []

    async def rows(
        self, statement: Executable, params: Mapping[str, object]
    ) -> list[tuple[Any, ...]]:
        """Execute `statement` with `params` in the transaction and return its rows (the
        inserts queued before it first: in the same statement, as CTEs, when it touches
        none of their tables, since it would not see their rows)."""
        compiled = _compiled(statement, self._dialect)
        args = compiled.arguments(params)
        if isinstance(self._connection, InlineSqlite):
            return await _on_sqlite(self._connection, compiled, args)
        # Not for a statement whose tables are not known (no `tables`).
        if (
            self._later
            and compiled.tables
            and compiled.tables.isdisjoint(t for part, _ in self._later for t in part.tables)
        ):
            parts, queued = self._drain()
            sql, args = _chained((*parts, compiled)), (*queued, *args)
        else:
            await self.flush()
            sql = compiled.sql
        return [compiled.row(row) for row in await self._fetch(sql, args)]

    def queue(self, statement: Executable, params: Mapping[str, object]) -> None:
        """Queue an insert that returns nothing, for the next statement or `flush`
        (PostgreSQL)."""
        compiled = _compiled(statement, self._dialect)
        if (
            compiled.returns_rows
            or not isinstance(statement, Insert)
            or not compiled.tables
            or compiled.has_with
        ):
            # PostgreSQL allows a WITH with data-modifying statements only at the top.
            raise ValueError("only inserts that return nothing are queued")
        self._later.append((compiled, compiled.arguments(params)))

    async def flush(self) -> None:
        """Send the queued inserts, as one statement (each but the last a data-modifying
        CTE: PostgreSQL runs them all, with one plan and one round trip)."""
        if self._later:
            parts, args = self._drain()
            await self._fetch(_chained(parts), args)

    def _drain(self) -> tuple[tuple[_Compiled, ...], tuple[Any, ...]]:
        """The queued inserts, and their arguments one after the other; the queue empty."""
        later, self._later = self._later, []
        return tuple(part for part, _ in later), tuple(arg for _, args in later for arg in args)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        connection = cast(asyncpg.Connection, self._connection)
        try:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args, timeout=self._timeout)
        except (OSError, TimeoutError):
            raise
        except Exception as e:
            raise _asyncpg_dbapi_error(sql, e) from e
        return rows


_CHAINED: dict[tuple[int, ...], str] = {}
_PLACEHOLDER = re.compile(r"\$(\d+)")


def _chained(parts: tuple[_Compiled, ...]) -> str:
    """PostgreSQL's text of `parts` as one statement: each but the last (inserts) a CTE,
    the last the statement whose rows it returns (its own CTEs, if it has a WITH, after
    theirs); their parameters numbered on from one part to the next (in SQL that
    SQLAlchemy built: its only `$` are parameters)."""
    key = tuple(id(part) for part in parts)
    sql = _CHAINED.get(key)
    if sql is None:
        texts: list[str] = []
        offset = 0
        for part in parts:
            texts.append(_PLACEHOLDER.sub(partial(_renumbered, offset), part.sql))
            offset += part.parameter_count
        ctes = ", ".join(f"later_{i} AS ({text})" for i, text in enumerate(texts[:-1]))
        own = _with_of(texts[-1])
        if not ctes:
            sql = texts[-1]
        elif own is None:
            sql = f"WITH {ctes} {texts[-1]}"
        else:
            sql = f"WITH {ctes}, {own}"
        _CHAINED[key] = sql
    return sql


def _with_of(sql: str) -> str | None:
    """What follows the WITH that begins `sql` (its CTEs, then its statement), or None when
    it has no WITH of its own."""
    head = sql.lstrip()
    return head[5:] if head[:5].upper() == "WITH " else None


def _renumbered(offset: int, placeholder: re.Match[str]) -> str:
    return f"${int(placeholder.group(1)) + offset}"


async def _close_quietly(connection: InlineSqlite) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await connection.close()


async def _run_sqlite(connection: InlineSqlite, sql: str) -> None:
    """A statement with no parameters and no rows (BEGIN, COMMIT), its error SQLAlchemy's."""
    try:
        await connection.statement(sql, (), False)
    except sqlite3.Error as e:
        raise _sqlite_error(sql, e) from e


async def _run_asyncpg(connection: asyncpg.Connection, sql: str, bound: float) -> None:
    """A statement with no parameters and no rows (BEGIN, COMMIT), a driver's error (other
    than no answer at all: an outage already) SQLAlchemy's."""
    try:
        await connection.execute(sql, timeout=bound)
    except (OSError, TimeoutError):
        raise
    except Exception as e:
        raise _asyncpg_dbapi_error(sql, e) from e


async def _abandon(pool: RawPool, connection: asyncpg.Connection, bound: float) -> None:
    """Give back a connection whose transaction failed, rolled back; one that cannot be
    (lost, or no answer in time) is closed, and the server rolls its transaction back."""
    try:
        if _open(connection):
            await connection.execute("ROLLBACK", timeout=bound)
    except Exception:
        connection.terminate()
    except BaseException:
        connection.terminate()
        raise
    finally:
        await pool.release(connection)


def _open(connection: asyncpg.Connection) -> bool:
    """Whether a pool's asyncpg connection is still in a transaction it could not end."""
    try:
        return not connection.is_closed() and connection.is_in_transaction()
    except asyncpg.InterfaceError:
        # Lost, and so given back to its pool already.
        return False


# What runs a statement straight on the driver (`execute_direct`): a session's transaction,
# a direct one, or no transaction at all.
Executor = AsyncSession | DirectTransaction | Autocommit
# What holds a transaction: a session's, or a direct one (`Autocommit.transaction`).
Writer = AsyncSession | DirectTransaction


# asyncpg errors that end the connection: it failed, the server is shutting down or an
# administrator ended the backend (57P01, 57P03), or it is out of connection slots (53300).
ASYNCPG_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    # Refused when connecting: the database dropped (3D000) or closed to connections
    # (55000, ALLOW_CONNECTIONS false), the role refused (class 28): an outage to the
    # client, the operator's to fix.
    asyncpg.InvalidCatalogNameError,
    asyncpg.ObjectNotInPrerequisiteStateError,
    asyncpg.InvalidAuthorizationSpecificationError,
    # A write refused by a read-only database (25006): a standby after a failover, or
    # default_transaction_read_only set for maintenance. The connection is dropped, so
    # that the next one may reach the new primary.
    asyncpg.ReadOnlySQLTransactionError,
)
# What a query on a raw asyncpg pool raises when the database does not answer it: a 503.
# InternalClientError: the protocol out of step on a connection whose backend was killed.
ASYNCPG_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class _Compiled:
    """A statement compiled once for one dialect: its SQL, how a call's parameters become
    the driver's positional arguments (in the statement's order, through each type's bind
    processor for the dialect, constants filled in), and how a row the driver returns
    becomes what SQLAlchemy would have returned (each column's result processor)."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = compiled.binds
        if compiled.positiontup is None or any(b.expanding for b in binds.values()):
            raise ValueError("only statements with plain positional parameters")
        # Kept, so that the id its cache entry is keyed by stays this statement's.
        self.statement = statement
        self.sql: str = compiled.string
        self._slots: list[tuple[str, Any, Any]] = [
            (
                name,
                _GIVEN if binds[name].required else binds[name].value,
                _bind_processor(binds[name].type, dialect),
            )
            for name in compiled.positiontup
        ]
        self.parameter_count = len(self._slots)
        # What `DirectTransaction` needs to send it with queued inserts as one statement.
        self.tables = _tables(statement, self.sql)
        self.has_with = _with_of(self.sql) is not None
        self._results = [
            column[3].dialect_impl(dialect).result_processor(dialect, None)
            for column in compiled._result_columns
        ]
        self.returns_rows = bool(self._results)

    def arguments(self, params: Mapping[str, object]) -> tuple[Any, ...]:
        """The driver's arguments for `params`; a name not given takes its bound constant,
        and a parameter without one must be given (KeyError)."""
        args = []
        for name, constant, process in self._slots:
            value = constant if constant is not _GIVEN and name not in params else params[name]
            args.append(process(value) if process is not None else value)
        return tuple(args)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """A driver's row as SQLAlchemy would return it."""
        return tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(self._results, raw, strict=True)
        )


def _tables(statement: Executable, sql: str) -> frozenset[str]:
    """The tables a statement reads or writes; none when they are not known (SQL text) or
    its WITH is recursive (the queued inserts could not join it)."""
    if isinstance(statement, TextClause) or (_with_of(sql) or "").upper().startswith("RECURSIVE"):
        return frozenset()
    # The tables themselves, also under an alias, a join or a CTE (their names are not
    # tables'); and the ones inserted into, updated or deleted from.
    found = find_tables(cast(ClauseElement, statement), include_crud=True)
    return frozenset(table.name for table in found if isinstance(table, TableClause))


_COMPILED: dict[tuple[int, str], _Compiled] = {}


def _compiled(statement: Executable, dialect: Dialect) -> _Compiled:
    key = (id(statement), dialect.name)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = _Compiled(statement, dialect)
    return compiled


def insert_row(model: type[Base]) -> Insert:
    """An INSERT of one row of `model`'s table, every column a parameter named after it
    (each must be given: no column default applies), for `execute_direct`."""
    table = cast(Table, model.__table__)
    return insert(table).values({c.key: bindparam(c.key, type_=c.type) for c in table.columns})


def dialect_of(db: Executor) -> str:
    """The name of the database `db` runs on: `sqlite` or `postgresql`."""
    return (
        db.dialect_name
        if isinstance(db, Autocommit | DirectTransaction)
        else db.get_bind().dialect.name
    )


def dialect_insert(dialect: str, table: Any) -> Any:
    """An INSERT into `table` in `dialect`'s own form, for its ON CONFLICT clause."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def execute_direct(
    db: Executor, statement: Executable, params: Mapping[str, object]
) -> list[tuple[Any, ...]]:
    """Run a statement built once (a module constant) in `db`'s transaction, straight on
    the driver, and return its rows (those of RETURNING, for a change). With an
    `Autocommit`, the statement is a transaction of its own, with no session at all.

    A sign-in runs a dozen such statements, and SQLAlchemy's per-execution work (cache
    key, execution context, parameter and result handling, the ORM's unit of work for an
    insert) cost more than SQLite's own. The statement is compiled once per dialect
    (`_Compiled`), with SQLAlchemy's own type processing; a driver's error is raised as
    SQLAlchemy's, as from any other query, and the session's transaction is the same."""
    if isinstance(db, Autocommit | DirectTransaction):
        return await db.rows(statement, params)
    conn, fairy = await _connection(db)
    compiled = _compiled(statement, conn.dialect)
    args = compiled.arguments(params)
    if conn.dialect.name == "sqlite":
        sqlite_driver: InlineSqlite = fairy.driver_connection  # type: ignore[assignment]
        return await _on_sqlite(sqlite_driver, compiled, args)
    # SQLAlchemy's asyncpg adapter, which begins a transaction at its first statement.
    adapted: Any = fairy.dbapi_connection
    if adapted._transaction is None:
        try:
            await adapted._start_transaction()
        except Exception as e:
            raise await _asyncpg_error(compiled.sql, e, conn) from e
    return await _on_asyncpg(conn, fairy.driver_connection, compiled, args)


async def insert_later(db: Executor, statement: Insert, params: Mapping[str, object]) -> None:
    """An insert that returns nothing (`insert_row`'s): in a direct PostgreSQL transaction,
    queued and sent with the others queued, as one statement, before the transaction's next
    statement or its commit (a round trip each fewer; every statement still sees the rows
    queued before it); anywhere else, as `execute_direct` now. An error it raises (none is
    expected: its keys are new) comes from the statement it is sent with."""
    if isinstance(db, DirectTransaction) and db.dialect_name == "postgresql":
        db.queue(statement, params)
    else:
        await execute_direct(db, statement, params)


async def _on_sqlite(
    connection: InlineSqlite, compiled: _Compiled, args: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """`compiled` run on a SQLite connection: its rows, or SQLAlchemy's exception."""
    try:
        rows = await connection.statement(compiled.sql, args, compiled.returns_rows)
    except sqlite3.Error as e:
        raise _sqlite_error(compiled.sql, e) from e
    return [compiled.row(row) for row in rows]


async def _on_asyncpg(
    conn: AsyncConnection, driver: asyncpg.Connection, compiled: _Compiled, args: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """`compiled` run on `conn`'s asyncpg connection: its rows, or SQLAlchemy's exception
    (the connection invalidated when it is lost)."""
    try:
        rows = await driver.fetch(compiled.sql, *args)
    except Exception as e:
        raise await _asyncpg_error(compiled.sql, e, conn) from e
    return [compiled.row(row) for row in rows]


async def _connection(db: AsyncSession) -> tuple[AsyncConnection, PoolProxiedConnection]:
    """`db`'s connection and its driver's, kept for the rest of its transaction: asking
    the session for them takes two greenlet switches."""
    transaction = db.sync_session.get_transaction()
    held = db.info.get(_HELD)
    if held is not None and held[0] is transaction and transaction is not None:
        return held[1], held[2]
    conn = await db.connection()
    fairy = await conn.get_raw_connection()
    # The session's transaction as it is once the connection is in it.
    db.info[_HELD] = (db.sync_session.get_transaction(), conn, fairy)
    return conn, fairy


_HELD = "conductor_api.db.connection"


def _sqlite_error(sql: str, error: sqlite3.Error) -> DBAPIError:
    """SQLAlchemy's exception for a sqlite3 one."""
    if isinstance(error, sqlite3.IntegrityError):
        return IntegrityError(sql, None, error, hide_parameters=True)
    if isinstance(error, sqlite3.OperationalError):
        return OperationalError(sql, None, error, hide_parameters=True)
    return DBAPIError(sql, None, error, hide_parameters=True)


async def _asyncpg_error(sql: str, error: Exception, conn: AsyncConnection) -> DBAPIError:
    """SQLAlchemy's exception for an error raised by asyncpg on `conn`'s connection, which
    is invalidated when the error means it is lost."""
    wrapped = _asyncpg_dbapi_error(sql, error)
    if wrapped.connection_invalidated:
        await conn.invalidate(error)
    return wrapped


def _asyncpg_dbapi_error(sql: str, error: Exception) -> DBAPIError:
    """SQLAlchemy's exception for an error raised by asyncpg. A server error about the
    statement leaves the connection usable; anything else (the server going away, a
    socket error, a protocol out of step after a killed backend: asyncpg's
    InternalClientError) means it is lost (`connection_invalidated`: an outage)."""
    lost = not isinstance(error, asyncpg.PostgresError) or isinstance(error, ASYNCPG_LOST)
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, None, error, hide_parameters=True)
    return DBAPIError(sql, None, error, hide_parameters=True, connection_invalidated=lost)


# The constant of a parameter that every call must give.
_GIVEN = object()


def _drop_closed_connections(engine: AsyncEngine) -> None:
    # A server restart closes every pooled connection; asyncpg notices at once, but the pool
    # would still hand them out and the first request after the database is back would fail.
    # This check costs no round trip, unlike pool_pre_ping (BEGIN; ping; ROLLBACK) would.
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.driver_connection.is_closed():
            raise DisconnectionError("connection closed by the server")


def _drop_stale_connections(engine: AsyncEngine) -> None:
    # A SQLite connection that SQLite made read-only (`InlineSqlite.stale`) is closed and
    # replaced by the pool, as a lost PostgreSQL connection is.
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.driver_connection.stale:
            raise DisconnectionError("SQLite connection opened read-only")


class InlineSqlite(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the event loop's own thread unless they
    would wait for a lock.

    aiosqlite hands every call (cursor, execute, fetch, close, commit) to a thread of its
    own and back. A password sign-in is about seventy such calls, and each trip through
    the thread and the event loop cost more than its statement: together, most of a
    sign-in's CPU outside the hash. A statement on a database whose pages are in memory
    takes microseconds; only waiting for another connection's write lock (another worker
    process, the command line) can take long. So this connection's busy timeout is zero
    and every call runs inline; a call refused with SQLITE_BUSY has done nothing (it never
    got the lock), and goes to aiosqlite's thread, which tries it again every half
    millisecond until DATABASE_TIMEOUT_SECONDS after it was made. While a call is out on
    the thread, later calls queue behind it there, in order, their time counted from when
    each was made: behind a call that waited in vain they fail too, at once, instead of
    each waiting the whole timeout again.

    Not SQLite's own busy handler: it backs off to 100 ms between tries, and against
    another worker that takes the lock inline, a few hundred times a second for a moment
    each, one worker of two waited for seconds while the other did all the writing
    (refreshes on two workers: one worker at 0.08 cores, p99 1.3 s). The lock is free most
    of the time; trying often is what gets it.

    Every transaction here starts with BEGIN IMMEDIATE (`_begin_immediate`), the one
    statement that waits for the write lock; what follows it in the transaction, and
    reads in WAL mode, never wait for a lock.
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection], timeout: float) -> None:
        super().__init__(connector, iter_chunk_size=64)
        # As SQLAlchemy sets for the aiosqlite connections it makes itself.
        self._thread.daemon = True
        self._timeout = timeout
        self._out = 0
        # Set when SQLite refused a write as read-only (`_note_refusal`): replaced, not used.
        self.stale = False

    @classmethod
    def connect(cls, database: str, *, timeout: float, **kwargs: Any) -> InlineSqlite:
        """SQLAlchemy's `async_creator_fn`: the driver connection for `database`."""
        # Opened on aiosqlite's thread and used from the event loop's as well, one call at
        # a time (the pool hands the connection to one user, who awaits every call).
        connector = partial(
            sqlite3.connect, database, **{**kwargs, "timeout": 0, "check_same_thread": False}
        )
        return cls(connector, timeout)

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._inline_or_waiting(fn, *args, **kwargs)
        except sqlite3.Error as e:
            self._note_refusal(e)
            raise

    def _note_refusal(self, error: sqlite3.Error) -> None:
        """SQLITE_READONLY: SQLite opened the file read-only, without an error, because it
        could not be written then (its mode, a read-only mount), or it was moved away.
        Such a connection never writes again, even once the file can be written: the
        pools replace it (`stale`) instead of keeping it."""
        if getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
            self.stale = True

    async def _inline_or_waiting(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        if not self._out:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as e:
                if not _busy(e):
                    raise
        self._out += 1
        loop = asyncio.get_running_loop()
        # From now, not from when the thread takes the call: calls queued behind one that
        # waits would otherwise each wait the whole timeout again, one after another.
        deadline = time.monotonic() + self._timeout

        def waiting() -> Any:
            try:
                return self._waiting(deadline, fn, *args, **kwargs)
            finally:
                # Counted back only once it has run, not when its caller stops waiting
                # (cancelled): until then, a later call must not run on this thread too.
                with contextlib.suppress(RuntimeError):  # the event loop is closed
                    loop.call_soon_threadsafe(self._back)

        return await super()._execute(waiting)  # type: ignore[no-untyped-call]

    def _back(self) -> None:
        self._out -= 1

    async def statement(self, sql: str, args: tuple[Any, ...], rows: bool) -> list[Any]:
        """Run one statement and return its rows, if `rows`: executed, read to the end
        and its cursor closed in one call (inline, or on the thread as a whole). A caller
        cancelled while the call waits for the lock cannot leave the statement half-read,
        its implicit transaction, and the write lock, open."""
        result: list[Any] = await self._execute(_run_statement, self._conn, sql, args, rows)
        return result

    @staticmethod
    def _waiting(deadline: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """On aiosqlite's thread: `fn`, tried again while another connection holds the
        write lock, until `deadline` (then SQLITE_BUSY is raised)."""
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() > deadline:
                    raise
            time.sleep(_BUSY_POLL_SECONDS)


def _run_statement(
    connection: sqlite3.Connection, sql: str, args: tuple[Any, ...], rows: bool
) -> list[Any]:
    cursor = connection.execute(sql, args)
    try:
        return cursor.fetchall() if rows else []
    finally:
        cursor.close()


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused a call because another connection holds the lock it needs
    (SQLITE_BUSY and its extended codes): the call did nothing, and may be tried again."""
    return error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


# How often a call waiting for another connection's write lock tries again.
_BUSY_POLL_SECONDS = 0.0005


# Every SQLite connection's settings (and its busy timeout: InlineSqlite's is zero).
_SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA foreign_keys=ON", "PRAGMA synchronous=NORMAL")
# A server's connections: its `sqlite_wal.WalCheckpointer` copies the WAL back, off the
# event loop, instead of the connection whose commit filled it.
NO_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=0"


def sqlite_pragmas(autocheckpoint: bool) -> tuple[str, ...]:
    """What a connection runs first: `_SQLITE_PRAGMAS`, and `NO_AUTOCHECKPOINT` unless
    `autocheckpoint`."""
    return _SQLITE_PRAGMAS if autocheckpoint else (*_SQLITE_PRAGMAS, NO_AUTOCHECKPOINT)


def _pragmas_on_connect(engine: Engine, timeout: float | None, autocheckpoint: bool) -> None:
    """Every connection `engine` opens runs `sqlite_pragmas` first (and sets its busy
    timeout, when `timeout` is given)."""
    pragmas = sqlite_pragmas(autocheckpoint)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        if timeout is not None:
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()


def _begin_immediate(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and
        # then writes fails with SQLITE_BUSY_SNAPSHOT when another process wrote meanwhile.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
