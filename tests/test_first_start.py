"""Commands started at the same moment on a fresh data directory (an operator's script,
or `serve` beside `users create`): each one succeeds, the secrets are generated once, and
the schema is migrated once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database, pg_url
from tests.e2e.server import clean_env, cli_path

COMMANDS = (
    ("migrate",),
    ("keys", "list"),
    ("users", "list"),
    ("migrate",),
    ("sessions", "list", "nobody"),
    ("keys", "list"),
)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings naming a fresh database (none: SQLite in the data directory)."""
    if request.param == "sqlite":
        yield {}
        return
    name = create_pg_database()
    try:
        yield {"DATABASE_URL": pg_url(name)}
    finally:
        drop_pg_database(name)


@pytest.mark.parametrize("round_", range(2))
def test_commands_started_together_all_succeed(
    tmp_path: Path, database: dict[str, str], round_: int
) -> None:
    data = tmp_path / "data"
    env = clean_env(CONDUCTOR_DATA_DIR=str(data), **database)
    running = [
        subprocess.Popen(
            [cli_path(), *args],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in COMMANDS
    ]
    for args, process in zip(COMMANDS, running, strict=True):
        out, err = process.communicate(timeout=120)
        # `sessions list` of a name that does not exist is a clear refusal, not a crash.
        expected = 1 if args[0] == "sessions" else 0
        assert process.returncode == expected, (args, out, err)
        assert "Traceback" not in err and "already exists" not in err, (args, err)
    secrets = json.loads((data / "secrets.json").read_text())
    assert set(secrets) >= {"jwt_secret_key", "jwt_refresh_secret_key"}
    # No draft of the secrets file is left behind.
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".secrets")) == []
