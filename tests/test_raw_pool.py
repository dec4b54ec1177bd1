"""`db.RawPool` keeps a connection whose statement succeeded for the next statement, and
never at the cost of a caller waiting for one, of a lost connection, or of closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from conductor_api.db import RawPool, fetch_bounded
from tests.conftest import create_pg_database, drop_pg_database, end_other_backends, pg_url

BOUND = 2.0


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = create_pg_database()
    yield pg_url(name)
    drop_pg_database(name)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[RawPool]:
    raw = RawPool(database, BOUND, max_size=2)
    yield raw
    await asyncio.wait_for(raw.close(), BOUND)


@pytest.fixture
def acquired(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One entry per connection taken from asyncpg's own pool."""
    taken: list[None] = []
    acquire = asyncpg.Pool.acquire

    def spy(self: asyncpg.Pool, *args: Any, **kwargs: Any) -> Any:
        taken.append(None)
        return acquire(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Pool, "acquire", spy)
    return taken


async def backend(pool: RawPool) -> int:
    rows = await fetch_bounded(pool, "SELECT pg_backend_pid()", bound=BOUND)
    return int(rows[0][0])


async def test_statements_one_after_another_keep_one_connection(
    pool: RawPool, acquired: list[None]
) -> None:
    pids = {await backend(pool) for _ in range(5)}
    assert len(pids) == 1
    # Only the first statement went to asyncpg's pool; the others took the kept connection.
    assert len(acquired) == 1


async def test_callers_waiting_for_a_connection_are_served(pool: RawPool) -> None:
    # Ten at once on two connections: those waiting in asyncpg's pool get the connections
    # as the statements before them finish, rather than seeing them kept.
    sleeps = [
        fetch_bounded(pool, "SELECT pg_sleep(0.02), $1::int", i, bound=BOUND) for i in range(10)
    ]
    rows = await asyncio.wait_for(asyncio.gather(*sleeps), 5 * BOUND)
    assert sorted(row[0][1] for row in rows) == list(range(10))
    assert len({await backend(pool) for _ in range(3)}) == 1


async def test_a_kept_connection_the_server_ended_is_replaced(pool: RawPool, database: str) -> None:
    first = await backend(pool)
    assert await end_other_backends(database) == 1
    await asyncio.sleep(0.2)  # asyncpg sees the connection close
    assert await backend(pool) != first


async def test_a_failed_statement_gives_its_connection_back(
    pool: RawPool, acquired: list[None]
) -> None:
    await backend(pool)
    with pytest.raises(asyncpg.UndefinedTableError):
        await fetch_bounded(pool, "SELECT * FROM no_such_table", bound=BOUND)
    # The connection went back to asyncpg's pool: the next statement takes it from there.
    await backend(pool)
    assert len(acquired) == 2


async def test_closing_waits_for_a_statement_out_and_takes_its_connection_back(
    database: str,
) -> None:
    raw = RawPool(database, BOUND, max_size=2)
    await backend(raw)  # one connection kept
    out = asyncio.ensure_future(fetch_bounded(raw, "SELECT pg_sleep(0.3)", bound=BOUND))
    await asyncio.sleep(0.1)  # the statement is out when the pool closes
    await asyncio.wait_for(raw.close(), BOUND)
    assert (await out)[0][0] is None  # pg_sleep returns void
