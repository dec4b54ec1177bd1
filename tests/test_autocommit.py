"""Statements compiled once and sent straight to the driver, on SQLite and PostgreSQL:
`Autocommit` (the refresh-token swap's path, no transaction), `execute_direct` (the
sign-in's, in a session's transaction) and `Autocommit.transaction` (a password sign-in's
write transaction, with no ORM session: on SQLite on the connection of the single
statements, on PostgreSQL on a connection of their pool). Their rows, their parameters'
conversions, and a driver's error raised as SQLAlchemy's, so that an outage is still a
503."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.app import database_down
from conductor_api.db import (
    PG_TRANSACTIONS,
    Autocommit,
    UTCDateTime,
    execute_direct,
    insert_later,
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


@asynccontextmanager
async def side_table(probe: Probe, table: Table, *rows: dict[str, Any]) -> AsyncIterator[Table]:
    """`table`, holding `rows`, on the probe's database for the block; dropped after."""
    async with probe.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.run_sync(table.metadata.create_all)
        for row in rows:
            await conn.execute(table.insert().values(**row))
    try:
        yield table
    finally:
        async with probe.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.run_sync(table.metadata.drop_all)


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


# Autocommit.transaction: a direct write transaction (SQLite: on the same connection;
# PostgreSQL: on a connection of the pool)


def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's single connection")


async def others_see(probe: Probe, database_url: str) -> list[tuple[int, int, str | None]]:
    """The table's rows as another connection sees them (the engine's, on PostgreSQL; on
    SQLite a plain reader, the engine's connections taking the write lock to begin)."""
    every = probe.table.select().order_by(probe.table.c.id)
    if database_url.startswith("sqlite"):
        reader = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            rows = reader.execute(str(every.compile(dialect=sqlite.dialect()))).fetchall()
        finally:
            reader.close()
        return [tuple(row[:3]) for row in rows]
    async with probe.engine.connect() as conn:  # type: ignore[attr-defined]
        return [(row.id, row.n, row.label) for row in await conn.execute(every)]


async def idle_in_transaction(database_url: str) -> int:
    """Connections to the run's PostgreSQL database left inside a transaction."""
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        count: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        )
    finally:
        await admin.close()
    return count


async def test_transaction_commits_at_the_end_of_its_block(probe: Probe, database_url: str) -> None:
    later = WHEN + timedelta(minutes=5)
    async with probe.autocommit.transaction() as tx:
        rows = await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "t", "p_at": later})
        assert rows == [(2, "t")]
        await execute_direct(tx, probe.add, {"p_id": 2, "p_n": 5, "p_at": WHEN})
        # Its own writes are visible to it, and to nobody else until the commit.
        assert await execute_direct(tx, probe.read, {"p_id": 2}) == [(2, 5, None, WHEN)]
        assert await others_see(probe, database_url) == [(1, 1, "start")]
    assert await stored(probe) == (2, "t", later)
    assert await probe.autocommit.first(probe.read, {"p_id": 2}) == (2, 5, None, WHEN)


async def test_transaction_that_raises_is_rolled_back_whole(
    probe: Probe, database_url: str
) -> None:
    with pytest.raises(IntegrityError):
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "gone", "p_at": WHEN})
            await execute_direct(tx, probe.add, {"p_id": 1, "p_n": 1, "p_at": WHEN})
    assert await stored(probe) == (1, "start", WHEN)
    # The connection is left with no transaction open: the next statement commits alone,
    # and another connection can take the write lock (the row's lock) at once.
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "after", "p_at": WHEN})
    assert row == (2, "after")
    if database_url.startswith("sqlite"):
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            holder.execute("ROLLBACK")
        finally:
            holder.close()
    else:
        assert await idle_in_transaction(database_url) == 0
    assert await stored(probe) == (2, "after", WHEN)


async def test_other_tasks_never_join_the_transaction(probe: Probe, database_url: str) -> None:
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
    # back with it), nor commit it: on SQLite it waits for the transaction, on PostgreSQL
    # it runs on another connection, where the row's lock makes a write wait too.
    single = asyncio.ensure_future(
        probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "single", "p_at": WHEN})
    )
    other = asyncio.ensure_future(probe.autocommit.first(probe.read, {"p_id": 1}))
    await asyncio.sleep(0.05)
    assert not single.done()
    if database_url.startswith("sqlite"):
        assert not other.done()
    else:
        # A read does not wait, and sees nothing of the open transaction.
        assert await other == (1, 1, "start", WHEN)
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
    # On PostgreSQL, a row lock left behind would make this wait past the 0.5 s timeout.
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "next", "p_at": WHEN})
    assert row == (2, "next")
    if not database_url.startswith("sqlite"):
        assert await idle_in_transaction(database_url) == 0


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


