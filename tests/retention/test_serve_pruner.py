"""The pruner inside `serve`: it runs every PRUNE_INTERVAL_SECONDS, and never when 0."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from tests.conftest import Account
from tests.retention.rows import insert_event, keys


async def _events(container: Container) -> set[object]:
    async with container.engine.connect() as conn:
        return (await keys(conn))["security_events"]


class TestServePruner:
    @pytest.mark.parametrize("settings_overrides", [{"prune_interval_seconds": 1}])
    async def test_prunes_periodically(
        self, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        async with container.engine.begin() as conn:
            await insert_event(conn, alice.id, clock.now() - timedelta(days=91))
            kept = await insert_event(conn, alice.id, clock.now())
        for _ in range(50):
            if await _events(container) == {kept}:
                break
            await asyncio.sleep(0.1)
        assert await _events(container) == {kept}
        # And again: a row that expires later goes at a later round.
        async with container.engine.begin() as conn:
            await insert_event(conn, alice.id, clock.now() - timedelta(days=95))
        assert container.pruner is not None
        rounds = container.pruner.rounds
        for _ in range(50):
            if container.pruner.rounds > rounds + 1:
                break
            await asyncio.sleep(0.1)
        assert await _events(container) == {kept}

    @pytest.mark.parametrize("settings_overrides", [{"prune_interval_seconds": 0}])
    async def test_zero_interval_never_prunes(self, container: Container) -> None:
        assert container.pruner is None
