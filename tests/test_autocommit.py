"""Statements compiled once and sent straight to the driver, on SQLite and PostgreSQL:
`Autocommit` (the refresh-token swap's path, no transaction), `execute_direct` (the
sign-in's, in a session's transaction) and `Autocommit.transaction` (SQLite: a password
sign-in's write transaction, on the connection of the single statements). Their rows,
their parameters' conversions, and a driver's error raised as SQLAlchemy's, so that an
outage is still a 503."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.app import database_down
from conductor_api.db import (
    Autocommit,
    UTCDateTime,
    execute_direct,
    make_engine,
    make_session_factory,
    sqlite_utc_text,
)
from tests.conftest import end_other_backends, make_settings

WHEN = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)


def probe_table() -> Table:
    return Table(
        f"autocommit_probe_{secrets.token_hex(4)}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer, nullable=False),
        Column("label", String(20)),
        Column("at", UTCDateTime),
    )


class Probe:
    """An Autocommit on the run's database, with a table of its own holding one row."""

    def __init__(self, autocommit: Autocommit, table: Table, engine: object) -> None:
        self.autocommit = autocommit
        self.table = table
        self.engine = engine
        t = table
        self.bump = (
            update(t)
            .where(t.c.id == bindparam("p_id"))
            .values(n=t.c.n + 1, label=bindparam("p_label"), at=bindparam("p_at"))
            .returning(t.c.n, t.c.label)
        )
        self.add = insert(t).values(
            id=bindparam("p_id"), n=bindparam("p_n"), label=None, at=bindparam("p_at")
        )
        self.read = t.select().where(t.c.id == bindparam("p_id"))


@pytest.fixture
async def probe(database_url: str, tmp_path: Path) -> AsyncIterator[Probe]:
    settings = make_settings(tmp_path, database_url, database_timeout_seconds=0.5)
    engine = make_engine(settings)
    table = probe_table()
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
        await conn.execute(table.insert().values(id=1, n=1, label="start", at=WHEN))
    autocommit = Autocommit(settings, engine)
    try:
        yield Probe(autocommit, table, engine)
    finally:
        await autocommit.dispose()
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
        await engine.dispose()


async def stored(probe: Probe) -> tuple[int, str | None, datetime | None]:
    t = probe.table
    async with probe.engine.connect() as conn:  # type: ignore[attr-defined]
        row = (await conn.execute(t.select().where(t.c.id == 1))).one()
    return row.n, row.label, row.at


async def test_a_matching_row_is_updated_and_returned(probe: Probe) -> None:
    later = WHEN + timedelta(days=1, microseconds=7)
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "one", "p_at": later})
    assert row is not None
    assert tuple(row) == (2, "one")
    # Committed at once (no transaction around it), every type converted as the ORM would.
    assert await stored(probe) == (2, "one", later)


async def test_no_matching_row_is_none_and_changes_nothing(probe: Probe) -> None:
    row = await probe.autocommit.first(probe.bump, {"p_id": 2, "p_label": "x", "p_at": WHEN})
    assert row is None
    assert await stored(probe) == (1, "start", WHEN)


@pytest.mark.parametrize(
    "value",
    [
        WHEN,
        WHEN.replace(microsecond=0),  # SQLAlchemy writes ".000000"; so must the fast path
        datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(999, 1, 1, tzinfo=UTC),
        None,
    ],
)
def test_the_sqlite_fast_bind_writes_what_sqlalchemy_writes(value: datetime | None) -> None:
    # The text a direct statement stores must sort and compare with what the ORM stored.
    dialect = sqlite.dialect()
    sqlalchemys = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert sqlalchemys is not None
    assert sqlite_utc_text(value) == sqlalchemys(value)


def test_the_sqlite_fast_bind_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_utc_text(datetime(2026, 1, 1))


async def test_a_parameter_left_out_is_an_error_not_a_null(probe: Probe) -> None:
    with pytest.raises(KeyError, match="p_label"):
        await probe.autocommit.first(probe.bump, {"p_id": 1, "p_at": WHEN})
    assert await stored(probe) == (1, "start", WHEN)


async def test_sqlite_locked_past_the_timeout_is_an_outage_then_recovers(
    probe: Probe, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's file lock")
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as raised:
            await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "a", "p_at": WHEN})
        assert database_down(raised.value)
        assert isinstance(raised.value.orig, sqlite3.OperationalError)
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "b", "p_at": WHEN})
    assert row is not None
    assert tuple(row) == (2, "b")


