"""The command line: flags, then every configuration, then the report."""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from conductor_bench.common import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    BUSY_CORES,
    REPO,
    failure_line,
    failure_status,
    log,
)
from conductor_bench.load import Load, wrk_version
from conductor_bench.report import keep_note, report, write_report
from conductor_bench.scaling import measure_scaling
from conductor_bench.scenarios import Options, run_config
from conductor_bench.servers import Setup, server_versions, set_up
from conductor_bench.system import cores, cpu_model


def git_describe() -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return proc.stdout.strip() + (" with uncommitted changes in src/" if dirty else "")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Load benchmark of conductor-api serve with wrk (see bench/README.md).",
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per scenario (default 10)")
    p.add_argument(
        "--mixed-duration", type=int, default=60, help="seconds of mixed load for (f) (60)"
    )
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (1,2)")
    p.add_argument("--quick", action="store_true", help="tiny durations and pools: a smoke run")
    p.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--timeout", type=int, default=5, help="wrk request timeout, seconds (5)")
    p.add_argument("--probe-rate", type=float, default=50.0, help="(e) requests/s (50)")
    p.add_argument(
        "--mix",
        default="health:25,me:50,refresh:20,login:5",
        help="(f) request mix, weights (health:25,me:50,refresh:20,login:5)",
    )
    p.add_argument("--hash-rounds", type=int, default=60, help="Argon2id verifies timed (60)")
    p.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server (no database name); databases are created and dropped",
    )
    p.add_argument("--server", help="path of conductor-api (default: the repo's .venv)")
    p.add_argument(
        "--server-log-level",
        choices=("debug", "info", "warning", "error"),
        help="LOG_LEVEL for the server (default: the server's own default)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each scenario, wait up to this many seconds for other processes to "
        "leave the CPUs idle (default 30; 0 with --quick)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run (a)-(d) again, up to this many times, when other processes took more than "
        f"{BUSY_CORES} cores meanwhile, or one worker of several did nearly all the work "
        "(default 2; 0 with --quick)",
    )
    p.add_argument(
        "--patience",
        type=float,
        default=150.0,
        help="seconds in all that quiet waits and repeated runs may add to the run (150)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra environment variable for the server (repeatable), for experiments",
    )
    p.add_argument(
        "--scaling-rounds",
        type=int,
        default=7,
        help="(s) rounds of /auth/me on 1 worker then 2, alternating (7; 0: none)",
    )
    p.add_argument(
        "--scaling-seconds", type=int, default=4, help="(s) seconds per server per round (4)"
    )
    p.add_argument(
        "--login-rounds",
        type=int,
        default=5,
        help="(d') rounds of the hash bound and of logins, alternating, after (d) (5; 0: none)",
    )
    p.add_argument(
        "--login-round-seconds", type=int, default=4, help="(d') seconds of logins per round (4)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, pools)")
    args = p.parse_args(argv)
    try:
        args.worker_counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        p.error(f"--workers: not a comma-separated list of numbers: {args.workers}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        p.error("--workers: counts must be at least 1")
    if args.quick:
        args.duration = min(args.duration, 1)
        args.mixed_duration = min(args.mixed_duration, 2)
        args.connections = min(args.connections, 4)
        args.hash_rounds = min(args.hash_rounds, 5)
        args.quiet_wait = 0.0
        args.retries = 0
        args.scaling_rounds = min(args.scaling_rounds, 1)
        args.scaling_seconds = 1
        args.login_rounds = min(args.login_rounds, 1)
        args.login_round_seconds = 1
    if args.scaling_rounds < 0:
        p.error("--scaling-rounds must not be negative")
    if args.login_rounds < 0:
        p.error("--login-rounds must not be negative")
    for name in (
        "duration",
        "mixed_duration",
        "connections",
        "threads",
        "timeout",
        "scaling_seconds",
        "login_round_seconds",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads > args.connections:
        p.error("--threads must not exceed --connections")
    if args.probe_rate <= 0:
        p.error("--probe-rate must be positive")
    check_pg_url(p, args)
    for item in args.server_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item):
            p.error(f"--server-env: expected NAME=VALUE, got {item!r}")
    return args


def check_pg_url(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--pg-url names a local PostgreSQL server, not a database (runs make their own)."""
    m = re.fullmatch(r"postgres(?:ql)?://([^@/]+@)?([^:/]+)(:\d+)?/?", args.pg_url)
    if not m or m.group(2) not in ("127.0.0.1", "localhost"):
        p.error("--pg-url must be postgresql://USER@127.0.0.1[:PORT], without a database")
    args.pg_url = args.pg_url.rstrip("/")


def run_header(
    setup: Setup, script: str, argv: list[str], started: datetime, elapsed: float
) -> dict[str, str]:
    """The lines every report opens with: command, date, machine, versions."""
    shown = " ".join(shlex.quote(a) for a in ["python", script, *argv])
    versions = server_versions(setup.server_python)
    return {
        "command": f"`{shown}`",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ") + f" ({elapsed:.0f} s in all)",
        "machine": f"`nproc` {cores()}, {cpu_model()}, {platform.system()} {platform.release()}",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", wrk {wrk_version(setup.wrk)}"
        + (f", PostgreSQL {setup.pg_version}" if setup.pg_version else ""),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    workdir = Path(tempfile.mkdtemp(prefix="conductor-bench-"))
    try:
        setup = set_up(args.db, args.server, args.pg_url)
        wrk, server_bin, server_python = setup.wrk, setup.server_bin, setup.server_python
        dbs, postgres = setup.dbs, setup.postgres
        opts = Options(
            duration=args.duration,
            mixed_duration=args.mixed_duration,
            connections=args.connections,
            threads=args.threads,
            probe_rate=args.probe_rate,
            mix=args.mix,
            hash_rounds=args.hash_rounds,
            server_log_level=args.server_log_level,
            quiet_wait=args.quiet_wait,
            server_env=dict(item.split("=", 1) for item in args.server_env),
            retries=args.retries,
            patience=args.patience,
            login_rounds=args.login_rounds,
            login_round_seconds=args.login_round_seconds,
        )
        load_tool = Load(wrk, args.threads, args.connections, args.timeout, workdir)
        started = datetime.now(UTC)
        configs = []
        for db in dbs:
            for workers in args.worker_counts:
                configs.append(
                    run_config(
                        db, workers, opts, server_bin, server_python, postgres, load_tool, workdir
                    )
                )
        scalings = []
        if args.scaling_rounds and {1, 2} <= set(args.worker_counts):
            for db in dbs:
                scaling = measure_scaling(
                    db, opts, args.scaling_rounds, args.scaling_seconds, server_bin, postgres,
                    load_tool, workdir,
                )  # fmt: skip
                scalings.append(scaling)
        elapsed = (datetime.now(UTC) - started).total_seconds()

        header = {
            **run_header(setup, "bench/run.py", argv, started, elapsed),
            "server": f"`conductor-api serve --workers N` at commit {git_describe()}, "
            f"log level {args.server_log_level or 'default'}"
            + "".join(f", {item}" for item in args.server_env)
            + ", fresh data directory "
            "(and fresh PostgreSQL database) per row group",
            "load": f"wrk -t{args.threads} -c{args.connections} --timeout {args.timeout}s, "
            f"{args.duration} s per scenario, (f) {args.mixed_duration} s of {args.mix}; "
            f"(e) one keep-alive connection at {args.probe_rate:g} req/s; "
            f"Argon2id m={ARGON2_MEMORY_KIB} KiB t={ARGON2_TIME_COST} p={ARGON2_PARALLELISM}, "
            f"hash bound: {args.hash_rounds} verifies at once through the server's own "
            "hasher and pool, timed before and after (d)"
            + (" (--quick: figures are not meaningful)" if args.quick else ""),
        }
        text, _checks = report(configs, scalings, header, opts)
        print(text, end="", flush=True)
        if args.out:
            write_report(args.out, text)
        if args.keep:
            log(f"logs, pools and wrk output kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    except (KeyboardInterrupt, Exception) as e:
        failure, status = failure_line(e), failure_status(e)
    # Servers and databases are gone by now (run_config's ExitStack); logs stay on failure.
    kept = keep_note(workdir)
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    print(failure + kept, file=sys.stderr)
    return status
