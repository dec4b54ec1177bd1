"""The refresh-token swap on PostgreSQL: refreshes that arrive while a swap is out share the
next statement, a session at most once in it, each swap still applying only to its own
current token; a statement the database does not answer fails the swaps waiting behind it
too; a batch that loses a deadlock is sent again.

PostgreSQL only (SQLite's swap is one statement per refresh); the database is a real one
of this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.sessions.rotation import PostgresRotations, Swap
from tests.auth.test_refresh import assert_error, digest, refresh
from tests.conftest import Account, migrated_pg_database, session_row, tokens

# A swap's `started_after` that every session of these tests passes.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated PostgreSQL database for this module (no SQLite variant)."""
    with migrated_pg_database(tmp_path_factory.mktemp("pg")) as url:
        yield url


class Spy:
    """Records the sessions of each statement the swaps send; while `gate` is clear, a
    statement waits before it reaches the database, holding its place in flight."""

    def __init__(self, rotations: PostgresRotations) -> None:
        self.arrived = 0
        self.arrival = asyncio.Event()
        self.batches: list[list[uuid.UUID]] = []
        self.sent = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        # Raised by the next statement once through the gate, instead of reaching the
        # database (a database that does not answer: TimeoutError).
        self.error: BaseException | None = None
        apply: Callable[[list[Swap]], Awaitable[set[uuid.UUID]]] = rotations._apply

        async def spied(swaps: list[Swap]) -> set[uuid.UUID]:
            self.batches.append(sorted(s.session_id for s in swaps))
            self.sent.set()
            await self.gate.wait()
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            return await apply(swaps)

        original: Callable[[Swap], Awaitable[bool]] = rotations.swap

        async def counted(swap: Swap) -> bool:
            self.arrived += 1
            self.arrival.set()
            return await original(swap)

        rotations._apply = spied  # type: ignore[method-assign]
        rotations.swap = counted  # type: ignore[method-assign]

    async def held(self, first: Awaitable[httpx.Response]) -> asyncio.Task[httpx.Response]:
        """`first` started, its statement out and held at the gate (what was sent before
        is forgotten)."""
        self.batches.clear()
        self.sent.clear()
        self.gate.clear()
        task = asyncio.ensure_future(first)
        await self.sent.wait()
        return task

    async def release(self, *later: Awaitable[httpx.Response]) -> list[httpx.Response]:
        """`later` started while the first statement is held; then every answer."""
        tasks = [asyncio.ensure_future(r) for r in later]
        async with asyncio.timeout(10):
            while self.arrived < 1 + len(later):
                self.arrival.clear()
                await self.arrival.wait()
        assert len(self.batches) == 1, "the later swaps must wait for the one out"
        self.gate.set()
        return list(await asyncio.gather(*tasks))


@pytest.fixture
def rotations(container: Container) -> PostgresRotations:
    assert isinstance(container.rotations, PostgresRotations)
    return container.rotations


@pytest.fixture
def spy(rotations: PostgresRotations) -> Spy:
    return Spy(rotations)


@pytest.fixture
async def pairs(client: httpx.AsyncClient, alice: Account) -> list[dict[str, str]]:
    """Three sessions of alice, each with its token pair."""
    return [await tokens(client, fingerprint=f"phone-{i}") for i in range(3)]


def ids(*pairs: dict[str, str]) -> list[uuid.UUID]:
    return sorted(uuid.UUID(p["session_id"]) for p in pairs)


