"""An operator's tools in tests: the `conductor-api` command on a data directory, and the
application on the same database file, as a server would open it."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from conductor_api.app import create_app
from tests.conftest import PASSWORD, TEST_KEK, make_settings
from tests.e2e.server import clean_env, cli_path


def cli(
    data_dir: Path, *args: str, stdin: str = "", kek: str = TEST_KEK
) -> subprocess.CompletedProcess[str]:
    """`conductor-api ARGS` on the data directory, with the tests' KEY_ENCRYPTION_KEY."""
    return subprocess.run(
        [cli_path(), *args],
        input=stdin,
        env=clean_env(CONDUCTOR_DATA_DIR=str(data_dir), KEY_ENCRYPTION_KEY=kek),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@asynccontextmanager
async def server_on(data_dir: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The application on the command's database file, with the real clock."""
    app = create_app(make_settings(data_dir, None, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def login(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    """POST /auth/login."""
    body = {"username": username, "password": password, "device_name": "Pixel"}
    return await client.post("/api/v1/auth/login", json=body)
