"""The scale benchmark (bench/scale.py): the same server on an almost empty database and on
one seeded with N users, 3N sessions and 10N events; then a prune of the seeded one.

For each database kind, two row groups, each on a fresh database seeded *before* the server
starts (the seeder of `seeder.py`, after the server's migrations):

- "empty": `--users 1`, only user seed0000000 with its 1,000 recent events (so that (h)
  reads the same history on both);
- "seeded": `--users N`.

Against `conductor-api serve --workers 1`: (a) /health/live, (b) /auth/me, (c) refresh,
(d) login (and the Argon2id hash bound), (g) GET /auth/sessions and (h) GET /auth/events as
seed0000000. After the seeded group: the server stops, rows and size are counted, what the
retention rules keep is counted with the rules themselves (`conductor_api.retention.rules`),
`conductor-api prune` runs (the real command, the server's environment), and rows and size
are counted again.

This module imports `conductor_api` (the migrations, the settings, the retention rules): run
it with the server's venv Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from conductor_api.config import Settings
from conductor_bench.cli import check_pg_url, git_describe, run_header
from conductor_bench.common import (
    BENCH_DIR,
    BUSY_CORES,
    MIB,
    BenchError,
    failure_line,
    failure_status,
    log,
)
from conductor_bench.hashbound import HashBound, measure
from conductor_bench.load import Load, Result
from conductor_bench.scenarios import write_lines
from conductor_bench.seed import fresh_refresh_tokens
from conductor_bench.seed import seed as seed_api
from conductor_bench.seeder import SEED_PASSWORD, Shape, database_bytes, seed, username
from conductor_bench.servers import (
    Postgres,
    Server,
    clean_env,
    set_up,
)
from conductor_bench.system import postgres_backends, wait_quiet

HEAVY_EVENTS = 1000
SCALE_SCENARIOS = {
    "a": "a. GET /health/live (ceiling)",
    "b": "b. GET /api/v1/auth/me",
    "c": "c. POST /api/v1/auth/refresh",
    "d": "d. POST /api/v1/auth/login",
    "g": "g. GET /api/v1/auth/sessions (seed0000000)",
    "h": "h. GET /api/v1/auth/events (seed0000000)",
}
SESSIONS_PATH = "/api/v1/auth/sessions"
EVENTS_PATH = "/api/v1/auth/events"  # the default page (limit 50), newest first
TABLES = ("users", "sessions", "security_events", "login_throttles")
# Targets from the scale issue.
TARGET_RATIO_KEPT = 0.9  # (b)-(d): seeded ratio >= 0.9 x empty ratio
TARGET_READ_SLOWDOWN = 2.0  # (g), (h): seeded p50 < 2 x empty p50
SECTION = "## Scale benchmark"


@dataclass
class Options:
    users: int
    duration: int
    connections: int
    threads: int
    hash_rounds: int
    quiet_wait: float


@dataclass
class Counts:
    """Rows per table, and what the retention rules keep of them at `at`."""

    at: datetime
    rows: dict[str, int]
    kept: dict[str, int]


@dataclass
class Prune:
    before: Counts  # just before `conductor-api prune`
    after: Counts  # just after it
    seconds: float
    output: str
    bytes_before: int
    bytes_after: int
    free_before: int | None  # SQLite: bytes in free pages
    free_after: int | None


@dataclass
class Group:
    db: str
    kind: str  # "empty" or "seeded"
    users: int  # seeded users
    seed_rows: int
    seed_seconds: float
    seed_bytes: int  # database size once seeded, before the server started
    hash: HashBound | None = None
    results: dict[str, Result] = field(default_factory=dict)
    prune: Prune | None = None

    @property
    def seed_rate(self) -> float:
        return self.seed_rows / self.seed_seconds if self.seed_seconds > 0 else 0.0

    def ratio(self, key: str) -> float:
        """(b), (c), (g), (h): req/s over (a)'s; (d): over the hash bound."""
        r = self.results[key].rps
        if key == "d":
            assert self.hash is not None
            return r / self.hash.bound if self.hash.bound else 0.0
        base = self.results["a"].rps
        return r / base if base else 0.0


