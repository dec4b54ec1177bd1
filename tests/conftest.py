"""Fixtures: every test that takes `client` or `app` runs on SQLite and on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (database `test`, user `postgres`, trust auth).
Each test run creates its own database (`conductor_test_<random>`) and drops it at the end,
so runs never collide. When `CI` is set, an unreachable PostgreSQL fails the run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select, text

from conductor_api import migrate
from conductor_api.app import create_app
from conductor_api.clock import FrozenClock
from conductor_api.config import Settings
from conductor_api.container import Container
from conductor_api.dpop.replay import sqlite_cache_path
from conductor_api.sessions.models import DeviceSession
from conductor_api.users.service import create_user

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
PASSWORD = "correct horse battery staple"
TABLES = (
    "security_events",
    "webauthn_challenges",
    "passkeys",
    "mfa_tokens",
    "recovery_codes",
    "totp_factors",
    "device_tokens",
    "sessions",
    "login_throttles",
    "dpop_proofs",
    "users",
)
CLIENT_IP = "203.0.113.7"
# Random per run: the settings refuse keys with few distinct characters.
ACCESS_SECRET = secrets.token_urlsafe(48)
REFRESH_SECRET = secrets.token_urlsafe(48)
TEST_KEK = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXMhISE"


def pg_url(database: str) -> str:
    """A plain `postgresql://` URL, as a user would paste it."""
    return f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def end_other_backends(database_url: str) -> int:
    """End every other connection to the database at `database_url`, as an administrator
    (or a server restart) would: how many there were."""
    admin = await asyncpg.connect(database_url)
    try:
        ended: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return ended


def create_pg_database() -> str:
    """Create a fresh database for this run; skip (or fail under CI) without PostgreSQL."""
    name = f"conductor_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is required under CI: {e}")
        pytest.skip(f"PostgreSQL not reachable: {e}")
    return name


def drop_pg_database(name: str) -> None:
    """Drop a database made by `create_pg_database`, closing stray connections."""
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, of the test's own: a SQLite file's URL, or a fresh
    PostgreSQL database's (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    name = create_pg_database()
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


def make_settings(data_dir: Path, database_url: str | None, **overrides: Any) -> Settings:
    """Settings for tests: fixed keys, a data directory of the test's own."""
    values: dict[str, Any] = {
        "conductor_data_dir": data_dir,
        "database_url": database_url,
        "jwt_secret_key": SecretStr(ACCESS_SECRET),
        "jwt_refresh_secret_key": SecretStr(REFRESH_SECRET),
        # One key-encryption key for every test: the run's databases are shared.
        "key_encryption_key": SecretStr(TEST_KEK),
        "password_hash_concurrency": 2,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per kind for the whole run."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "conductor.db"
        url = f"sqlite:///{path}"
        migrate.upgrade(make_settings(path.parent, url))
        yield url
        return
    with migrated_pg_database(tmp_path_factory.mktemp("pg")) as url:
        yield url


@contextmanager
def migrated_pg_database(data_dir: Path) -> Iterator[str]:
    """A fresh PostgreSQL database with the schema, dropped afterwards: its URL."""
    name = create_pg_database()
    url = pg_url(name)
    try:
        migrate.upgrade(make_settings(data_dir, url))
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def clock() -> FrozenClock:
    """A clock the test moves by hand."""
    return FrozenClock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change settings."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    """Settings on the run's database."""
    return make_settings(tmp_path, database_url, **settings_overrides)


@asynccontextmanager
async def started_app(settings: Settings, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    """A started application on emptied tables (the signing keys are kept)."""
    application = create_app(settings, clock)
    async with application.router.lifespan_context(application):
        container: Container = application.state.container
        async with container.engine.begin() as conn:
            for table in TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608
        if settings.is_sqlite:  # and the proofs in SQLite's DPoP cache file beside it
            cache = sqlite_cache_path(settings.sqlite_path)
            if cache.exists():
                with sqlite3.connect(cache) as db:
                    db.execute("DELETE FROM dpop_proofs")
        yield application


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    """A started application on emptied tables."""
    async with started_app(settings, clock) as application:
        yield application


@pytest.fixture
def container(app: FastAPI) -> Container:
    """The app's services."""
    c: Container = app.state.container
    return c


def make_client(app: FastAPI, ip: str = CLIENT_IP) -> httpx.AsyncClient:
    """An HTTP client for the app, seen by it as coming from `ip`."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP client most tests use."""
    async with make_client(app) as c:
        yield c


@dataclass
class Account:
    """A user made by a test, with its password."""

    id: uuid.UUID
    username: str
    password: str


async def add_user(
    container: Container, username: str = "alice", password: str = PASSWORD
) -> Account:
    """Create a user straight through the service layer."""
    async with container.sessionmaker.begin() as db:
        user = await create_user(
            db, container.hasher, username=username, password=password,
            min_password_length=container.settings.min_password_length,
            now=container.clock.now(),
        )  # fmt: skip
    return Account(user.id, user.username, password)


@pytest.fixture
async def alice(container: Container) -> Account:
    """The usual test user."""
    return await add_user(container)


async def login(
    client: httpx.AsyncClient,
    username: str = "alice",
    password: str = PASSWORD,
    *,
    device: str = "Pixel 8",
    fingerprint: str | None = None,
    **headers: str,
) -> httpx.Response:
    """POST /auth/login."""
    body: dict[str, Any] = {"username": username, "password": password, "device_name": device}
    if fingerprint is not None:
        body["device_fingerprint"] = fingerprint
    return await client.post("/api/v1/auth/login", json=body, headers=headers)


async def tokens(client: httpx.AsyncClient, **kwargs: Any) -> dict[str, Any]:
    """Log in and return the token pair, asserting success."""
    response = await login(client, **kwargs)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


async def session_row(container: Container, session_id: str) -> DeviceSession:
    """The session as the database holds it."""
    async with container.sessionmaker() as db:
        row = await db.scalar(
            select(DeviceSession).where(DeviceSession.id == uuid.UUID(session_id))
        )
    assert row is not None
    return row
