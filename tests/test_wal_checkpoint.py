"""SQLite's WAL is checkpointed by a thread of each server worker, never by the event loop's
connections (`sqlite_wal.WalCheckpointer`); the command line keeps SQLite's default."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from conductor_api import migrate, sqlite_wal
from conductor_api.app import create_app
from conductor_api.container import Container
from conductor_api.db import make_engine
from conductor_api.sqlite_wal import WalCheckpointer
from tests.conftest import make_settings

PAGE = 4096


def fill_wal(path: Path, rows: int) -> None:
    """`rows` pages' worth of rows, committed by a connection that never checkpoints."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS scratch (v BLOB)")
    for _ in range(rows // 50):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO scratch VALUES (randomblob(4000))", [()] * 50)
        conn.execute("COMMIT")
    # Still open, so that closing it does not checkpoint (the last connection would).
    _held.append(conn)


_held: list[sqlite3.Connection] = []


def size_reached(path: Path, size: int, seconds: float = 10.0) -> int:
    """The file's size once it reaches `size`, or after `seconds` (on a thread: the
    checkpointer works meanwhile)."""
    deadline = time.monotonic() + seconds
    while path.stat().st_size < size and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.stat().st_size


def wal_size(path: Path, down_to: int | None = None, seconds: float = 5.0) -> int:
    """The size of `path`'s WAL; with `down_to`, once it is that small, or after
    `seconds` (on a thread: the checkpointer works meanwhile)."""
    wal = Path(f"{path}-wal")
    deadline = time.monotonic() + seconds
    while down_to is not None and wal.stat().st_size > down_to and time.monotonic() < deadline:
        time.sleep(0.05)
    return wal.stat().st_size


async def wait_for_size(path: Path, size: int) -> int:
    return await asyncio.to_thread(size_reached, path, size)


def sizes(path: Path) -> tuple[int, int]:
    """The database file's size and its WAL's."""
    return path.stat().st_size, Path(f"{path}-wal").stat().st_size


async def test_the_checkpointer_copies_the_wal_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    fill_wal(path, 500)
    try:
        # Every page is in the WAL; the database file holds the schema only.
        database, wal = sizes(path)
        assert database < 10 * PAGE
        assert wal > 500 * PAGE
        checkpointer = WalCheckpointer(str(path), interval=0.05)
        checkpointer.start()
        try:
            assert await wait_for_size(path, 500 * PAGE) >= 500 * PAGE
        finally:
            await checkpointer.close()
        assert not checkpointer._thread.is_alive()
    finally:
        while _held:
            _held.pop().close()


async def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    checkpointer = WalCheckpointer(str(path), interval=0.02)
    checkpointer.start()
    await asyncio.sleep(0.2)
    await checkpointer.close()
    assert not await asyncio.to_thread(path.exists)


async def test_a_servers_connections_leave_the_wal_to_its_checkpointer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conductor.db'}"
    settings = make_settings(tmp_path, url)
    await asyncio.to_thread(migrate.upgrade, settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        container: Container = app.state.container
        assert container.checkpointer is not None
        async with container.engine.connect() as conn:
            pooled = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        # The sign-in's statements' connection (`db.Autocommit`), as it opens it.
        inline = await container.autocommit._open_sqlite()
        own = await inline.statement("PRAGMA wal_autocheckpoint", (), True)
        assert (pooled, own) == (0, [(0,)])
        # What the server commits still reaches the database file, by the thread.
        before, _ = await asyncio.to_thread(sizes, tmp_path / "conductor.db")
        async with container.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE scratch (v BLOB)"))
            for _ in range(10):
                await conn.execute(text("INSERT INTO scratch VALUES (randomblob(40000))"))
        assert await wait_for_size(tmp_path / "conductor.db", before + 100 * PAGE) > before
        thread = container.checkpointer._thread
    assert not thread.is_alive()


async def test_the_command_lines_connections_keep_sqlites_default(tmp_path: Path) -> None:
    engine = make_engine(make_settings(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}"))
    try:
        async with engine.connect() as conn:
            value = (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one()
        assert value == 1000
    finally:
        await engine.dispose()


async def test_a_wal_past_its_limit_is_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PASSIVE checkpoint copies the WAL back but leaves the file as large as it grew
    (470 MB for a 109 MB database, with the pruner and requests overlapping); past
    `WAL_LIMIT_BYTES` the checkpointer empties it, and while a reader keeps it from doing
    so (a backup), it tries again later instead of making writers wait at every tick."""
    monkeypatch.setattr(sqlite_wal, "WAL_LIMIT_BYTES", 200 * PAGE, raising=False)
    monkeypatch.setattr(sqlite_wal, "TRUNCATE_RETRY_SECONDS", 0.3, raising=False)
    path = tmp_path / "big.db"
    fill_wal(path, 500)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        # A read kept open: the WAL cannot be emptied under it.
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM scratch").fetchone()
        checkpointer = WalCheckpointer(str(path), interval=0.02)
        checkpointer.start()
        try:
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(wal_size, path) > 500 * PAGE
            # Writers are not held up while the reader stays.
            writer = sqlite3.connect(path, isolation_level=None, timeout=0)
            for _ in range(20):
                writer.execute("INSERT INTO scratch VALUES (x'00')")
                await asyncio.sleep(0.01)
            writer.close()
            reader.execute("COMMIT")
            assert await asyncio.to_thread(wal_size, path, 0) == 0
        finally:
            await checkpointer.close()
        # Nothing was lost on the way.
        check = sqlite3.connect(path)
        assert check.execute("SELECT count(*) FROM scratch").fetchone()[0] == 500 + 20
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        check.close()
    finally:
        reader.close()
        while _held:
            _held.pop().close()
