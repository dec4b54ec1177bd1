"""Smoke test of the load benchmark: bench/run.py --quick runs end to end and reports every
scenario. It checks that the harness works, never how fast the server is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIO_ROWS = (
    "a. GET /health/live (ceiling)",
    "b. GET /api/v1/auth/me",
    "c. POST /api/v1/auth/refresh",
    "d. POST /api/v1/auth/login",
    "e. GET /health/live, steady, during (d)",
    "f. mixed load",
)


@pytest.mark.e2e
def test_bench_quick_sqlite_one_worker(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (`make tools` installs it)")
        pytest.skip("wrk is not installed (`make tools` installs it)")
    out = tmp_path / "results.md"
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick"]
    command += ["--db", "sqlite", "--workers", "1", "--out", str(out)]
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sqlite | 1 | ")]
    for scenario in SCENARIO_ROWS:
        assert any(row.startswith(f"| sqlite | 1 | {scenario}") for row in rows), (
            f"no row for {scenario!r} in:\n{proc.stdout}"
        )
    assert "## Targets" in proc.stdout
    assert out.read_text().startswith(proc.stdout)
    assert "Traceback" not in proc.stderr
