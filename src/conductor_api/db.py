"""Declarative base, column types, and the engine and session factories."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, Executable, MetaData, Row, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
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
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: keep naive UTC so that text comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine for the configured database."""
    url = settings.sqlalchemy_url
    timeout = settings.database_timeout_seconds
    # hide_parameters: statement parameters (hashes, token digests) never reach a message.
    kwargs: dict[str, Any] = {"pool_timeout": timeout, "hide_parameters": True}
    if settings.is_sqlite:
        prepare_sqlite(url)
        kwargs["connect_args"] = {"timeout": timeout, "isolation_level": None}
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
        _configure_sqlite(engine, timeout)
        _begin_immediate(engine)
    else:
        _drop_closed_connections(engine)
    return engine


class Autocommit:
    """Runs single statements that are atomic on their own (the refresh-token swap) with no
    transaction around them: no BEGIN or COMMIT round trip on PostgreSQL.

    On SQLite the statement runs in one hand-off to a thread of its own, on a synchronous
    connection: through aiosqlite it took five hand-offs (cursor, execute, fetch, close,
    reset), each waiting for a turn of a busy event loop, and refresh throughput was bound
    by that latency rather than by work.
    """

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._async: AsyncEngine | None = None
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        if not settings.is_sqlite:
            self._async = engine.execution_options(isolation_level="AUTOCOMMIT")
            return
        timeout = settings.database_timeout_seconds
        self._sync = create_engine(
            settings.sqlalchemy_url.replace("sqlite+aiosqlite", "sqlite+pysqlite", 1),
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout,
            hide_parameters=True,
            # isolation_level=None is the driver's autocommit: no BEGIN is ever sent.
            connect_args={"timeout": timeout, "isolation_level": None, "check_same_thread": False},
        )
        _sqlite_pragmas(self._sync, timeout)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-autocommit")

    async def first(self, statement: Executable, params: Mapping[str, object]) -> Row[Any] | None:
        """Execute `statement` with `params` and return its first row, if any."""
        if self._async is not None:
            async with self._async.connect() as conn:
                return (await conn.execute(statement, params)).first()
        assert self._thread is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._first_sync, statement, params)

    def _first_sync(self, statement: Executable, params: Mapping[str, object]) -> Row[Any] | None:
        assert self._sync is not None
        with self._sync.connect() as conn:
            return conn.execute(statement, params).first()

    async def dispose(self) -> None:
        """Close connections and the thread."""
        if self._sync is not None:
            self._sync.dispose()
        if self._thread is not None:
            self._thread.shutdown(wait=False)


def _drop_closed_connections(engine: AsyncEngine) -> None:
    # A server restart closes every pooled connection; asyncpg notices at once, but the pool
    # would still hand them out and the first request after the database is back would fail.
    # This check costs no round trip, unlike pool_pre_ping (BEGIN; ping; ROLLBACK) would.
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.driver_connection.is_closed():
            raise DisconnectionError("connection closed by the server")


def _configure_sqlite(engine: AsyncEngine, timeout: float) -> None:
    _sqlite_pragmas(engine.sync_engine, timeout)


def _sqlite_pragmas(engine: Engine, timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
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
