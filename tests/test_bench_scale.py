"""Smoke test of the scale benchmark: bench/scale.py --quick runs end to end on SQLite and on
PostgreSQL, reports every row, and the prune leaves exactly the rows the retention rules keep.
It checks that the harness works and that the prune is right, never how fast anything is."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from conductor_bench.scale import SCALE_SCENARIOS, SECTION, TABLES, write_section  # noqa: E402


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is required under CI")
        pytest.skip(f"{what} is not available")


def _postgres_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            return True
    except OSError:
        return False


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.e2e
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_scale_quick(db: str, tmp_path: Path) -> None:
    _need("wrk (`make tools`)", shutil.which("wrk") is not None)
    if db == "postgres":
        _need(f"PostgreSQL at {PG_HOST}:{PG_PORT}", _postgres_answers())
    out = tmp_path / "SCALE.md"
    out.write_text("# Results\n\nkept above\n\n## Scale benchmark\n\nold figures\n\n## Kept\n")
    command = [sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--db", db]
    command += ["--out", str(out), "--pg-url", f"postgresql://postgres@{PG_HOST}:{PG_PORT}"]
    proc = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    text = proc.stdout
    assert text.startswith(SECTION)

    # Both groups seeded, every scenario reported with its target.
    for group in ("empty", "seeded"):
        assert any(line.startswith(f"| {db} | {group} | ") for line in text.splitlines())
    for title in SCALE_SCENARIOS.values():
        assert any(line.startswith(f"| {db} | {title} | ") for line in text.splitlines()), title
    targets = [line for line in text.splitlines() if line.startswith(f"- {db} ")]
    assert {t.split(":")[0] for t in targets} >= {f"- {db} {k}" for k in "bcdgh"}

    # The prune leaves exactly what the rules keep (N = 200: nothing crosses a cut-off
    # between the count and the prune), and it deleted old events and ended sessions.
    prune_rows = {
        _cells(line)[1]: _cells(line)
        for line in text.splitlines()
        if line.startswith(f"| {db} | ") and _cells(line)[1] in TABLES
    }
    assert set(prune_rows) == set(TABLES)
    for table, (_, _, before, keep, after, deleted, target) in prune_rows.items():
        assert after == keep, (table, prune_rows[table])
        assert target == "met", (table, target)
        assert int(before.replace(",", "")) - int(after.replace(",", "")) == int(
            deleted.replace(",", "")
        )
    assert prune_rows["security_events"][5] != "0"
    assert prune_rows["sessions"][5] != "0"
    assert f"- {db} prune security_events:" in text

    # --out replaced the old section and kept the rest of the file.
    written = out.read_text()
    assert written.startswith("# Results\n\nkept above\n\n" + text)
    assert "old figures" not in written
    assert written.endswith("## Kept\n")


def test_write_section_appends_then_replaces(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nfigures\n")
    write_section(path, f"{SECTION}\n\none\n")
    assert path.read_text() == f"# Results\n\nfigures\n\n{SECTION}\n\none\n"
    write_section(path, f"{SECTION}\n\ntwo\n")
    assert path.read_text() == f"# Results\n\nfigures\n\n{SECTION}\n\ntwo\n"
    fresh = tmp_path / "SCALE.md"
    write_section(fresh, f"{SECTION}\n\nthree\n")
    assert fresh.read_text() == f"{SECTION}\n\nthree\n"
