"""Pruning deletes exactly what the retention settings say, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.db import asyncpg_dsn
from conductor_api.dpop.replay import SqliteReplayCache, sqlite_cache_path
from conductor_api.retention.pruner import Pruner
from conductor_api.retention.rules import RULES, Retention
from tests.conftest import Account
from tests.retention.rows import insert_event, keys, seed_around_cutoffs


def counts(**deleted: int) -> dict[str, int]:
    """What a prune reports: every table of the rules, 0 unless given."""
    return {rule.name: 0 for rule in RULES} | deleted


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

    async def test_the_sqlite_proof_cache_file_is_pruned_too(
        self, container: Container, clock: FrozenClock
    ) -> None:
        if not container.settings.is_sqlite:
            pytest.skip("SQLite keeps the DPoP proofs in a file of their own")
        path = sqlite_cache_path(container.settings.sqlite_path)
        now = clock.now().timestamp()
        aged, young = [secrets.token_hex(32) for _ in range(2)], secrets.token_hex(32)
        cache = SqliteReplayCache(path, 1.0)
        try:
            for key, expires in ((aged[0], now - 120), (aged[1], now - 30), (young, now + 30)):
                assert await cache.first_use(key, expires, now - 200)
        finally:
            await cache.close()
        with sqlite3.connect(path) as db:
            before = db.execute("SELECT count(*) FROM dpop_proofs").fetchone()[0]
        deleted = await Pruner(container.settings, container.engine, clock.now).run()
        assert deleted is not None and deleted["dpop_proofs"] >= 2
        with sqlite3.connect(path) as db:
            left = db.execute("SELECT count(*) FROM dpop_proofs").fetchone()[0]
        assert left == before - deleted["dpop_proofs"] and left >= 1
        # The young one is remembered (the same proof again is a replay); the aged are gone.
        cache = SqliteReplayCache(path, 1.0)
        try:
            assert not await cache.first_use(young, now + 30, now)
            assert await cache.first_use(aged[0], now + 30, now)
        finally:
            await cache.close()

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
        assert deleted == counts()

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
        assert (await task) == counts(security_events=1)
        # Once the first is done, the lock is free again.
        assert await second.run() == counts()


class TestRequestsFirst:
    async def test_the_pruner_passes_over_a_counter_a_sign_in_holds(
        self, container: Container, clock: FrozenClock
    ) -> None:
        """A sign-in's first statement holds the address's counter while it takes the
        name's (PostgreSQL): a prune that held the name's idle row and waited for the
        address's would deadlock with it. It passes over the held row instead."""
        if container.settings.is_sqlite:
            pytest.skip("PostgreSQL's row locks")
        idle = clock.now() - timedelta(minutes=container.settings.lockout_minutes + 1)
        async with container.engine.begin() as conn:
            for scope, key in (("ip", "192.0.2.80"), ("user", "idle-name")):
                await conn.execute(
                    insert(LoginThrottle).values(
                        scope=scope, key=key, failures=1, pending=0, window_started_at=idle
                    )
                )
        signin = await asyncpg.connect(asyncpg_dsn(container.settings))
        try:
            async with signin.transaction():
                # The address's slot taken, its statement not yet committed.
                await signin.execute(
                    "UPDATE login_throttles SET pending = pending + 1"
                    " WHERE scope = 'ip' AND key = '192.0.2.80'"
                )
                deleted = await asyncio.wait_for(
                    Pruner(container.settings, container.engine, clock.now).run(), 10
                )
                # Then the name's: the pruner holds nothing.
                await asyncio.wait_for(
                    signin.execute(
                        "INSERT INTO login_throttles (scope, key, failures, pending,"
                        " window_started_at) VALUES ('user', 'idle-name', 0, 1, $1)"
                        " ON CONFLICT (scope, key) DO UPDATE SET pending = 1",
                        clock.now(),
                    ),
                    10,
                )
        finally:
            await signin.close()
        assert deleted == counts(login_throttles=1)
        async with container.sessionmaker() as db:
            address = await db.get(LoginThrottle, ("ip", "192.0.2.80"))
            name = await db.get(LoginThrottle, ("user", "idle-name"))
        # The address's row, passed over, is there with its slot; the name's is new.
        assert address is not None and address.pending == 1
        assert name is not None and (name.failures, name.pending) == (0, 1)