# Database helpers (the server's own settings, engine and retention rules)


def _settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(_env_file=None, database_url=database_url, conductor_data_dir=data_dir)


def migrate(database_url: str, data_dir: Path) -> None:
    """Bring the schema up to date with the server's migrations, as `serve` would."""
    from conductor_api import migrate as m
    from conductor_api.config import ConfigError

    try:
        m.upgrade(_settings(database_url, data_dir))
    except (ConfigError, OSError) as e:
        raise BenchError(f"migrating {database_url}: {e}") from None


def count(database_url: str, data_dir: Path) -> Counts:
    """Rows per table, and how many the retention rules (`RULES`, at this moment and with
    the settings' retention days) keep: a row is kept when no rule for its table matches."""
    from sqlalchemy import func, or_, select, table

    from conductor_api.db import make_engine
    from conductor_api.retention.rules import RULES, Retention

    settings = _settings(database_url, data_dir)
    now = datetime.now(UTC)
    retention = Retention.at(now, settings)

    async def go() -> Counts:
        engine = make_engine(settings)
        rows: dict[str, int] = {}
        kept: dict[str, int] = {}
        try:
            async with engine.connect() as conn:
                for name in TABLES:
                    total = await conn.scalar(select(func.count()).select_from(table(name)))
                    rules = [r for r in RULES if r.name == name]
                    expiring = 0
                    if rules:
                        conditions = [r.condition(retention) for r in rules]
                        query = (
                            select(func.count()).select_from(rules[0].table).where(or_(*conditions))
                        )
                        expiring = int(await conn.scalar(query) or 0)
                    rows[name] = int(total or 0)
                    kept[name] = rows[name] - expiring
        finally:
            await engine.dispose()
        return Counts(now, rows, kept)

    return asyncio.run(go())


def sqlite_free_bytes(path: Path) -> int:
    """Bytes in the free pages of a SQLite file (a delete frees pages; only VACUUM gives
    them back to the file system)."""
    conn = sqlite3.connect(path)
    try:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(free) * int(page)
    finally:
        conn.close()


# One row group


@dataclass
class Context:
    opts: Options
    server_bin: str
    server_python: str
    postgres: Postgres | None
    load: Load
    workdir: Path
    password_hash: str


def run_group(db: str, kind: str, ctx: Context) -> Group:
    opts = ctx.opts
    n = 1 if kind == "empty" else opts.users
    tag = f"{db}-{kind}"
    gdir = ctx.workdir / tag
    data = gdir / "data"
    data.mkdir(parents=True)
    # No background prune while the scenarios run: the seeded rows stay until the timed
    # `conductor-api prune` at the end (3600 s by default: a long run could cross it).
    env = {
        "CONDUCTOR_DATA_DIR": str(data),
        "ALLOW_REGISTRATION": "true",
        "MAX_REGISTRATIONS_PER_IP": "1000000",
        "PRUNE_INTERVAL_SECONDS": "0",
    }
    dbname = ""
    with contextlib.ExitStack() as stack:
        if db == "postgres":
            assert ctx.postgres is not None
            dbname = ctx.postgres.create()
            stack.callback(ctx.postgres.drop, dbname)
            url = ctx.postgres.url(dbname)
        else:
            url = f"sqlite:///{data / 'conductor.db'}"
        env["DATABASE_URL"] = url
        server_env = clean_env(**env)

        log(f"[{tag}] migrating and seeding {n:,} users")
        migrate(url, data)
        shape = Shape(
            users=n,
            now=datetime.now(UTC),
            password_hash=ctx.password_hash,
            heavy_events=HEAVY_EVENTS,
        )
        started = time.monotonic()
        seed(url, shape)
        seconds = time.monotonic() - started
        group = Group(db, kind, n, 14 * n + HEAVY_EVENTS, seconds, database_bytes(url))
        log(f"[{tag}] seeded {group.seed_rows:,} rows in {seconds:.1f} s")

        server = Server(ctx.server_bin, gdir, 1, server_env)
        stack.callback(server.stop)
        log(f"[{tag}] starting conductor-api serve --workers 1 on port {server.port}")
        server.start()
        if db == "sqlite" and not (data / "conductor.db").is_file():
            raise BenchError(f"[{tag}] the server did not use {data / 'conductor.db'}")
        group.results, group.hash = scenarios(tag, db, dbname, server, server_env, ctx, gdir)
        server.stop()

        if kind == "seeded":
            group.prune = prune(tag, db, url, data, server_env, ctx, gdir)
    return group


