"""Smoke test of the scale seeder (bench/seed.py) at a small N, on SQLite and PostgreSQL:
the server reads the seeded rows like its own, and a prune brings them to what retention
keeps. The real run (N = 1,000,000) is the lead's, not the test suite's."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conductor_api.app import create_app
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.retention.pruner import Pruner
from conductor_api.sessions.models import DeviceSession
from conductor_api.users.models import User
from tests.conftest import (
    bearer,
    make_client,
    make_settings,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from conductor_bench.seeder import SEED_PASSWORD, username  # noqa: E402

N, HEAVY = 40, 30


async def _count(container: Container, model: type[object]) -> int:
    async with container.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def seeded_url(empty_database_url: str) -> str:
    """The database, seeded by `bench/seed.py` run as the lead runs it (a real process)."""
    command = [sys.executable, str(REPO / "bench" / "seed.py"), "--users", str(N)]
    command += ["--heavy-events", str(HEAVY), "--chunk", "16", "--database-url", empty_database_url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"seeded {N} users, {3 * N} sessions, {10 * N + HEAVY} events")
    return empty_database_url


@pytest.mark.e2e
async def test_seed_then_serve_then_prune(seeded_url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, seeded_url))
    async with app.router.lifespan_context(app), make_client(app) as client:
        container: Container = app.state.container
        assert await _count(container, User) == N
        assert await _count(container, DeviceSession) == 3 * N
        assert await _count(container, SecurityEvent) == 10 * N + HEAVY

        # A seeded user signs in with the shared password and sees its seeded history.
        body = {"username": username(0), "password": SEED_PASSWORD, "device_name": "t"}
        response = await client.post("/api/v1/auth/login", json=body)
        assert response.status_code == 200, response.text
        auth = bearer(response.json()["access_token"])
        events = await client.get("/api/v1/auth/events?limit=200", headers=auth)
        assert events.status_code == 200
        assert len(events.json()) == 10 + HEAVY + 1  # and this login's event
        sessions = await client.get("/api/v1/auth/sessions", headers=auth)
        assert len(sessions.json()) == 2  # the seeded live one, and this login's

        deleted = await Pruner(container.settings, container.engine, container.clock.now).run()
        assert deleted is not None and deleted["security_events"] > 0
        assert deleted["sessions"] > 0
        now = datetime.now(UTC)
        async with container.sessionmaker() as db:
            oldest = await db.scalar(select(func.min(SecurityEvent.created_at)))
            ended = await db.scalar(
                select(func.count())
                .select_from(DeviceSession)
                .where(
                    (DeviceSession.revoked_at < now - timedelta(days=30))
                    | (DeviceSession.expires_at < now - timedelta(days=30))
                )
            )
        assert oldest is not None and oldest >= now - timedelta(days=90, minutes=1)
        assert ended == 0
        assert await _count(container, SecurityEvent) < 10 * N + HEAVY
