"""Smoke test of the load benchmark: bench/run.py --quick runs end to end and reports every
scenario, for one worker and two, and the alternating comparison of the two (s). It checks
that the harness works, never how fast the server is."""

from __future__ import annotations

import os
import re
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
def test_bench_quick_sqlite(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (`make tools` installs it)")
        pytest.skip("wrk is not installed (`make tools` installs it)")
    out = tmp_path / "results.md"
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick"]
    command += ["--db", "sqlite", "--workers", "1,2", "--out", str(out)]
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for workers in (1, 2):
        rows = [line for line in lines if line.startswith(f"| sqlite | {workers} | ")]
        for scenario in SCENARIO_ROWS:
            assert any(row.startswith(f"| sqlite | {workers} | {scenario}") for row in rows), (
                f"no row for {scenario!r} with {workers} worker(s) in:\n{proc.stdout}"
            )
    # (d): the hash bound is the mean of the timings before and after it, and the ratio is
    # the login rate over that mean.
    for workers in (1, 2):
        (login_row,) = [
            line for line in lines if line.startswith(f"| sqlite | {workers} | d. POST")
        ]
        found = re.search(
            r"hash bound ([\d.]+)/s \(mean of ([\d.]+) before and ([\d.]+) after, "
            r"[^)]*\): ([\d.]+);",
            login_row,
        )
        assert found is not None, login_row
        bound, before, after, share = (float(x) for x in found.groups())
        assert bound == pytest.approx((before + after) / 2, abs=0.06)
        rate = float(login_row.split("|")[4].strip().replace(",", ""))
        assert share == pytest.approx(rate / bound, abs=0.01)
    # (d'): one round of the bound and of logins, side by side; (d)'s target is its median.
    rounds = proc.stdout.split("## d'. Login against the hash bound, alternating", 1)[1]
    rounds = rounds.split("\n## ", 1)[0]
    for workers in (1, 2):
        (round_row,) = [
            line for line in rounds.splitlines() if line.startswith(f"| sqlite | {workers} | 1 |")
        ]
        logins, bound, ratio, hashing, ceiling = (
            float(x.strip()) for x in round_row.split("|")[4:9]
        )
        assert logins > 0 and bound > 0 and ratio == pytest.approx(logins / bound, abs=0.01)
        # The workers' hashing threads (named pwhash) did the verifies of the round: their
        # CPU is found and counted apart, and over the cores the bound hashes on (one per
        # hashing thread, a thread per core by default) it is the round's ceiling.
        hashing_on = len(os.sched_getaffinity(0))
        assert 0 < hashing <= hashing_on + 0.1
        assert ceiling == pytest.approx(hashing / hashing_on, abs=0.01)
        (median_row,) = [
            line for line in rounds.splitlines()
            if line.startswith(f"| sqlite | {workers} | median |")
        ]  # fmt: skip
        assert f"**{ratio:.2f}**" in median_row
        (login_target,) = [
            line for line in lines if line.startswith(f"| sqlite w{workers} d: login ≥ 0.85")
        ]
        assert f"| {ratio:.2f} |" in login_target
    # (s): one round of 1 worker against 2, side by side, and its target from the median.
    section = proc.stdout.split("## s. /auth/me, 1 worker against 2, alternating", 1)[1]
    (round_row,) = [line for line in section.splitlines() if line.startswith("| sqlite | 1 | ")]
    cells = round_row.split("|")
    one, two, ratio = (float(x.strip().replace(",", "")) for x in cells[3:6])
    assert one > 0 and two > 0 and ratio == pytest.approx(two / one, abs=0.01)
    # The ceiling: the two workers' CPU over the one worker's (a positive quotient, not a
    # blank, whenever the CPU was sampled), for each round and for the median round.
    assert 0 < float(cells[7]) < 4
    (median_row,) = [line for line in section.splitlines() if line.startswith("| sqlite | median")]
    assert 0 < float(median_row.split("|")[7]) < 4
    target = [line for line in lines if line.startswith("| sqlite s: /auth/me with 2 workers")]
    assert len(target) == 1 and f"| {ratio:.2f} |" in target[0]
    assert "## Targets" in proc.stdout
    assert out.read_text().startswith(proc.stdout)
    assert "Traceback" not in proc.stderr