async def test_transaction_on_a_statement_past_the_timeout_closes_its_connection(
    probe: Probe, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's statement timeout")
    slow = text("SELECT pg_sleep(5)")
    with pytest.raises(TimeoutError) as raised:
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "slow", "p_at": WHEN})
            # DATABASE_TIMEOUT_SECONDS is 0.5 s here: an outage (a 503), not a wait.
            await execute_direct(tx, slow, {})
    assert database_down(raised.value)
    # Neither committed nor left holding the row: the connection was closed, and the
    # server rolled its transaction back.
    assert await stored(probe) == (1, "start", WHEN)
    row = await probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "then", "p_at": WHEN})
    assert row == (2, "then")
    assert await idle_in_transaction(database_url) == 0


async def test_transaction_on_a_lost_server_is_an_outage_then_recovers(
    probe: Probe, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's backends")
    with pytest.raises(DBAPIError) as raised:
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "lost", "p_at": WHEN})
            assert await end_other_backends(database_url) >= 1
            await execute_direct(tx, probe.read, {"p_id": 1})
    assert database_down(raised.value)
    # The test's own engine lost its pooled connection too: read on a fresh one.
    await probe.engine.dispose()  # type: ignore[attr-defined]
    assert await stored(probe) == (1, "start", WHEN)
    async with probe.autocommit.transaction() as tx:
        rows = await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "back", "p_at": WHEN})
    assert rows == [(2, "back")]


async def test_transactions_leave_connections_to_the_single_statements(
    probe: Probe, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's pool")
    # As many transactions as may be open at once, each holding its connection...
    release = asyncio.Event()
    entered = [asyncio.Event() for _ in range(PG_TRANSACTIONS)]

    async def holding(i: int) -> None:
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.read, {"p_id": 1})
            entered[i].set()
            await release.wait()

    holders = [asyncio.ensure_future(holding(i)) for i in range(PG_TRANSACTIONS)]
    for event in entered:
        await event.wait()
    # ...one more waits for a place, no longer than a statement may take (0.5 s here): an
    # outage, not a wait without end...
    with pytest.raises(TimeoutError):
        async with probe.autocommit.transaction():
            pytest.fail("a transaction beyond PG_TRANSACTIONS began")
    waiting = asyncio.ensure_future(
        probe.autocommit.first(probe.bump, {"p_id": 1, "p_label": "single", "p_at": WHEN})
    )
    # ...while single statements still find connections, several at once.
    reads = [probe.autocommit.first(probe.read, {"p_id": 1}) for _ in range(4)]
    async with asyncio.timeout(2):
        assert all(row is not None for row in await asyncio.gather(*reads))
        assert await waiting == (2, "single")

    async def after() -> list[tuple[Any, ...]]:
        async with probe.autocommit.transaction() as tx:
            return await execute_direct(tx, probe.read, {"p_id": 1})

    later = asyncio.ensure_future(after())
    await asyncio.sleep(0.05)
    assert not later.done()
    release.set()
    await asyncio.gather(*holders)
    assert await later == [(1, 2, "single", WHEN)]


# insert_later: inserts queued in a direct PostgreSQL transaction, sent as one statement
# before the next one or the commit (SQLite, and anything else, runs them at once)


async def test_queued_inserts_keep_each_rows_own_values(probe: Probe, database_url: str) -> None:
    def at(i: int) -> datetime:
        return WHEN + timedelta(seconds=i)

    async with probe.autocommit.transaction() as tx:
        for i in (2, 3, 4):
            await insert_later(tx, probe.add, {"p_id": i, "p_n": 10 * i, "p_at": at(i)})
        # The next statement sees every row queued before it.
        assert await execute_direct(tx, probe.read, {"p_id": 3}) == [(3, 30, None, at(3))]
        assert await execute_direct(tx, probe.read, {"p_id": 4}) == [(4, 40, None, at(4))]
        await insert_later(tx, probe.add, {"p_id": 5, "p_n": 50, "p_at": at(5)})
        await insert_later(tx, probe.add, {"p_id": 6, "p_n": 60, "p_at": None})
    # The commit sent the last two.
    assert await others_see(probe, database_url) == [
        (1, 1, "start"), (2, 20, None), (3, 30, None), (4, 40, None), (5, 50, None),
        (6, 60, None),
    ]  # fmt: skip
    assert await probe.autocommit.first(probe.read, {"p_id": 2}) == (2, 20, None, at(2))
    assert await probe.autocommit.first(probe.read, {"p_id": 5}) == (5, 50, None, at(5))
    assert await probe.autocommit.first(probe.read, {"p_id": 6}) == (6, 60, None, None)