async def test_postgres_connection_killed_is_an_outage_then_recovers(
    probe: Probe, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's backends")
    await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "a", "p_at": WHEN})
    assert await end_other_backends(database_url) >= 1
    # The pooled connection is dead: the next statement either finds out at checkout (and
    # runs on a new connection) or fails as an outage, never as a bug (a 500).
    try:
        row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "b", "p_at": WHEN})
        assert row is not None
        assert tuple(row) == (3, "b")
    except DBAPIError as error:
        assert database_down(error)
        assert error.connection_invalidated
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "c", "p_at": WHEN})
    assert row is not None
    assert row[1] == "c"
    assert (await stored(probe))[1] == "c"


# execute_direct: in the session's own transaction


async def test_direct_runs_in_the_sessions_transaction(probe: Probe) -> None:
    sessions = make_session_factory(probe.engine)  # type: ignore[arg-type]
    later = WHEN + timedelta(hours=1)
    async with sessions() as db, db.begin():
        rows = await execute_direct(db, probe.bump, {"p_id": 1, "p_label": "x", "p_at": later})
        assert rows == [(2, "x")]
        # What SQLAlchemy itself reads in that transaction sees it, converted alike.
        assert await execute_direct(db, probe.read, {"p_id": 1}) == [(1, 2, "x", later)]
        await db.rollback()
    assert await stored(probe) == (1, "start", WHEN)
    async with sessions.begin() as db:
        await execute_direct(db, probe.bump, {"p_id": 1, "p_label": "y", "p_at": later})
        await execute_direct(db, probe.add, {"p_id": 2, "p_n": 7, "p_at": WHEN})
    assert await stored(probe) == (2, "y", later)
    async with sessions() as db:
        assert await execute_direct(db, probe.read, {"p_id": 2}) == [(2, 7, None, WHEN)]


async def test_direct_constraint_violation_is_sqlalchemys_and_undone(probe: Probe) -> None:
    sessions = make_session_factory(probe.engine)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        async with sessions.begin() as db:
            await execute_direct(db, probe.bump, {"p_id": 1, "p_label": "z", "p_at": WHEN})
            await execute_direct(db, probe.add, {"p_id": 1, "p_n": 1, "p_at": WHEN})
    assert await stored(probe) == (1, "start", WHEN)


async def test_direct_postgres_connection_killed_is_an_outage_then_recovers(
    probe: Probe, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's backends")
    engine: AsyncEngine = probe.engine  # type: ignore[assignment]
    sessions = make_session_factory(engine)
    with pytest.raises(DBAPIError) as raised:
        async with sessions.begin() as db:
            await execute_direct(db, probe.read, {"p_id": 1})
            assert await end_other_backends(database_url) >= 1
            await execute_direct(db, probe.bump, {"p_id": 1, "p_label": "a", "p_at": WHEN})
    assert database_down(raised.value)
    assert raised.value.connection_invalidated
    async with sessions.begin() as db:
        rows = await execute_direct(db, probe.bump, {"p_id": 1, "p_label": "b", "p_at": WHEN})
    assert rows == [(2, "b")]
    assert await stored(probe) == (2, "b", WHEN)


async def test_simultaneous_first_statements_share_one_connection(probe: Probe) -> None:
    bumps = [
        probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": str(i), "p_at": WHEN})
        for i in range(20)
    ]
    rows = await asyncio.gather(*bumps)
    # Every one applied once and none refused, the first ones racing to open the connection.
    assert sorted(row[0] for row in rows if row is not None) == list(range(2, 22))
    assert (await stored(probe))[0] == 21


async def test_sqlite_caller_cancelled_while_waiting_leaves_no_lock(
    probe: Probe, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's file lock")
    path = database_url.removeprefix("sqlite:///")
    await probe.autocommit.first(probe.read, {"p_id": 1})  # the connection is open
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        waiting = asyncio.ensure_future(
            probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "late", "p_at": WHEN})
        )
        await asyncio.sleep(0.05)  # out on the thread, polling for the lock
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        holder.execute("ROLLBACK")
        # The cancelled statement still runs, as a whole (read to its end): it leaves no
        # transaction open, so another connection gets the write lock at once.
        deadline = asyncio.get_running_loop().time() + 2
        while (await stored(probe))[1] != "late":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "next", "p_at": WHEN})
    assert row == (3, "next")


# Autocommit.transaction: a direct write transaction on the same (SQLite) connection


def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's direct transactions")


