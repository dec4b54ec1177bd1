"""The session check on PostgreSQL: requests that arrive while its query is out share the
next one, and still see every revocation committed before they arrived.

PostgreSQL only (SQLite's check is a synchronous point read on the event loop, with
nothing to share); the database is a real one of this module's own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conductor_api.auth.principal import PostgresPrincipalLoader
from conductor_api.container import Container
from conductor_api.errors import ServiceUnavailable
from conductor_api.sessions import repository
from tests.conftest import (
    Account,
    end_other_backends,
    migrated_pg_database,
    tokens,
)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated PostgreSQL database for this module (no SQLite variant)."""
    with migrated_pg_database(tmp_path_factory.mktemp("pg")) as url:
        yield url


Batch = dict[uuid.UUID, list[asyncio.Future[Any]]]


class Spy:
    """Records each query the loader sends (the session ids of its batch); while `gate` is
    clear, a query waits before it reaches the database, holding its place in flight."""

    def __init__(self, loader: PostgresPrincipalLoader) -> None:
        self.batches: list[list[uuid.UUID]] = []
        self.sent = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        answer: Callable[[Batch], Awaitable[None]] = loader._answer

        async def spied(batch: Batch) -> None:
            self.batches.append(list(batch))
            self.sent.set()
            await self.gate.wait()
            await answer(batch)

        loader._answer = spied  # type: ignore[method-assign]


@pytest.fixture
def loader(container: Container) -> PostgresPrincipalLoader:
    assert isinstance(container.principals, PostgresPrincipalLoader)
    return container.principals


@pytest.fixture
async def sessions(client: httpx.AsyncClient, alice: Account) -> AsyncIterator[list[uuid.UUID]]:
    """Three live sessions of alice."""
    yield [
        uuid.UUID((await tokens(client, fingerprint=f"phone-{i}"))["session_id"]) for i in range(3)
    ]


async def test_requests_that_arrive_while_a_query_is_out_share_the_next_one(
    loader: PostgresPrincipalLoader, alice: Account, sessions: list[uuid.UUID]
) -> None:
    spy = Spy(loader)
    spy.gate.clear()
    first = asyncio.create_task(loader.load(sessions[0], alice.id))
    await spy.sent.wait()
    # The first query is out: these wait for it, and then go together.
    rest = [asyncio.create_task(loader.load(sessions[i % 3], alice.id)) for i in range(30)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(spy.batches) == 1
    spy.gate.set()
    answers = await asyncio.gather(first, *rest)

    assert spy.batches[0] == [sessions[0]]
    assert len(spy.batches) == 2 and sorted(spy.batches[1]) == sorted(sessions)
    # Each request has its own session's answer.
    assert [a.session_id for a in answers if a] == [sessions[0]] + [
        sessions[i % 3] for i in range(30)
    ]
    assert all(a is not None and a.user_id == alice.id for a in answers)


async def test_an_idle_check_is_sent_at_once(
    loader: PostgresPrincipalLoader, alice: Account, sessions: list[uuid.UUID]
) -> None:
    spy = Spy(loader)
    for sid in sessions:
        principal = await loader.load(sid, alice.id)
        assert principal is not None and principal.session_id == sid
    assert spy.batches == [[sid] for sid in sessions]


async def test_a_revocation_committed_while_a_query_is_out_is_seen(
    container: Container,
    loader: PostgresPrincipalLoader,
    alice: Account,
    sessions: list[uuid.UUID],
) -> None:
    assert await loader.load(sessions[1], alice.id) is not None
    spy = Spy(loader)
    spy.gate.clear()
    first = asyncio.create_task(loader.load(sessions[0], alice.id))
    await spy.sent.wait()
    async with container.sessionmaker.begin() as db:
        assert await repository.revoke(db, sessions[1], container.clock.now(), "revoked")
    # Arrives after the commit, while the first query is out: it must wait for a query of
    # its own, not take an answer read before the revocation.
    second = asyncio.create_task(loader.load(sessions[1], alice.id))
    spy.gate.set()

    assert await first is not None
    assert await second is None
    assert spy.batches == [[sessions[0]], [sessions[1]]]


async def test_when_the_database_does_not_answer_the_waiting_requests_fail_with_it(
    tmp_path: Path,
) -> None:
    # Nothing listens on port 1: the first query fails at once.
    dead = PostgresPrincipalLoader("postgresql://postgres@127.0.0.1:1/none", timeout=2)
    spy = Spy(dead)
    spy.gate.clear()
    first = asyncio.create_task(dead.load(uuid.uuid4(), uuid.uuid4()))
    await spy.sent.wait()
    waiting = [asyncio.create_task(dead.load(uuid.uuid4(), uuid.uuid4())) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    spy.gate.set()
    outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)

    assert all(isinstance(o, ServiceUnavailable) for o in outcomes), outcomes
    # One attempt answered them all: none waited for a query of its own to fail as well.
    assert len(spy.batches) == 1
    await dead.close()


async def test_connections_killed_by_the_server_are_an_outage_then_replaced(
    database_url: str,
    loader: PostgresPrincipalLoader,
    alice: Account,
    sessions: list[uuid.UUID],
) -> None:
    # The pool gives connections back as they are (no reset query): one whose backend an
    # administrator ended must still never answer a request with a 500, nor stay in use.
    assert await loader.load(sessions[0], alice.id) is not None
    assert await end_other_backends(database_url) >= 1
    try:
        principal = await loader.load(sessions[0], alice.id)
        assert principal is not None
    except ServiceUnavailable:
        pass
    for sid in sessions:
        principal = await loader.load(sid, alice.id)
        assert principal is not None and principal.session_id == sid
