"""The counters' statements against a real database: how a take commits on PostgreSQL (a
take that is its own transaction without waiting for the WAL flush, a take inside a
transaction leaving that transaction's commit synchronous, and nothing left on the
connection for the statements after it), and an address's release (the row goes with its
last slot, and stays while it holds failures or other checks)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.auth import throttle
from conductor_api.auth.models import LoginThrottle
from conductor_api.db import Autocommit, RawPool, execute_direct, make_engine
from conductor_api.users import service as users
from conductor_api.users.models import User
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


@pytest.fixture
async def logged(
    database_url: str, tmp_path: Path, direct_engine: AsyncEngine
) -> AsyncIterator[tuple[Autocommit, list[str]]]:
    """PostgreSQL: an `Autocommit` whose statements all run on one connection, and the SQL
    of each statement sent on it."""
    postgres_only(database_url)
    pool = RawPool.for_settings(make_settings(tmp_path, database_url))
    sent: list[str] = []
    connection = await pool.acquire(5)
    connection.add_query_logger(lambda logged: sent.append(logged.query))
    # The only connection the statements find kept: they all run on it.
    pool.park(connection)
    try:
        yield Autocommit(make_settings(tmp_path, database_url), direct_engine, pool=pool), sent
    finally:
        await pool.close()


def postgres_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's synchronous_commit")


async def take(db: object, scope: str, key: str) -> throttle.Counter | None:
    claim = throttle.Claim(scope, key, 5, WINDOW if scope == throttle.IP else None)
    return await throttle.take(db, claim, NOW, ttl=TTL)  # type: ignore[arg-type]


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
    logged: tuple[Autocommit, list[str]],
) -> None:
    """A take through `Autocommit` (a transaction of its own) commits asynchronously; the
    connection it ran on, kept for the next statement (a refresh-token swap, a settlement),
    is back to synchronous commits."""
    own, sent = logged
    name = key()
    for _ in range(3):
        assert await take(own, throttle.USER, name) is not None
        # The next statement, on the same connection.
        assert await own.first(SHOW, {}) == ("on",)
    assert await stored(own, throttle.USER, name) == (0, 3)
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


# Takes in order (a sign-in's slots, with the user read beside them on PostgreSQL)

IP_CLAIM_LIMIT = 2
USER_CLAIM_LIMIT = 3


def claims(address: str, name: str) -> list[throttle.Claim]:
    return [
        throttle.Claim(throttle.IP, address, IP_CLAIM_LIMIT, WINDOW),
        throttle.Claim(throttle.USER, name, USER_CLAIM_LIMIT, None),
    ]


async def add_user_row(engine: AsyncEngine, name: str) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            insert(User).values(
                id=user_id, username=name, username_key=name, username_skeleton=name,
                password_hash="$argon2id$not-a-real-hash", is_active=True, created_at=NOW,
                password_changed_at=NOW,
            )
        )  # fmt: skip
    return user_id


async def test_takes_in_order_take_every_slot_and_read_the_user(
    database_url: str, direct: Autocommit, direct_engine: AsyncEngine
) -> None:
    address, name = key(), f"user-{secrets.token_hex(4)}"
    user_id = await add_user_row(direct_engine, name)
    for n in range(2):
        taken, row = await throttle.take_in_order(
            direct, claims(address, name), NOW, ttl=TTL, also=users.find_with(name)
        )
        # Each counter as it was before its slot was taken.
        assert [(c.failures, c.pending) for c in taken] == [(0, n), (0, n)]
        assert [c.window_started_at for c in taken] == [NOW, NOW]
        if database_url.startswith("sqlite"):
            assert row is None  # read by the caller, one statement after the other
        else:
            assert row is not None
            user = users.found(row)
            assert user is not None
            assert (user.id, user.username_key, user.created_at) == (user_id, name, NOW)
    assert await stored(direct, throttle.IP, address) == (0, 2)
    assert await stored(direct, throttle.USER, name) == (0, 2)


async def test_takes_in_order_read_no_user_as_none(database_url: str, direct: Autocommit) -> None:
    postgres_only(database_url)
    name = f"nobody-{secrets.token_hex(4)}"
    taken, row = await throttle.take_in_order(
        direct, claims(key(), name), NOW, ttl=TTL, also=users.find_with(name)
    )
    assert len(taken) == 2
    assert row is not None
    assert users.found(row) is None


async def test_a_closed_first_take_leaves_the_second_counter_alone(direct: Autocommit) -> None:
    """A blocked address never reaches the name's counter: no row made for it, nothing read."""
    address, name = key(), f"user-{secrets.token_hex(4)}"
    for _ in range(IP_CLAIM_LIMIT):
        assert await take(direct, throttle.IP, address) is not None
    taken, row = await throttle.take_in_order(
        direct, claims(address, name), NOW, ttl=TTL, also=users.find_with(name)
    )
    assert (taken, row) == ([], None)
    assert await stored(direct, throttle.IP, address) == (0, IP_CLAIM_LIMIT)
    assert await stored(direct, throttle.USER, name) is None


async def test_a_closed_second_take_keeps_the_first(direct: Autocommit) -> None:
    address, name = key(), f"user-{secrets.token_hex(4)}"
    for _ in range(USER_CLAIM_LIMIT):
        assert await take(direct, throttle.USER, name) is not None
    taken, row = await throttle.take_in_order(
        direct, claims(address, name), NOW, ttl=TTL, also=users.find_with(name)
    )
    assert [(c.failures, c.pending) for c in taken] == [(0, 0)]
    assert row is None
    assert await stored(direct, throttle.IP, address) == (0, 1)
    assert await stored(direct, throttle.USER, name) == (0, USER_CLAIM_LIMIT)


