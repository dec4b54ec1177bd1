"""The counters' statements against a real database: how a take commits on PostgreSQL (a
take that is its own transaction without waiting for the WAL flush, a take inside a
transaction leaving that transaction's commit synchronous, and nothing left on the
connection for the statements after it), and an address's release (the row goes with its
last slot, and stays while it holds failures or other checks)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.auth import throttle
from conductor_api.auth.models import LoginThrottle
from conductor_api.db import Autocommit, RawPool, execute_direct, make_engine
from tests.conftest import make_settings

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)
WINDOW = timedelta(minutes=15)
SHOW = select(func.current_setting("synchronous_commit"))
T = LoginThrottle.__table__.c
COUNTER = select(T.failures, T.pending).where(
    T.scope == bindparam("in_scope"), T.key == bindparam("in_key")
)


@pytest.fixture
async def direct_engine(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(make_settings(tmp_path, database_url))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def direct(
    database_url: str, tmp_path: Path, direct_engine: AsyncEngine
) -> AsyncIterator[Autocommit]:
    autocommit = Autocommit(make_settings(tmp_path, database_url), direct_engine)
    try:
        yield autocommit
    finally:
        await autocommit.dispose()


def postgres_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's synchronous_commit")


async def take(db: object, scope: str, key: str) -> throttle.Counter | None:
    return await throttle.take(
        db,  # type: ignore[arg-type]
        scope, key, NOW, limit=5, window=WINDOW if scope == throttle.IP else None, ttl=TTL,
    )  # fmt: skip


async def stored(direct: Autocommit, scope: str, key: str) -> tuple[int, int] | None:
    """(failures, pending) of a counter, None when there is no row."""
    row = await direct.first(COUNTER, {"in_scope": scope, "in_key": key})
    return None if row is None else (row[0], row[1])


def key() -> str:
    return f"198.51.100.{secrets.randbelow(250)}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("windowed", [False, True])
async def test_a_take_of_its_own_turns_off_its_transactions_synchronous_commit(
    database_url: str, direct: Autocommit, windowed: bool
) -> None:
    """The statement itself does it (set_config, local to its transaction): run inside an
    explicit transaction here so that the setting can be read after it, it reads off
    there, and on in the next transaction."""
    postgres_only(database_url)
    params = {
        "in_scope": throttle.IP if windowed else throttle.USER, "in_key": key(), "limit": 5,
        "slots_until": NOW + TTL, "now": NOW, "cutoff": NOW - WINDOW,
    }  # fmt: skip
    if not windowed:
        del params["cutoff"]
    async with direct.transaction() as tx:
        assert await execute_direct(tx, SHOW, {}) == [("on",)]
        rows = await execute_direct(tx, throttle._take("postgresql", windowed, True), params)
        assert len(rows) == 1
        assert await execute_direct(tx, SHOW, {}) == [("off",)]
    assert await direct.first(SHOW, {}) == ("on",)
    assert await stored(direct, str(params["in_scope"]), str(params["in_key"])) == (0, 1)


async def test_a_take_on_its_own_leaves_the_connection_synchronous(
    database_url: str, tmp_path: Path, direct_engine: AsyncEngine
) -> None:
    """A take through `Autocommit` (a transaction of its own) commits asynchronously; the
    connection it ran on, kept for the next statement (a refresh-token swap, a settlement),
    is back to synchronous commits."""
    postgres_only(database_url)
    pool = RawPool.for_settings(make_settings(tmp_path, database_url))
    sent: list[str] = []
    connection = await pool.acquire(5)
    connection.add_query_logger(lambda logged: sent.append(logged.query))
    # The only connection the statements below find kept: they all run on it.
    pool.park(connection)
    own = Autocommit(make_settings(tmp_path, database_url), engine=direct_engine, pool=pool)
    name = key()
    try:
        for _ in range(3):
            assert await take(own, throttle.USER, name) is not None
            # The next statement, on the same connection.
            assert await own.first(SHOW, {}) == ("on",)
        assert await stored(own, throttle.USER, name) == (0, 3)
    finally:
        await pool.close()
    takes = [sql for sql in sent if sql.startswith("INSERT INTO login_throttles")]
    assert len(takes) == 3
    assert all("set_config('synchronous_commit', 'off', true)" in sql for sql in takes)


async def test_a_take_inside_a_transaction_leaves_its_commit_synchronous(
    database_url: str, direct: Autocommit
) -> None:
    postgres_only(database_url)
    name = key()
    async with direct.transaction() as tx:
        assert await take(tx, throttle.USER, name) is not None
        assert await execute_direct(tx, SHOW, {}) == [("on",)]
    assert await stored(direct, throttle.USER, name) == (0, 1)


async def test_a_take_inside_a_transaction_is_undone_with_it(
    database_url: str, direct: Autocommit
) -> None:
    postgres_only(database_url)
    name = key()
    with pytest.raises(RuntimeError):
        async with direct.transaction() as tx:
            assert await take(tx, throttle.USER, name) is not None
            raise RuntimeError("abandoned")
    assert await stored(direct, throttle.USER, name) is None


async def test_the_last_slot_of_an_address_takes_its_row_with_it(direct: Autocommit) -> None:
    address = key()
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.release_ip(tx, address)
    assert await stored(direct, throttle.IP, address) is None


async def test_an_address_with_another_check_in_flight_keeps_its_row(direct: Autocommit) -> None:
    address = key()
    assert await take(direct, throttle.IP, address) is not None
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.release_ip(tx, address)
    assert await stored(direct, throttle.IP, address) == (0, 1)
    async with direct.transaction() as tx:
        await throttle.release_ip(tx, address)
    assert await stored(direct, throttle.IP, address) is None


async def test_an_address_with_failures_keeps_its_row(direct: Autocommit) -> None:
    address = key()
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.fail_ip(tx, address, NOW, window=WINDOW)
    assert await take(direct, throttle.IP, address) is not None
    assert await stored(direct, throttle.IP, address) == (1, 1)
    async with direct.transaction() as tx:
        await throttle.release_ip(tx, address)
    assert await stored(direct, throttle.IP, address) == (1, 0)
