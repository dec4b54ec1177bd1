#!/usr/bin/env python3
"""A sustained password spray, then a prune: do the counter and event tables stay bounded?

For each database: `conductor-api serve` with TRUSTED_PROXIES=127.0.0.1 and
LOCKOUT_MINUTES=1 (so that counters are idle past their window a minute after the spray),
then wrk sends wrong passwords for random usernames, each from a random 10.x.y.z address in
X-Forwarded-For, for `--duration` seconds. The rows of `login_throttles` (per scope) and
`security_events` are counted right after, then once the window has passed `conductor-api
prune` runs with the default retention, and they are counted again.

    .venv/bin/python bench/spray.py --db both --duration 60 --out bench/SPRAY.md

What "bounded" means here: every counter of the spray is gone after the prune (names and
addresses that failed without a lock leave nothing once their window has passed), and the
events are what EVENT_RETENTION_DAYS keeps: one per attempt, deleted by the prune that runs
after 90 days, so at most the attempts of the last 90 days at the rate the hash allows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conductor_bench.common import BenchError, log
from conductor_bench.load import Load, Result
from conductor_bench.servers import Postgres, Server, Setup, clean_env, set_up

COUNTS = {
    "login_throttles (names)": "SELECT count(*) FROM login_throttles WHERE scope = 'user'",
    "login_throttles (addresses)": "SELECT count(*) FROM login_throttles WHERE scope = 'ip'",
    "login_throttles (all)": "SELECT count(*) FROM login_throttles",
    "security_events": "SELECT count(*) FROM security_events",
}
WINDOW_MINUTES = 1


@dataclass
class Outcome:
    db: str
    load: Result
    after_spray: dict[str, int] = field(default_factory=dict)
    after_prune: dict[str, int] = field(default_factory=dict)
    pruned: str = ""
    prune_seconds: float = 0.0


def count(db: str, data: Path, postgres: Postgres | None, dbname: str) -> dict[str, int]:
    """The rows of each table of COUNTS."""
    if db == "sqlite":
        with contextlib.closing(sqlite3.connect(data / "conductor.db")) as conn:
            return {k: int(conn.execute(sql).fetchone()[0]) for k, sql in COUNTS.items()}
    assert postgres is not None
    return {k: int(postgres.execute(sql, dbname)) for k, sql in COUNTS.items()}


def run_one(db: str, args: argparse.Namespace, setup: Setup, work: Path) -> Outcome:
    """Spray one database, wait out the window, prune, count."""
    cfg = work / db
    data = cfg / "data"
    data.mkdir(parents=True)
    env = {
        "CONDUCTOR_DATA_DIR": str(data),
        "TRUSTED_PROXIES": "127.0.0.1",
        "LOCKOUT_MINUTES": str(WINDOW_MINUTES),
    }
    server_bin, postgres = setup.server_bin, setup.postgres
    with contextlib.ExitStack() as stack:
        dbname = ""
        if db == "postgres":
            assert postgres is not None
            dbname = postgres.create()
            stack.callback(postgres.drop, dbname)
            env["DATABASE_URL"] = postgres.url(dbname)
        server = Server(server_bin, cfg, 1, clean_env(**env))
        stack.callback(server.stop)
        server.start()
        load = Load(setup.wrk, 1, args.connections, 5, cfg)
        log(f"[{db}] spraying for {args.duration}s")
        proc = load.start(server.url, "spray.lua", args.duration, {}, f"{db}-spray")
        result = load.finish(proc, args.duration, f"{db}-spray")
        ended = time.monotonic()
        time.sleep(3)  # the logins still in flight when wrk stopped record their events
        outcome = Outcome(db, result, after_spray=count(db, data, postgres, dbname))
        wait = WINDOW_MINUTES * 60 + 2 - (time.monotonic() - ended)
        if wait > 0:
            log(f"[{db}] waiting {wait:.0f}s for the counters' window to pass")
            time.sleep(wait)
        started = time.monotonic()
        prune = subprocess.run(
            [server_bin, "prune"],
            env=clean_env(**env),
            cwd=cfg,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        outcome.prune_seconds = time.monotonic() - started
        if prune.returncode != 0:
            raise BenchError(f"conductor-api prune failed: {prune.stderr.strip()[-300:]}")
        outcome.pruned = "; ".join(ln for ln in prune.stdout.splitlines() if ln.strip())
        outcome.after_prune = count(db, data, postgres, dbname)
        return outcome


def report(outcomes: list[Outcome], args: argparse.Namespace) -> tuple[str, bool]:
    """The Markdown section, and whether every counter was gone after the prune."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        "## Password spray, then prune",
        "",
        f"- command: `python bench/spray.py --db {args.db} --duration {args.duration}`",
        f"- date: {now}; one worker; wrk -t1 -c{args.connections}; TRUSTED_PROXIES=127.0.0.1, "
        f"LOCKOUT_MINUTES={WINDOW_MINUTES}, every other setting its default",
        "",
        "| db | attempts | per s | statuses | table | rows after the spray | rows after "
        "the prune |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    ok = True
    for o in outcomes:
        statuses = ", ".join(f"{k}: {v}" for k, v in o.load.statuses.items())
        rate = o.load.requests / max(o.load.seconds, 1e-9)
        first = True
        for table in COUNTS:
            head = (
                f"| {o.db} | {o.load.requests:,} | {rate:.1f} | {statuses} "
                if first
                else "| | | | "
            )
            lines.append(f"{head}| {table} | {o.after_spray[table]:,} | {o.after_prune[table]:,} |")
            first = False
        gone = o.after_prune["login_throttles (all)"] == 0
        kept = o.after_prune["security_events"] == o.after_spray["security_events"]
        ok = ok and gone
        lines += [
            "",
            f"{o.db}: prune took {o.prune_seconds:.1f} s ({o.pruned or 'nothing deleted'}). "
            f"Counters after the prune: {'none left: met' if gone else 'NOT all gone'}. "
            f"Events: {'kept, as EVENT_RETENTION_DAYS says' if kept else 'changed'} "
            f"({o.after_spray['security_events'] / max(o.load.requests, 1):.2f} per attempt).",
            "",
        ]
        # Keep the table header for the next database's rows.
        if o is not outcomes[-1]:
            lines += [
                "| db | attempts | per s | statuses | table | rows after the spray | rows "
                "after the prune |",
                "|---|---:|---:|---|---|---:|---:|",
            ]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/spray.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--duration", type=int, default=60, help="seconds of spray (60)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("--server", default=None, help="path of conductor-api")
    p.add_argument("--out", default=None, help="also write the Markdown section here")
    args = p.parse_args(argv)
    if args.duration < 1 or args.connections < 1:
        p.error("--duration and --connections must be at least 1")
    try:
        setup = set_up(args.db, args.server, args.pg_url)
        with tempfile.TemporaryDirectory(prefix="conductor-spray-") as tmp:
            outcomes = [run_one(db, args, setup, Path(tmp)) for db in setup.dbs]
    except BenchError as error:
        print(f"bench/spray.py: {error}", file=sys.stderr)
        return 1
    text, ok = report(outcomes, args)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