async def test_takes_in_order_restart_an_expired_window_and_lock(direct: Autocommit) -> None:
    """Each take in the chain applies its own rule: the address's window that has passed
    and the name's lock that has ended both start again."""
    address, name = key(), f"user-{secrets.token_hex(4)}"
    past = NOW - 2 * WINDOW
    async with direct.transaction() as tx:
        await throttle.add_failure(tx, throttle.IP, address, past, window=WINDOW)
        assert await take(tx, throttle.USER, name) is not None
        await throttle.fail_user(tx, name, past, max_failures=1, lockout=WINDOW)
    taken, _ = await throttle.take_in_order(direct, claims(address, name), NOW, ttl=TTL)
    assert [(c.failures, c.pending, c.locked_until) for c in taken] == [(0, 0, None)] * 2
    assert await stored(direct, throttle.IP, address) == (0, 1)
    assert await stored(direct, throttle.USER, name) == (0, 1)


async def test_takes_in_order_commit_asynchronously_on_their_own(
    logged: tuple[Autocommit, list[str]],
) -> None:
    own, sent = logged
    taken, _ = await throttle.take_in_order(own, claims(key(), "someone"), NOW, ttl=TTL)
    assert len(taken) == 2
    assert await own.first(SHOW, {}) == ("on",)
    chained = [sql for sql in sent if sql.startswith("WITH take_0")]
    assert len(chained) == 1
    assert "set_config('synchronous_commit', 'off', true)" in chained[0]


# Settlements in order (a sign-in's slots given back at its end)


def settlements(address: str, name: str, forgiven: int | None) -> list[throttle.Settlement]:
    return [
        throttle.Settlement(throttle.IP, address),
        throttle.Settlement(throttle.USER, name, forgiven, USER_CLAIM_LIMIT),
    ]


async def failed_names_slot(direct: Autocommit, name: str, failures: int) -> None:
    """`failures` failures settled on a name, then a slot of its own taken."""
    for _ in range(failures):
        assert await take(direct, throttle.USER, name) is not None
        async with direct.transaction() as tx:
            await throttle.fail_user(tx, name, NOW, max_failures=USER_CLAIM_LIMIT, lockout=WINDOW)
    assert await take(direct, throttle.USER, name) is not None


async def test_a_success_drops_the_address_and_forgives_the_name(direct: Autocommit) -> None:
    address, name = key(), f"user-{secrets.token_hex(4)}"
    await failed_names_slot(direct, name, 2)
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        # The failures settled before the slot: one of them forgiven here.
        await throttle.settle_in_order(tx, settlements(address, name, 1))
    assert await stored(direct, throttle.IP, address) is None
    assert await stored(direct, throttle.USER, name) == (1, 0)


async def test_a_release_counts_nothing_and_forgives_nothing(direct: Autocommit) -> None:
    address, name = key(), f"user-{secrets.token_hex(4)}"
    await failed_names_slot(direct, name, 2)
    for _ in range(2):
        assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.settle_in_order(tx, settlements(address, name, None))
    # The address keeps its other check in flight; the name its failures.
    assert await stored(direct, throttle.IP, address) == (0, 1)
    assert await stored(direct, throttle.USER, name) == (2, 0)


async def test_a_success_leaves_an_address_with_failures_its_row(direct: Autocommit) -> None:
    address, name = key(), f"user-{secrets.token_hex(4)}"
    await failed_names_slot(direct, name, 0)
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.fail_ip(tx, address, NOW, window=WINDOW)
    assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as tx:
        await throttle.settle_in_order(tx, settlements(address, name, 0))
    assert await stored(direct, throttle.IP, address) == (1, 0)
    assert await stored(direct, throttle.USER, name) == (0, 0)


async def test_settlements_are_one_statement_on_postgresql(
    logged: tuple[Autocommit, list[str]],
) -> None:
    own, sent = logged
    address, name = key(), f"user-{secrets.token_hex(4)}"
    for _ in range(2):
        taken, _ = await throttle.take_in_order(own, claims(address, name), NOW, ttl=TTL)
        assert len(taken) == 2
    for left in (1, None):
        await asyncio.sleep(0.05)  # asyncpg calls its query loggers soon after, not at once
        sent.clear()
        async with own.transaction() as tx:
            await throttle.settle_in_order(tx, settlements(address, name, 0))
        await asyncio.sleep(0.05)
        assert [sql.split(None, 1)[0] for sql in sent] == ["BEGIN", "WITH", "COMMIT"], sent
        expected = None if left is None else (0, left)
        assert await stored(own, throttle.IP, address) == expected
        assert await stored(own, throttle.USER, name) == (0, left or 0)


async def test_an_address_that_others_left_empty_meanwhile_is_dropped(
    database_url: str, direct: Autocommit
) -> None:
    """PostgreSQL: the other check's release commits while the settlement waits for the
    row. The DELETE saw two slots (it does not wait for a row it would not delete), the
    release that follows leaves none: a statement of its own drops the row."""
    postgres_only(database_url)
    address, name = key(), f"user-{secrets.token_hex(4)}"
    await failed_names_slot(direct, name, 0)
    for _ in range(2):
        assert await take(direct, throttle.IP, address) is not None
    async with direct.transaction() as other:
        await execute_direct(
            other, throttle._RELEASE_ROW, {"in_scope": throttle.IP, "in_key": address}
        )

        async def settle() -> None:
            async with direct.transaction() as tx:
                await throttle.settle_in_order(tx, settlements(address, name, 0))

        settling = asyncio.create_task(settle())
        await asyncio.sleep(0.3)
        assert not settling.done()  # waiting for the row `other` holds
    await asyncio.wait_for(settling, 5)
    assert await stored(direct, throttle.IP, address) is None
    assert await stored(direct, throttle.USER, name) == (0, 0)
