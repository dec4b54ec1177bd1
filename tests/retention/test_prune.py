"""Pruning deletes exactly what the retention settings say, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.retention.pruner import Pruner
from conductor_api.retention.rules import Retention
from tests.conftest import Account
from tests.retention.rows import insert_event, keys, seed_around_cutoffs


class TestPrune:
    async def test_deletes_exactly_what_retention_says(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        async with container.engine.begin() as conn:
            expected = await seed_around_cutoffs(conn, alice.id, clock.now())
            before = await keys(conn)

        deleted = await Pruner(container.settings, container.engine, clock.now).run()

        async with container.engine.connect() as conn:
            after = await keys(conn)
        for table, rows in before.items():
            gone = expected.deleted.get(table, set())
            assert after[table] == rows - gone, table
            assert expected.kept.get(table, set()) <= after[table], table
        assert deleted == {t: len(rows) for t, rows in expected.deleted.items()}

    async def test_nothing_expired_deletes_nothing(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        async with container.engine.begin() as conn:
            await seed_around_cutoffs(conn, alice.id, clock.now())
            before = await keys(conn)
        # Seen from a time before any row had expired: nothing qualifies.
        earlier = clock.now() - timedelta(days=400)
        deleted = await Pruner(container.settings, container.engine, lambda: earlier).run()
        async with container.engine.connect() as conn:
            assert await keys(conn) == before
        assert deleted == {
            "security_events": 0,
            "sessions": 0,
            "login_throttles": 0,
            "webauthn_challenges": 0,
        }

    @pytest.mark.parametrize("settings_overrides", [{"prune_batch_size": 10}])
    async def test_batches_until_done(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        old = clock.now() - timedelta(days=100)
        async with container.engine.begin() as conn:
            for _ in range(25):
                await insert_event(conn, alice.id, old)
            kept = await insert_event(conn, alice.id, clock.now())
        statements: list[str] = []

        def seen(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
            if sql.lstrip().upper().startswith("DELETE FROM SECURITY_EVENTS"):
                statements.append(sql)

        event.listen(container.engine.sync_engine, "before_cursor_execute", seen)
        pruner = Pruner(container.settings, container.engine, clock.now)
        try:
            deleted = await pruner.run()
        finally:
            event.remove(container.engine.sync_engine, "before_cursor_execute", seen)
        # 10 + 10 + 5: a statement that deletes less than a batch is the last.
        assert len(statements) == 3
        assert deleted is not None and deleted["security_events"] == 25
        async with container.engine.connect() as conn:
            assert (await keys(conn))["security_events"] == {kept}

    async def test_longer_retention_keeps_more(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        async with container.engine.begin() as conn:
            kept = await insert_event(conn, alice.id, clock.now() - timedelta(days=100))
        settings = container.settings.model_copy(update={"event_retention_days": 365})
        deleted = await Pruner(settings, container.engine, clock.now).run()
        assert deleted is not None and deleted["security_events"] == 0
        async with container.engine.connect() as conn:
            assert (await keys(conn))["security_events"] == {kept}


class TestOnePrunerAtATime:
    async def test_a_second_pruner_skips_while_the_first_works(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        async with container.engine.begin() as conn:
            await insert_event(conn, alice.id, clock.now() - timedelta(days=100))
        working, release = asyncio.Event(), asyncio.Event()
        first = Pruner(container.settings, container.engine, clock.now)
        prune = first._prune

        async def held(conn: AsyncConnection | None, retention: Retention) -> dict[str, int]:
            working.set()
            await release.wait()
            return await prune(conn, retention)

        first._prune = held  # type: ignore[method-assign]
        task = asyncio.create_task(first.run())
        await asyncio.wait_for(working.wait(), 10)
        # Like another instance: its own connection (PostgreSQL) or file descriptor (SQLite).
        second = Pruner(container.settings, container.engine, clock.now)
        assert await second.run() is None
        release.set()
        assert (await task) == {
            "security_events": 1,
            "sessions": 0,
            "login_throttles": 0,
            "webauthn_challenges": 0,
        }
        # Once the first is done, the lock is free again.
        assert await second.run() == {
            "security_events": 0,
            "sessions": 0,
            "login_throttles": 0,
            "webauthn_challenges": 0,
        }