async def test_a_queued_insert_that_fails_rolls_the_transaction_back(
    probe: Probe, database_url: str
) -> None:
    with pytest.raises(IntegrityError):
        async with probe.autocommit.transaction() as tx:
            await execute_direct(tx, probe.bump, {"p_id": 1, "p_label": "q", "p_at": WHEN})
            await insert_later(tx, probe.add, {"p_id": 2, "p_n": 2, "p_at": WHEN})
            # The key is taken: on PostgreSQL the error comes with the commit's statement.
            await insert_later(tx, probe.add, {"p_id": 1, "p_n": 9, "p_at": WHEN})
    assert await others_see(probe, database_url) == [(1, 1, "start")]
    if not database_url.startswith("sqlite"):
        assert await idle_in_transaction(database_url) == 0


async def test_outside_a_direct_transaction_an_insert_is_not_queued(probe: Probe) -> None:
    await insert_later(probe.autocommit, probe.add, {"p_id": 2, "p_n": 2, "p_at": WHEN})
    assert await probe.autocommit.first(probe.read, {"p_id": 2}) == (2, 2, None, WHEN)


async def test_only_inserts_that_return_nothing_are_queued(probe: Probe, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's queue")
    async with probe.autocommit.transaction() as tx:
        with pytest.raises(ValueError, match="only inserts"):
            tx.queue(probe.bump, {"p_id": 1, "p_label": "no", "p_at": WHEN})
        with pytest.raises(ValueError, match="only inserts"):
            tx.queue(probe.add.returning(probe.table.c.id), {"p_id": 2, "p_n": 2, "p_at": WHEN})
        # Nor one with a WITH of its own: PostgreSQL takes a WITH that modifies data only at
        # the top of a statement, and a queued insert becomes a CTE of the next one.
        first = select(bindparam("p_id", type_=Integer).label("id")).cte("first")
        insert_with = insert(probe.table).from_select(["id", "n"], select(first.c.id, first.c.id))
        with pytest.raises(ValueError, match="only inserts"):
            tx.queue(insert_with, {"p_id": 2})
    assert await others_see(probe, database_url) == [(1, 1, "start")]


async def test_a_statement_on_other_tables_carries_the_queued_inserts(
    probe: Probe, database_url: str
) -> None:
    row = {"id": 1, "n": 100, "label": "other", "at": WHEN}
    async with side_table(probe, probe_table(), row) as other:
        bump_other = (
            update(other)
            .where(other.c.id == bindparam("p_id"))
            .values(n=other.c.n + bindparam("p_by"))
            .returning(other.c.n)
        )
        async with probe.autocommit.transaction() as tx:
            await insert_later(tx, probe.add, {"p_id": 2, "p_n": 20, "p_at": WHEN})
            await insert_later(tx, probe.add, {"p_id": 3, "p_n": 30, "p_at": None})
            # Sent with the two inserts as one statement on PostgreSQL: its own rows come
            # back, with its own parameters.
            assert await execute_direct(tx, bump_other, {"p_id": 1, "p_by": 5}) == [(105,)]
            assert await execute_direct(tx, probe.read, {"p_id": 3}) == [(3, 30, None, None)]
        assert await others_see(probe, database_url) == [
            (1, 1, "start"), (2, 20, None), (3, 30, None),
        ]  # fmt: skip
        with pytest.raises(IntegrityError):
            async with probe.autocommit.transaction() as tx:
                await insert_later(tx, probe.add, {"p_id": 2, "p_n": 9, "p_at": WHEN})
                await execute_direct(tx, bump_other, {"p_id": 1, "p_by": 1000})
        async with probe.engine.connect() as conn:  # type: ignore[attr-defined]
            assert (await conn.execute(other.select())).all() == [(1, 105, "other", WHEN)]


async def test_a_statement_with_its_own_with_carries_the_queued_inserts(
    probe: Probe, database_url: str
) -> None:
    # The limits' settlement, a sign-in's last statement, is such a statement: the
    # session's inserts queued before it go with it, one round trip rather than two.
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's queue")
    stamped = Table(
        f"autocommit_stamped_{secrets.token_hex(4)}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        # When the statement that inserted the row began: one statement, one value.
        Column("stamp", DateTime(timezone=True), server_default=text("statement_timestamp()")),
    )
    t = probe.table
    bumped = (
        update(t).where(t.c.id == bindparam("p_id")).values(n=t.c.n + 1).returning(t.c.n)
    ).cte("bumped")
    bump_with = select(bumped.c.n, func.statement_timestamp())
    async with side_table(probe, stamped):
        async with probe.autocommit.transaction() as tx:
            await insert_later(tx, insert(stamped).values(id=bindparam("p_id")), {"p_id": 7})
            await insert_later(tx, insert(stamped).values(id=bindparam("p_id")), {"p_id": 8})
            [(n, began)] = await execute_direct(tx, bump_with, {"p_id": 1})
            assert n == 2
            rows = await execute_direct(tx, select(stamped.c.id, stamped.c.stamp), {})
        assert sorted(rows) == [(7, began), (8, began)]
        assert await others_see(probe, database_url) == [(1, 2, "start")]
