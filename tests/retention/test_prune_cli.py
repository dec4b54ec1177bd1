"""`conductor-api prune` as an operator runs it: a real process on the run's databases."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conductor_api.clock import Clock
from conductor_api.container import Container
from tests.conftest import Account
from tests.e2e.server import clean_env, cli_path
from tests.retention.rows import keys, seed_around_cutoffs


def _prune(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(CONDUCTOR_DATA_DIR=str(data_dir), DATABASE_URL=database_url)
    return subprocess.run(
        [cli_path(), "prune"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


class TestPruneCommand:
    async def test_prints_what_it_deleted_per_table(
        self, container: Container, alice: Account, database_url: str, tmp_path: Path
    ) -> None:
        # The command reads the wall clock: rows are placed around the real cut-offs, with
        # margins (a day, a minute) far wider than the time the test takes.
        async with container.engine.begin() as conn:
            expected = await seed_around_cutoffs(conn, alice.id, Clock().now(), exact=False)
            before = await keys(conn)

        result = _prune(database_url, tmp_path / "data")

        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.splitlines() == [
            "security_events: 2 deleted",
            "sessions: 3 deleted",
            "login_throttles: 4 deleted",
            "device_tokens: 2 deleted",
            "mfa_tokens: 2 deleted",
            "dpop_proofs: 1 deleted",
            "webauthn_challenges: 2 deleted",
        ]
        async with container.engine.connect() as conn:
            after = await keys(conn)
        assert after == {t: rows - expected.deleted[t] for t, rows in before.items()}

        again = _prune(database_url, tmp_path / "data")
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [
            "security_events: 0 deleted",
            "sessions: 0 deleted",
            "login_throttles: 0 deleted",
            "device_tokens: 0 deleted",
            "mfa_tokens: 0 deleted",
            "dpop_proofs: 0 deleted",
            "webauthn_challenges: 0 deleted",
        ]