def heavy_user_token(url: str) -> str:
    """An access token of seed0000000 (the user with 1,000 recent events), through the API:
    this also proves the server reads the seeded database."""
    body = {"username": username(0), "password": SEED_PASSWORD, "device_name": "bench-scale"}
    r = httpx.post(url + "/api/v1/auth/login", json=body, timeout=60)
    if r.status_code != 200:
        raise BenchError(
            f"logging in {username(0)} answered {r.status_code}: {r.text[:200]} "
            "(is the server on the seeded database?)"
        )
    token: str = r.json()["access_token"]
    return token


def scenarios(
    tag: str,
    db: str,
    dbname: str,
    server: Server,
    server_env: dict[str, str],
    ctx: Context,
    gdir: Path,
) -> tuple[dict[str, Result], HashBound]:
    opts = ctx.opts
    c = opts.connections
    n_users = max(2 * c, 8)
    log(f"[{tag}] registering {n_users} users and logging them in")
    pools = seed_api(server.url, n_users)
    tokens = write_lines(gdir / "access.txt", pools.access_tokens)
    users = write_lines(
        gdir / "users.txt", [f"{u.username}\t{u.password}\tbench-login" for u in pools.users]
    )
    results: dict[str, Result] = {}

    def db_pids() -> list[int]:
        return postgres_backends(dbname) if db == "postgres" else []

    def run(key: str, script: str, env: dict[str, str], path: str = "/") -> None:
        note = ""
        if opts.quiet_wait > 0:
            _, busy = wait_quiet(opts.quiet_wait)
            if busy >= 0.3:
                note = f"other processes used {busy:.2f} cores just before"
        log(f"[{tag}] {SCALE_SCENARIOS[key]} for {opts.duration}s")
        res = ctx.load.run(
            server.url + path, script, opts.duration, env, f"{tag}-{key}", server, db_pids
        )
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"server [{tag}] died in scenario {key}: {server.last_log_line()}")
        res.note = "; ".join(x for x in (res.note, note) if x)
        results[key] = res

    run("a", "health.lua", {}, "/health/live")
    run("b", "me.lua", {"BENCH_TOKENS": str(tokens)})
    chains = fresh_refresh_tokens(server.url, pools.users, 2 * c, "bench-rf")
    run("c", "refresh.lua", {"BENCH_TOKENS": str(write_lines(gdir / "refresh.txt", chains))})
    log(f"[{tag}] timing {opts.hash_rounds} Argon2id verifies with the server's hasher")
    hash_bound = measure(ctx.server_python, opts.hash_rounds, server_env)
    run("d", "login.lua", {"BENCH_USERS": str(users)})
    heavy = write_lines(gdir / "heavy.txt", [heavy_user_token(server.url)] * c)
    run("g", "get.lua", {"BENCH_TOKENS": str(heavy), "BENCH_PATH": SESSIONS_PATH})
    run("h", "get.lua", {"BENCH_TOKENS": str(heavy), "BENCH_PATH": EVENTS_PATH})
    return results, hash_bound


