"""`InlineSqlite`: SQLite calls run on the event loop's thread, and only a call that must
wait for another connection's write lock goes to aiosqlite's thread, which waits for it up
to DATABASE_TIMEOUT_SECONDS while the event loop keeps serving."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.app import database_down
from conductor_api.db import InlineSqlite, make_engine
from tests.conftest import make_settings


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite:///{tmp_path / 'inline.db'}"
    engine = make_engine(make_settings(tmp_path, url, database_timeout_seconds=1.0))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        await conn.execute(text("INSERT INTO t VALUES (1, 'a')"))
    yield engine
    await engine.dispose()


def db_file(engine: AsyncEngine) -> str:
    database = engine.url.database
    assert database is not None
    return database


async def thread_of_calls(engine: AsyncEngine) -> tuple[int, int]:
    """The thread a SQL function runs on inside a transaction, and the busy timeout."""
    async with engine.begin() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, InlineSqlite)
        await raw.driver_connection.create_function("tid", 0, threading.get_ident)
        tid = (await conn.execute(text("SELECT tid()"))).scalar_one()
        busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
    return tid, busy


async def test_calls_run_on_the_event_loops_thread(engine: AsyncEngine) -> None:
    tid, busy = await thread_of_calls(engine)
    assert tid == threading.get_ident()
    assert busy == 0


async def test_a_held_write_lock_is_waited_for_off_the_event_loop(engine: AsyncEngine) -> None:
    holder = sqlite3.connect(db_file(engine), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    released_at = 0.0

    def release() -> None:
        nonlocal released_at
        released_at = time.monotonic()
        holder.execute("COMMIT")

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    asyncio.get_running_loop().call_later(0.3, release)
    try:
        async with engine.begin() as conn:
            # Runs once the lock is free: the transaction waited for it.
            await conn.execute(text("UPDATE t SET v = 'b' WHERE id = 1"))
            got_lock_at = time.monotonic()
    finally:
        ticker.cancel()
        holder.close()
    assert released_at and got_lock_at >= released_at
    # The event loop kept running while the transaction waited (about 30 ticks).
    assert ticks >= 10
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT v FROM t"))).scalar_one() == "b"
    # Back inline once the wait is over, the busy timeout still zero.
    assert await thread_of_calls(engine) == (threading.get_ident(), 0)


async def test_a_lock_held_past_the_timeout_is_an_outage(engine: AsyncEngine) -> None:
    holder = sqlite3.connect(db_file(engine), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE t SET v = 'c' WHERE id = 1"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # DATABASE_TIMEOUT_SECONDS (1 s here) of waiting, then a 503 for the client.
    assert time.monotonic() - started >= 0.9
    assert database_down(raised.value)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE t SET v = 'd' WHERE id = 1"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT v FROM t"))).scalar_one() == "d"


async def test_calls_queued_behind_a_waiting_one_keep_their_own_deadline(
    engine: AsyncEngine,
) -> None:
    """Calls made while one waits for the lock queue behind it on the thread: each fails
    DATABASE_TIMEOUT_SECONDS (1 s) after it was made, not a whole timeout after the one
    before it (20 requests on one connection once took 5, 10, ... 100 s)."""
    connection = InlineSqlite.connect(db_file(engine), timeout=1.0, isolation_level=None)
    await connection
    holder = sqlite3.connect(db_file(engine), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()

    async def write(i: int) -> float:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await connection.statement("INSERT INTO t (v) VALUES (?)", (str(i),), False)
        return time.monotonic() - started

    try:
        ended = await asyncio.gather(*(write(i) for i in range(4)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert all(0.9 <= seconds < 1.6 for seconds in ended), ended
    # The lock free again, the connection writes as before.
    await connection.statement("INSERT INTO t (v) VALUES ('after')", (), False)
    await connection.close()


async def test_the_pruners_engine_waits_on_a_thread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'threaded.db'}"
    engine = make_engine(make_settings(tmp_path, url, database_timeout_seconds=1.0), inline=False)
    try:
        async with engine.begin() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            assert not isinstance(driver, InlineSqlite)
            await driver.create_function("tid", 0, threading.get_ident)
            tid = (await conn.execute(text("SELECT tid()"))).scalar_one()
            busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one()
    finally:
        await engine.dispose()
    assert tid != threading.get_ident()
    assert busy == 1000
