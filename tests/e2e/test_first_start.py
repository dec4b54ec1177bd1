"""A fresh directory, no settings at all: the server starts on SQLite and keeps its state."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e


class TestFirstStart:
    def test_serves_with_no_environment_and_reuses_state(self, tmp_path: Path) -> None:
        with Server(tmp_path) as server:
            assert httpx.get(server.url + "/health/ready").json() == {"status": "ok"}
            live = httpx.get(server.url + "/health/live")
            assert live.status_code == 200
            assert "server" not in live.headers
            assert live.headers["x-content-type-options"] == "nosniff"
        data = tmp_path / "data"
        secrets_file = data / "secrets.json"
        assert (data / "conductor.db").stat().st_size > 0
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        first = json.loads(secrets_file.read_text())
        assert first["jwt_secret_key"] != first["jwt_refresh_secret_key"]

        with Server(tmp_path) as server:
            assert httpx.get(server.url + "/health/ready").status_code == 200
        assert json.loads(secrets_file.read_text()) == first