def prune(
    tag: str, db: str, url: str, data: Path, server_env: dict[str, str], ctx: Context, gdir: Path
) -> Prune:
    sqlite_file = data / "conductor.db" if db == "sqlite" else None
    log(f"[{tag}] counting rows and what the retention rules keep")
    bytes_before = database_bytes(url)
    free_before = sqlite_free_bytes(sqlite_file) if sqlite_file else None
    before = count(url, data)
    log(f"[{tag}] conductor-api prune")
    started = time.monotonic()
    proc = subprocess.run(
        [ctx.server_bin, "prune"],
        cwd=gdir,
        env=server_env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"[{tag}] conductor-api prune failed ({proc.returncode}): {last}")
    after = count(url, data)
    return Prune(
        before=before,
        after=after,
        seconds=seconds,
        output="; ".join(ln.strip() for ln in proc.stdout.splitlines() if ln.strip()),
        bytes_before=bytes_before,
        bytes_after=database_bytes(url),
        free_before=free_before,
        free_after=sqlite_free_bytes(sqlite_file) if sqlite_file else None,
    )


# The report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def mib(x: int) -> str:
    return f"{x / MIB:,.1f}"


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def prune_check(p: Prune, name: str) -> tuple[bool, str]:
    """Rows after the prune against what the rules keep. The prune's own clock reads a little
    after `before.at` and before `after.at`, so if rows crossed a cut-off meanwhile the
    right count lies between the two readings; the note says so."""
    got, keep, keep_end = p.after.rows[name], p.before.kept[name], p.after.kept[name]
    if got == keep:
        return True, ""
    if keep_end <= got <= keep:
        return True, f"{keep - got} rows reached a cut-off while the prune ran"
    return False, f"{got - keep:+d} rows against the rules"


