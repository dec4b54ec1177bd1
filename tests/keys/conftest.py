"""Fixtures for the signing-key tests: each starts from an empty key set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api.clock import FrozenClock
from conductor_api.config import Settings
from conductor_api.keys.models import SigningKey
from conductor_api.keys.repository import all_keys
from tests.conftest import started_app


async def wipe_keys(settings: Settings) -> None:
    """Delete every signing key of the run's shared database."""
    engine = create_async_engine(settings.sqlalchemy_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM signing_keys"))
    finally:
        await engine.dispose()


async def stored_keys(settings: Settings) -> list[SigningKey]:
    """The key set as the database holds it, oldest first."""
    engine = create_async_engine(settings.sqlalchemy_url, poolclass=NullPool)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as db:
            return list(await all_keys(db))
    finally:
        await engine.dispose()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Re-read the key set often enough for tests that wait for it."""
    return {"key_refresh_seconds": 0.2}


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    """A started application on an empty key set and emptied tables."""
    await wipe_keys(settings)
    async with started_app(settings, clock) as application:
        yield application


def sessionmaker_for(settings: Settings) -> tuple[Any, async_sessionmaker[AsyncSession]]:
    """An engine of the test's own (another instance, as it were) and its sessions."""
    from conductor_api.db import make_engine, make_session_factory

    engine = make_engine(settings)
    return engine, make_session_factory(engine)