async def test_transaction_commits_at_the_end_of_its_block(probe: Probe, database_url: str) -> None:
    sqlite_only(database_url)
    later = WHEN + timedelta(minutes=5)
    async with probe.autocommit.transaction() as tx:
        rows = await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "t", "p_at": later})
        assert rows == [(2, "t")]
        await execute_direct(tx, probe.add, {"p_id": 2, "p_n": 5, "p_at": WHEN})
        # Its own writes are visible to it, and to nobody else until the commit.
        assert await execute_direct(tx, probe.read, {"p_id": 2}) == [(2, 5, None, WHEN)]
        reader = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            every = probe.table.select().order_by(probe.table.c.id)
            rows = reader.execute(str(every.compile(dialect=sqlite.dialect()))).fetchall()
            assert [row[:3] for row in rows] == [(1, 1, "start")]
        finally:
            reader.close()
    assert await stored(probe) == (2, "t", later)
    assert await probe.autocommit.first(probe.read, {"p_id": 2}) == (2, 5, None, WHEN)


async def test_transaction_that_raises_is_rolled_back_whole(
    probe: Probe, database_url: str
) -> None:
    sqlite_only(database_url)
    with pytest.raises(IntegrityError):
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "gone", "p_at": WHEN})
            await execute_direct(tx, probe.add, {"p_id": 1, "p_n": 1, "p_at": WHEN})
    assert await stored(probe) == (1, "start", WHEN)
    # The connection is left with no transaction open: the next statement commits alone,
    # and another connection can take the write lock at once.
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "after", "p_at": WHEN})
    assert row == (2, "after")
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert await stored(probe) == (2, "after", WHEN)


async def test_statements_of_other_tasks_wait_for_the_transaction(
    probe: Probe, database_url: str
) -> None:
    sqlite_only(database_url)
    entered, release = asyncio.Event(), asyncio.Event()

    async def long_transaction() -> None:
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "tx", "p_at": WHEN})
            entered.set()
            await release.wait()
            raise RuntimeError("rolled back")

    holder = asyncio.ensure_future(long_transaction())
    await entered.wait()
    # A single statement sent meanwhile must not join the open transaction (and be rolled
    # back with it), nor commit it: it waits, and runs on its own afterwards.
    single = asyncio.ensure_future(
        probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "single", "p_at": WHEN})
    )
    other = asyncio.ensure_future(probe.autocommit.first(probe.read, {"p_id": 1}))
    await asyncio.sleep(0.05)
    assert not single.done() and not other.done()
    release.set()
    with pytest.raises(RuntimeError, match="rolled back"):
        await holder
    assert await single == (2, "single")
    assert await stored(probe) == (2, "single", WHEN)
    assert (await other) is not None


async def test_a_statement_inside_its_own_tasks_transaction_is_refused(
    probe: Probe, database_url: str
) -> None:
    sqlite_only(database_url)
    with pytest.raises(RuntimeError, match="inside this task's transaction"):
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "a", "p_at": WHEN})
            # Waiting for its own transaction would never end.
            async with asyncio.timeout(2):
                await probe.autocommit.first(probe.read, {"p_id": 1})
    assert await stored(probe) == (1, "start", WHEN)


async def test_transaction_cancelled_is_rolled_back_and_frees_the_connection(
    probe: Probe, database_url: str
) -> None:
    sqlite_only(database_url)
    entered = asyncio.Event()

    async def cancelled() -> None:
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "c", "p_at": WHEN})
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(cancelled())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored(probe) == (1, "start", WHEN)
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "next", "p_at": WHEN})
    assert row == (2, "next")


async def test_transaction_waits_for_another_connections_lock_then_an_outage(
    probe: Probe, database_url: str
) -> None:
    sqlite_only(database_url)
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        # Held past DATABASE_TIMEOUT_SECONDS (0.5 s here): the transaction never began.
        with pytest.raises(OperationalError) as raised:
            async with probe.autocommit.transaction():
                pytest.fail("began while another connection held the write lock")
        assert database_down(raised.value)

        # Released within the timeout: it waits, then begins.
        async def release_soon() -> None:
            await asyncio.sleep(0.1)
            holder.execute("ROLLBACK")

        releasing = asyncio.ensure_future(release_soon())
        async with probe.autocommit.transaction() as tx:
            rows = await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "w", "p_at": WHEN})
        await releasing
    finally:
        holder.close()
    assert rows == [(2, "w")]
    assert await stored(probe) == (2, "w", WHEN)


async def test_transaction_is_sqlites_only(probe: Probe, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's refusal")
    with pytest.raises(RuntimeError, match="SQLite's"):
        async with probe.autocommit.transaction():
            pass