async def test_refreshes_that_arrive_while_a_swap_is_out_share_the_next_one(
    client: httpx.AsyncClient, container: Container, spy: Spy, pairs: list[dict[str, str]]
) -> None:
    first = await spy.held(refresh(client, pairs[0]["refresh_token"]))
    later = await spy.release(*(refresh(client, p["refresh_token"]) for p in pairs[1:]))
    responses = [await first, *later]

    assert spy.batches == [ids(pairs[0]), ids(*pairs[1:])]
    for pair, response in zip(pairs, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["session_id"] == pair["session_id"]
        row = await session_row(container, pair["session_id"])
        assert row.refresh_token_hash == digest(body["refresh_token"])
        assert row.previous_token_hash == digest(pair["refresh_token"])
        assert row.generation == 1
        assert row.rotated_at == container.clock.now()


async def test_a_session_twice_goes_in_the_statement_after(
    client: httpx.AsyncClient, container: Container, spy: Spy, pairs: list[dict[str, str]]
) -> None:
    first = await spy.held(refresh(client, pairs[0]["refresh_token"]))
    twice = pairs[2]["refresh_token"]
    later = await spy.release(
        refresh(client, pairs[1]["refresh_token"]), refresh(client, twice), refresh(client, twice)
    )

    # The second copy of one token waits for the statement after its first: by then its
    # token is spent, and the grace window gives it the same child.
    assert spy.batches == [ids(pairs[0]), ids(pairs[1], pairs[2]), ids(pairs[2])]
    assert (await first).status_code == 200
    assert [r.status_code for r in later] == [200, 200, 200], [r.text for r in later]
    assert later[1].json()["refresh_token"] == later[2].json()["refresh_token"]
    row = await session_row(container, pairs[2]["session_id"])
    assert row.generation == 1
    assert row.refresh_token_hash == digest(later[1].json()["refresh_token"])


async def test_a_spent_token_in_a_batch_revokes_only_its_own_session(
    client: httpx.AsyncClient,
    container: Container,
    spy: Spy,
    pairs: list[dict[str, str]],
    clock: FrozenClock,
) -> None:
    assert (await refresh(client, pairs[1]["refresh_token"])).status_code == 200
    clock.advance(minutes=1)  # past the grace window
    first = await spy.held(refresh(client, pairs[0]["refresh_token"]))
    fresh, reused = await spy.release(
        refresh(client, pairs[2]["refresh_token"]), refresh(client, pairs[1]["refresh_token"])
    )

    assert spy.batches[1] == ids(pairs[1], pairs[2])
    assert (await first).status_code == 200
    assert fresh.status_code == 200, fresh.text
    assert_error(reused, 401, "refresh_token_reused")
    assert (await session_row(container, pairs[1]["session_id"])).revoked_at == clock.now()
    kept = await session_row(container, pairs[2]["session_id"])
    assert kept.revoked_at is None
    assert kept.refresh_token_hash == digest(fresh.json()["refresh_token"])


async def test_swaps_waiting_behind_a_statement_with_no_answer_are_answered_with_it(
    client: httpx.AsyncClient, container: Container, spy: Spy, pairs: list[dict[str, str]]
) -> None:
    spy.error = TimeoutError()
    first = await spy.held(refresh(client, pairs[0]["refresh_token"]))
    async with asyncio.timeout(10):  # a swap left waiting would never be answered
        later = await spy.release(*(refresh(client, p["refresh_token"]) for p in pairs[1:]))

    # Those that waited behind the statement waited for the database as long as it may
    # take: they are answered with it, without a statement (and a timeout) of their own.
    assert spy.batches == [ids(pairs[0])]
    for response in [await first, *later]:
        assert_error(response, 503, "service_unavailable")
    for pair in pairs:
        row = await session_row(container, pair["session_id"])
        assert row.generation == 0
        assert row.refresh_token_hash == digest(pair["refresh_token"])
        assert row.revoked_at is None
    # The tokens are still good once the database answers again.
    answered = await refresh(client, pairs[1]["refresh_token"])
    assert answered.status_code == 200, answered.text
    assert spy.batches[-1] == ids(pairs[1])


async def test_a_batch_that_loses_a_deadlock_is_sent_again(
    container: Container,
    rotations: PostgresRotations,
    alice: Account,
    pairs: list[dict[str, str]],
    database_url: str,
) -> None:
    first, last = ids(pairs[0], pairs[1])
    now = container.clock.now()
    swaps = []
    for sid in (first, last):
        row = await session_row(container, str(sid))
        child = f"{sid.hex:0>64}"
        swaps.append(Swap(sid, alice.id, row.refresh_token_hash, child, now, now, LONG_AGO))
    other = await asyncpg.connect(database_url, timeout=10)
    try:
        # The other transaction waits long before it looks for a deadlock: the batch's
        # backend finds it first, and is the one PostgreSQL aborts.
        await other.execute("SET deadlock_timeout = '30s'")
        transaction = other.transaction()
        await transaction.start()
        await other.execute("UPDATE sessions SET device_name = 'x' WHERE id = $1", last)
        # The batch locks `first`, then waits for `last`...
        swapped = asyncio.gather(*(rotations.swap(s) for s in swaps))
        await asyncio.sleep(0.3)
        # ... while the other transaction, holding `last`, waits for `first`: a deadlock.
        # PostgreSQL aborts the batch; this UPDATE goes through and is rolled back.
        await other.execute("UPDATE sessions SET device_name = 'y' WHERE id = $1", first)
        await transaction.rollback()
        assert await asyncio.wait_for(swapped, timeout=10) == [True, True]
    finally:
        await other.close()
    for swap in swaps:
        row = await session_row(container, str(swap.session_id))
        assert row.refresh_token_hash == swap.child_hash
        assert row.device_name != "x"