def report(groups: list[Group], header: dict[str, str]) -> tuple[str, list[tuple[str, str, bool]]]:
    by = {(g.db, g.kind): g for g in groups}
    dbs = list(dict.fromkeys(g.db for g in groups))
    lines = [SECTION, ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "### Seeding",
        "",
        "Before the server starts, after its migrations (`conductor_bench/seeder.py`: COPY on "
        "PostgreSQL, one executemany transaction on SQLite). Rows are users + sessions + "
        "events; the size is the database's once seeded.",
        "",
        "| db | group | users | sessions | events | rows | seconds | rows/s | size MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        lines.append(
            f"| {g.db} | {g.kind} | {g.users:,} | {3 * g.users:,} | "
            f"{10 * g.users + HEAVY_EVENTS:,} | {g.seed_rows:,} | {g.seed_seconds:.1f} | "
            f"{g.seed_rate:,.0f} | {mib(g.seed_bytes)} |"
        )
    lines += [
        "",
        "### Scenarios",
        "",
        "req/s counts successful responses; p50/p99 are wrk's, in ms. *ratio* is req/s over "
        "(a)'s in the same group, except (d): over the hash bound (Argon2id verifies per "
        "second, the server's own hasher, timed in the same group). *seeded/empty*: for "
        "(b)-(d) the seeded ratio over the empty one (target >= "
        f"{TARGET_RATIO_KEPT}); for (g), (h) the seeded p50 over the empty p50 (target < "
        f"{TARGET_READ_SLOWDOWN:g}).",
        "",
        "| db | scenario | empty req/s | p50 | p99 | ratio | seeded req/s | p50 | p99 | ratio "
        "| seeded/empty | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    checks: list[tuple[str, str, bool]] = []
    notes: list[str] = []
    for db in dbs:
        e, s = by.get((db, "empty")), by.get((db, "seeded"))
        if e is None or s is None:
            continue
        for key, title in SCALE_SCENARIOS.items():
            re_, rs = e.results[key], s.results[key]
            cells = [db, title]
            for g, r in ((e, re_), (s, rs)):
                ratio = "" if key == "a" else f"{g.ratio(key):.3f}"
                cells += [fmt_rate(r.rps), f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", ratio]
            target = ""
            if key in "bcd":
                rel = s.ratio(key) / e.ratio(key) if e.ratio(key) else 0.0
                ok = rel >= TARGET_RATIO_KEPT
                cells.append(f"{rel:.2f}")
                target = f">= {TARGET_RATIO_KEPT}: {mark(ok)}"
                checks.append((f"{db} {key}", f"seeded ratio {rel:.2f} x the empty one", ok))
            elif key in "gh":
                rel = rs.p50_ms / re_.p50_ms if re_.p50_ms else 0.0
                ok = rel < TARGET_READ_SLOWDOWN
                cells.append(f"{rel:.2f}")
                target = f"< {TARGET_READ_SLOWDOWN:g}: {mark(ok)}"
                checks.append((f"{db} {key}", f"seeded p50 {rel:.2f} x the empty one", ok))
            else:
                cells.append("")
            cells.append(target)
            lines.append("| " + " | ".join(cells) + " |")
            for g, r in ((e, re_), (s, rs)):
                extra = []
                if r.errors:
                    extra.append(f"{r.errors} errors")
                if r.other_cpu is not None and r.other_cpu > BUSY_CORES:
                    extra.append(f"other processes used {r.other_cpu:.2f} cores")
                if r.note:
                    extra.append(r.note)
                if extra:
                    notes.append(f"{db} {g.kind} ({key}): " + "; ".join(dict.fromkeys(extra)))
        for g in (e, s):
            if g.hash is not None:
                h = g.hash
                notes.append(
                    f"{db} {g.kind}: hash bound {h.bound:.1f}/s ({h.rounds} verifies, pool "
                    f"{h.pool}" + (", from CPU time: disturbed" if h.disturbed else "") + ")"
                )
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]

    pruned = [g for g in groups if g.prune is not None]
    if pruned:
        lines += [
            "",
            "### Prune of the seeded database",
            "",
            "Rows per table once the scenarios are over and the server stopped; *rules keep*: "
            "the rows that no line of `conductor_api.retention.rules.RULES` matches at that "
            "moment (events newer than EVENT_RETENTION_DAYS, sessions not ended or ended less "
            "than SESSION_RETENTION_DAYS ago, throttle counters still in use), counted "
            "just before `conductor-api prune` (the real command, the server's environment "
            "and default retention settings).",
            "",
            "| db | table | rows before | rules keep | after prune | deleted | target |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for g in pruned:
            p = g.prune
            assert p is not None
            for name in TABLES:
                ok, note = prune_check(p, name)
                lines.append(
                    f"| {g.db} | {name} | {p.before.rows[name]:,} | {p.before.kept[name]:,} | "
                    f"{p.after.rows[name]:,} | {p.before.rows[name] - p.after.rows[name]:,} "
                    f"| {mark(ok)}{' (' + note + ')' if note else ''} |"
                )
                checks.append(
                    (
                        f"{g.db} prune {name}",
                        f"{p.after.rows[name]:,} rows after, rules keep {p.before.kept[name]:,}",
                        ok,
                    )
                )
        lines.append("")
        for g in pruned:
            p = g.prune
            assert p is not None
            deleted = sum(p.before.rows.values()) - sum(p.after.rows.values())
            rate = f"{deleted / p.seconds:,.0f}" if p.seconds > 0 else "-"
            size = f"size {mib(p.bytes_before)} MiB before, {mib(p.bytes_after)} MiB after"
            if p.free_before is not None and p.free_after is not None:
                size += (
                    f" (free pages {mib(p.free_before)} MiB before, {mib(p.free_after)} MiB "
                    f"after: {mib(p.bytes_after - p.free_after)} MiB in use; the file shrinks "
                    "only with VACUUM)"
                )
            elif g.db == "postgres":
                size += (
                    " (pg_database_size: deleted rows stay as dead tuples until (auto)vacuum "
                    "reuses their space)"
                )
            lines.append(
                f"- {g.db}: `conductor-api prune` took {p.seconds:.1f} s, {rate} rows/s "
                f"({p.output}); {size}."
            )

    lines += ["", "### Targets", ""]
    for name, detail, ok in checks:
        lines.append(f"- {name}: {detail}: **{mark(ok)}**")
    return "\n".join(lines) + "\n", checks


def write_section(path: Path, text: str) -> None:
    """Put `text` (a `## Scale benchmark` section) in `path`: in place of the section
    already there (up to the next `## ` heading), or at the end."""
    old = path.read_text() if path.exists() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    path.write_text(new)


# The command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/scale.py",
        description="Scale benchmark: the scenarios on an almost empty and on a seeded "
        "database, then a prune (see bench/README.md).",
    )
    p.add_argument("--users", type=int, help="N: seeded users (3N sessions, 10N events)")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--duration", type=int, default=10, help="seconds per scenario (10)")
    p.add_argument("--quick", action="store_true", help="200 users, 1 s scenarios: a smoke run")
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "RESULTS.md",
        help="write the section `## Scale benchmark` into this file, replacing the one there "
        "or appending it (default bench/RESULTS.md, where it sits below run.py's part)",
    )
    p.add_argument("--no-out", action="store_true", help="only print the report")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--timeout", type=int, default=5, help="wrk request timeout, seconds (5)")
    p.add_argument("--hash-rounds", type=int, default=60, help="Argon2id verifies timed (60)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each scenario, wait up to this many seconds for a quiet machine (30)",
    )
    p.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server (no database name); databases are created and dropped",
    )
    p.add_argument("--server", help="path of conductor-api (default: the repo's .venv)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.users = min(args.users or 200, 200)
        args.duration = min(args.duration, 1)
        args.connections = min(args.connections, 4)
        args.hash_rounds = min(args.hash_rounds, 5)
        args.quiet_wait = 0.0
    if args.users is None:
        p.error("--users is required (or --quick)")
    if args.users < 1:
        p.error("--users must be at least 1")
    for name in ("duration", "connections", "threads", "timeout", "hash_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads > args.connections:
        p.error("--threads must not exceed --connections")
    check_pg_url(p, args)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="conductor-scale-"))
    try:
        setup = set_up(args.db, args.server, args.pg_url)
        from conductor_api.security.passwords import make_password_hash

        opts = Options(
            users=args.users,
            duration=args.duration,
            connections=args.connections,
            threads=args.threads,
            hash_rounds=args.hash_rounds,
            quiet_wait=args.quiet_wait,
        )
        ctx = Context(
            opts=opts,
            server_bin=setup.server_bin,
            server_python=setup.server_python,
            postgres=setup.postgres,
            load=Load(setup.wrk, opts.threads, opts.connections, args.timeout, workdir),
            workdir=workdir,
            password_hash=make_password_hash().hash(SEED_PASSWORD),
        )
        started = datetime.now(UTC)
        groups = [run_group(db, kind, ctx) for db in setup.dbs for kind in ("empty", "seeded")]
        elapsed = (datetime.now(UTC) - started).total_seconds()
        header = {
            **run_header(setup, "bench/scale.py", argv, started, elapsed),
            "server": f"`conductor-api serve --workers 1` at commit {git_describe()}, "
            "PRUNE_INTERVAL_SECONDS=0 (no background prune during the run), otherwise "
            "defaults; a fresh data directory and database per group",
            "groups": f"*empty*: seeded with 1 user (seed0000000 with {HEAVY_EVENTS + 10:,} "
            f"events, 3 sessions); *seeded*: {opts.users:,} users, {3 * opts.users:,} "
            f"sessions, {10 * opts.users + HEAVY_EVENTS:,} events",
            "load": f"wrk -t{opts.threads} -c{opts.connections} --timeout "
            f"{args.timeout}s, {opts.duration} s per scenario; (g), (h) as seed0000000, "
            f"`GET {SESSIONS_PATH}` and `GET {EVENTS_PATH}` (default page of 50); "
            f"hash bound: {opts.hash_rounds} verifies"
            + (" (--quick: figures are not meaningful)" if args.quick else ""),
        }
        text, _ = report(groups, header)
        print(text, end="", flush=True)
        if not args.no_out:
            write_section(args.out, text)
            log(f"report written to {args.out}")
        if args.keep:
            log(f"logs and pools kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    except (KeyboardInterrupt, Exception) as e:
        failure, status = failure_line(e), failure_status(e)
    print(failure + f" (logs kept in {workdir})", file=sys.stderr)
    return status
