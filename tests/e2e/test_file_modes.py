"""The data directory is 0700 and the SQLite files 0600 from their creation, whatever the
umask, for `migrate` and for `serve` (issue 9, item 11)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, clean_env, cli_path

pytestmark = pytest.mark.e2e


def mode(path: Path) -> int:
    """Permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask, which makes files 0644 and directories 0755 by default."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


class TestFileModes:
    def test_migrate_creates_owner_only_files(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        result = subprocess.run(
            [cli_path(), "migrate"],
            env=clean_env(CONDUCTOR_DATA_DIR=str(data)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert mode(data) == 0o700
        assert mode(data / "conductor.db") == 0o600
        assert mode(data / "secrets.json") == 0o600

    def test_nested_database_path_is_owner_only(self, tmp_path: Path) -> None:
        db = tmp_path / "deep" / "er" / "app.db"
        result = subprocess.run(
            [cli_path(), "migrate"],
            env=clean_env(
                CONDUCTOR_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=f"sqlite:///{db}"
            ),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert mode(tmp_path / "deep") == 0o700
        assert mode(db.parent) == 0o700
        assert mode(db) == 0o600

    def test_serve_creates_owner_only_database_and_wal_files(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        with Server(tmp_path) as server:
            # A write, so that the -wal and -shm files exist while it serves.
            response = httpx.post(
                server.url + "/api/v1/auth/login",
                json={"username": "nobody", "password": "not the password", "device_name": "x"},
            )
            assert response.status_code == 401
            files = sorted(p.name for p in data.iterdir())
            assert {"conductor.db", "conductor.db-wal", "conductor.db-shm"} <= set(files), files
            assert mode(data) == 0o700
            for name in ("conductor.db", "conductor.db-wal", "conductor.db-shm"):
                assert mode(data / name) == 0o600, name
