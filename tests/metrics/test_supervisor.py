"""The supervisor's part of the metrics: every series there at 0 before any worker runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conductor_api.serving.supervisor import METRICS_DIR_PREFIX
from tests.e2e.server import clean_env, free_port
from tests.metrics.scrape import Scrape

# `serve`'s own imports, then what it does before it starts the first worker: the metrics
# directory, the files at 0, the listener. Then one scrape, printed.
SCRIPT = """
import shutil, sys, urllib.request
import conductor_api.cli
from conductor_api.cli.common import settings
from conductor_api.serving.supervisor import Supervisor

s = settings()
supervisor = Supervisor(s, "127.0.0.1", int(sys.argv[1]), 1)
listener = supervisor._start_metrics()
try:
    url = f"http://127.0.0.1:{s.metrics_port}/metrics"
    print(urllib.request.urlopen(url, timeout=10).read().decode())
finally:
    listener.close()
    shutil.rmtree(supervisor.metrics_dir)
    for sock in supervisor.sockets:
        sock.close()
"""


def test_a_scrape_before_any_worker_has_every_series_at_zero(tmp_path: Path) -> None:
    env = clean_env(CONDUCTOR_DATA_DIR=str(tmp_path / "data"), METRICS_PORT=str(free_port()))
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    s = Scrape(run.stdout)
    # The label-less ones at 0, and every method/result pair of the login counter.
    assert s.has("conductor_database_errors_total"), run.stdout
    assert s.value("conductor_database_errors_total") == 0
    assert s.has("conductor_password_hash_queue")
    assert s.has("conductor_password_hash_seconds_count")
    for method in ("password", "passkey"):
        for result in ("succeeded", "failed", "locked"):
            assert s.has("conductor_logins_total", method=method, result=result), (method, result)
    assert s.has("conductor_refreshes_total", result="reused")


def test_a_start_with_metrics_off_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    left = Path(tempfile.gettempdir()) / f"{METRICS_DIR_PREFIX}{gone.stdout.strip()}-x1"
    left.mkdir()
    (left / "counter_1.db").write_bytes(b"\0" * 64)
    ours = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))  # alive
    try:
        started = subprocess.run(
            [sys.executable, "-c", ORPHANS, str(free_port())],
            env=clean_env(CONDUCTOR_DATA_DIR=str(tmp_path / "data")),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert not left.exists() and ours.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(ours, ignore_errors=True)


# What `serve` does first, here with METRICS_PORT unset.
ORPHANS = """
import sys
from conductor_api.cli.common import settings
from conductor_api.serving.supervisor import Supervisor

for sock in Supervisor(settings(), "127.0.0.1", int(sys.argv[1]), 1).sockets:
    sock.close()
"""
