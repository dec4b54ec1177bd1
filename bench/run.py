#!/usr/bin/env python3
"""Load benchmark of real `conductor-api serve` processes, driven by wrk on loopback.

For each database (SQLite, PostgreSQL) and worker count, this starts a server of its own on a
free 127.0.0.1 port with a fresh data directory (and a fresh PostgreSQL database), seeds users
through the registration endpoint, and measures:

  a. GET /health/live                      the ceiling of this server
  b. GET /api/v1/auth/me                   a pool of access tokens, round-robin
  c. POST /api/v1/auth/refresh             every request on its own live refresh-token chain
  d. POST /api/v1/auth/login               right password, one user per connection or more;
                                           against the Argon2id hash bound of this machine
  e. GET /health/live at a low steady rate while (d) floods the same server
  f. mixed load, then the RSS of each worker

It prints a Markdown table (and writes it with --out). Targets that are not met are reported,
not treated as failures; anything that stops a measurement exits non-zero with one line.
Load goes to 127.0.0.1 only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
HOST = "127.0.0.1"  # the only address this harness ever sends load to
MIB = 1024 * 1024

# Targets from the benchmark issue.
TARGET_ME_RATIO = 0.6
TARGET_REFRESH_RATIO = 0.25
TARGET_LOGIN_OF_BOUND = 0.85
TARGET_PROBE_P99_MS = 50.0
TARGET_WORKER_RSS_MIB = 120.0
TARGET_PG_SCALING = 1.6

BUSY_CORES = 0.25  # other processes' CPU above which a scenario is flagged as disturbed

# The server's Argon2id parameters (src/conductor_api/security/passwords.py).
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

SCENARIOS = {
    "a": "a. GET /health/live (ceiling)",
    "b": "b. GET /api/v1/auth/me",
    "c": "c. POST /api/v1/auth/refresh",
    "d": "d. POST /api/v1/auth/login",
    "e": "e. GET /health/live, steady, during (d)",
    "f": "f. mixed load",
}


class BenchError(Exception):
    """Something stopped the benchmark; the message is the one line the user sees."""


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes and /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def proc_children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/*/stat."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def proc_rss(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all but idle and iowait), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def postgres_backends(dbname: str) -> list[int]:
    """PostgreSQL backend processes connected to `dbname` (their title names the database)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            title = proc_cmdline(int(entry))
            if title.startswith("postgres: ") and f" {dbname} " in title:
                pids.append(int(entry))
    return pids


# ---------------------------------------------------------------------------------------------
# The server under test


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Conductor setting, plus `extra`."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "ANDROID_API_", "CONDUCTOR_", "DATABASE_", "CORS_"))
        and k
        not in (
            "ALLOW_REGISTRATION",
            "TRUSTED_PROXIES",
            "LOG_FORMAT",
            "LOG_LEVEL",
            "MAX_FAILED_LOGIN_ATTEMPTS",
            "MAX_FAILED_LOGINS_PER_IP",
            "LOCKOUT_MINUTES",
        )
    }
    return {**keep, **extra}


class Server:
    """One `conductor-api serve` in a process group of its own."""

    def __init__(self, binary: str, workdir: Path, workers: int, env: dict[str, str]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workers = workers
        self.env = env
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln]
            if lines:
                return lines[-1].strip()
        return "(no output)"

    def start(self, timeout: float = 60) -> None:
        cmd = [self.binary, "serve", "--host", HOST, "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"server exited with status {self.proc.returncode} at start: "
                    f"{self.last_log_line()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise BenchError(f"server not ready within {timeout:.0f}s: {self.last_log_line()}")
        # With --workers N > 1, wait for every worker, not just the first one to answer.
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {len(self.worker_pids())} of {self.workers} workers started"
                )
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server itself with one worker, else
        uvicorn's spawned workers (not multiprocessing's resource tracker)."""
        assert self.proc is not None
        if self.workers == 1:
            return [self.proc.pid]
        return sorted(
            pid for pid in proc_children(self.proc.pid) if "spawn_main" in proc_cmdline(pid)
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Workers left behind in the group, if any.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc = None


class Sampler:
    """While a scenario runs: the summed RSS of the workers (sampled), and the CPU time of the
    workers, of the PostgreSQL backends serving the run's database, and of the whole machine."""

    def __init__(
        self, server: Server, db_pids: Callable[[], list[int]], interval: float = 0.25
    ) -> None:
        self.server = server
        self.db_pids = db_pids
        self.interval = interval
        self.peak_sum = 0
        self.last_per_worker: dict[int, int] = {}
        self.peak_per_worker: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        # pid -> (CPU seconds when first seen, latest CPU seconds), per group
        self._cpu: dict[str, dict[int, tuple[float, float]]] = {"server": {}, "db": {}}
        self._t0 = 0.0
        self._machine0 = 0.0
        self._self0 = 0.0
        self.elapsed = 0.0
        self.server_cpu = 0.0
        self.worker_cpu: list[float] = []
        self.db_cpu = 0.0
        self.machine_cpu = 0.0
        self.self_cpu = 0.0

    def _track(self, group: str, pids: list[int], first: bool) -> None:
        seen = self._cpu[group]
        for pid in pids:
            now = proc_cpu_seconds(pid)
            if pid in seen:
                seen[pid] = (seen[pid][0], max(now, seen[pid][1]))
            else:
                # A process that appears during the scenario spent all its CPU time in it.
                seen[pid] = (now if first else 0.0, now)

    def sample(self, first: bool = False) -> None:
        workers = self.server.worker_pids()
        per = {pid: proc_rss(pid) for pid in workers}
        with self._lock:
            self.last_per_worker = per
            self.peak_sum = max(self.peak_sum, sum(per.values()))
            for pid, rss in per.items():
                self.peak_per_worker[pid] = max(self.peak_per_worker.get(pid, 0), rss)
            self._track("server", workers, first)
            self._track("db", self.db_pids(), first)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._machine0 = machine_busy_seconds()
        self._self0 = self_cpu_seconds()
        self.sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.elapsed = time.monotonic() - self._t0
        if self.elapsed <= 0:
            return

        def used(group: str) -> float:
            return sum(b - a for a, b in self._cpu[group].values()) / self.elapsed

        self.server_cpu = used("server")
        self.worker_cpu = [
            (b - a) / self.elapsed for _, (a, b) in sorted(self._cpu["server"].items())
        ]
        self.db_cpu = used("db")
        self.machine_cpu = (machine_busy_seconds() - self._machine0) / self.elapsed
        self.self_cpu = (self_cpu_seconds() - self._self0) / self.elapsed


def uneven(r: Result) -> bool:
    """One of several workers did (nearly) all the work: the kernel handed it most of wrk's
    connections, and the figures show one worker, not the server."""
    return len(r.worker_cpu) > 1 and max(r.worker_cpu) > 0.8 * sum(r.worker_cpu)


def disturbance(r: Result) -> float:
    """How far a run is from a fair one: other processes' cores, plus 1 if uneven."""
    return (r.other_cpu or 0.0) + (1.0 if uneven(r) else 0.0)


def wait_quiet(max_wait: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (at most `max_wait` s) until the rest of the machine uses under `threshold` cores
    over one second. Returns the seconds waited and the last reading."""
    start = time.monotonic()
    busy = 0.0
    while True:
        m0, s0, c0, t0 = machine_busy_seconds(), self_cpu_seconds(), children_cpu_seconds(), 0.0
        t0 = time.monotonic()
        time.sleep(1.0)
        dt = time.monotonic() - t0
        busy = (
            machine_busy_seconds() - m0 - (self_cpu_seconds() - s0) - (children_cpu_seconds() - c0)
        ) / dt
        waited = time.monotonic() - start
        if busy < threshold or waited >= max_wait:
            return waited, busy


# ---------------------------------------------------------------------------------------------
# PostgreSQL databases of the run's own


@dataclass
class Postgres:
    base_url: str  # postgresql://user@host:port
    server_python: str

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def execute(self, sql: str, database: str = "postgres") -> str:
        """Run one statement; psql if there is one, else asyncpg in the server's venv."""
        psql = shutil.which("psql")
        if psql:
            proc = subprocess.run(
                [
                    psql,
                    "-X",
                    "-q",
                    "-t",
                    "-A",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    self.url(database),
                    "-c",
                    sql,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        else:
            code = (
                "import asyncio, sys, asyncpg\n"
                "async def main():\n"
                "    c = await asyncpg.connect(sys.argv[1])\n"
                "    try:\n"
                "        r = await c.fetchval(sys.argv[2])\n"
                "        print('' if r is None else r)\n"
                "    finally:\n"
                "        await c.close()\n"
                "asyncio.run(main())\n"
            )
            proc = subprocess.run(
                [self.server_python, "-c", code, self.url(database), sql],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        if proc.returncode != 0:
            err = next((ln.strip() for ln in proc.stderr.splitlines() if ln.strip()), "no output")
            raise BenchError(f"PostgreSQL at {self.base_url}: {err}")
        return proc.stdout.strip()

    def version(self) -> str:
        return self.execute("SHOW server_version")

    def create(self) -> str:
        name = f"bench_{os.getpid()}_{secrets.token_hex(4)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def sessions_opened(self, name: str) -> int | None:
        """Connections ever opened to database `name` (PostgreSQL 14+), or None."""
        assert re.fullmatch(r"bench_\w+", name), name  # our own name, safe to quote
        query = f"SELECT sessions FROM pg_stat_database WHERE datname = '{name}'"  # noqa: S608
        try:
            out = self.execute(query)
            return int(out)
        except (BenchError, ValueError):
            return None

    def drop(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# Seeding through the API


@dataclass
class User:
    username: str
    password: str


@dataclass
class Pools:
    users: list[User]
    access_tokens: list[str]


async def _seed(url: str, n_users: int, concurrency: int) -> Pools:
    prefix = f"bench{secrets.token_hex(3)}"
    users = [User(f"{prefix}u{i:04d}", secrets.token_hex(16)) for i in range(n_users)]
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def register(user: User) -> None:
            async with sem:
                r = await client.post(
                    "/api/v1/auth/register",
                    json={"username": user.username, "password": user.password},
                )
            if r.status_code != 201:
                raise BenchError(
                    f"POST /api/v1/auth/register answered {r.status_code}: {r.text[:200]}"
                )

        await asyncio.gather(*(register(u) for u in users))
        # Access tokens for (b) and (f): one session a user.
        pairs = await login_many(client, sem, [(u, "bench-me") for u in users])
        return Pools(users, [p["access_token"] for p in pairs])


async def login_many(
    client: httpx.AsyncClient, sem: asyncio.Semaphore, who: list[tuple[User, str]]
) -> list[dict[str, Any]]:
    async def login(user: User, fingerprint: str) -> dict[str, Any]:
        async with sem:
            r = await client.post(
                "/api/v1/auth/login",
                json={
                    "username": user.username,
                    "password": user.password,
                    "device_name": "bench",
                    "device_fingerprint": fingerprint,
                },
            )
        if r.status_code != 200:
            raise BenchError(f"POST /api/v1/auth/login answered {r.status_code}: {r.text[:200]}")
        body: dict[str, Any] = r.json()
        return body

    return list(await asyncio.gather(*(login(u, f) for u, f in who)))


def seed(url: str, n_users: int) -> Pools:
    return asyncio.run(_seed(url, n_users, concurrency=8))


def fresh_refresh_tokens(url: str, users: list[User], n: int, tag: str) -> list[str]:
    """`n` new sessions (device fingerprints TAG0, TAG1, ...), spread over `users`: their
    refresh tokens start live chains. Logging in again with a fingerprint revokes the session
    an earlier attempt used, whose chain is dead by then anyway."""

    async def go() -> list[str]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            who = [(users[i % len(users)], f"{tag}{i}") for i in range(n)]
            return [p["refresh_token"] for p in await login_many(client, sem, who)]

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------
# Load


@dataclass
class Result:
    scenario: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rss_peak: int = 0  # bytes, summed over workers
    worker_rss: list[int] = field(default_factory=list)  # bytes, each worker's peak
    # CPU cores busy on average: server workers, PostgreSQL backends, wrk, everything else
    server_cpu: float | None = None
    worker_cpu: list[float] = field(default_factory=list)  # each worker's share
    db_cpu: float | None = None
    loadgen_cpu: float | None = None
    other_cpu: float | None = None
    note: str = ""
    attempts: int = 1
    probe: Result | None = None  # (e), measured during this (d)
    worker_rss_after: list[int] = field(default_factory=list)  # bytes, 2 s after the load

    bad_responses: int = 0  # completed requests answered with a status >= 400

    @property
    def rps(self) -> float:
        """Successful responses per second: fast refusals must not count as throughput."""
        good = self.requests - self.bad_responses
        return good / self.seconds if self.seconds > 0 else 0.0


def wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    m = re.search(r"wrk\s+(\S+)", proc.stdout + proc.stderr)
    return m.group(1) if m else "unknown"


@dataclass
class Load:
    wrk: str
    threads: int
    connections: int
    timeout: int
    workdir: Path

    def start(
        self, url: str, script: str, seconds: int, env: dict[str, str], name: str
    ) -> subprocess.Popen[str]:
        cmd = [self.wrk, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s"]
        cmd += [f"--timeout={self.timeout}s", "--latency", "-s", str(LUA_DIR / script), url]
        full_env = {
            **os.environ,
            "BENCH_LUA_DIR": str(LUA_DIR),
            "BENCH_THREADS": str(self.threads),
            **env,
        }
        out = (self.workdir / f"wrk-{name}.out").open("w")
        try:
            return subprocess.Popen(
                cmd,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        finally:
            out.close()

    def finish(self, proc: subprocess.Popen[str], seconds: int, name: str) -> Result:
        try:
            rc = proc.wait(timeout=seconds + self.timeout + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise BenchError(f"wrk did not finish scenario {name} in time") from None
        text = (self.workdir / f"wrk-{name}.out").read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
        if rc != 0 or line is None:
            last = (text.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"wrk failed in scenario {name} (status {rc}): {last}")
        data = json.loads(line.removeprefix("BENCHJSON "))
        e = data["errors"]
        lat = data["latency_us"]
        res = Result(
            scenario=name,
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=lat["p50"] / 1000,
            p99_ms=lat["p99"] / 1000,
            errors=e["status"] + e["connect"] + e["read"] + e["write"] + e["timeout"],
            statuses={k: v for k, v in sorted(data["statuses"].items())},
            bad_responses=e["status"],
        )
        socket_errors = {k: e[k] for k in ("connect", "read", "write", "timeout") if e[k]}
        notes = []
        if socket_errors:
            notes.append("socket errors " + ", ".join(f"{k} {v}" for k, v in socket_errors.items()))
        if e["status"]:
            bad = {k: v for k, v in res.statuses.items() if not k.startswith("2")}
            notes.append(f"HTTP >= 400: {e['status']}" + (f" {bad}" if bad else ""))
        if data.get("starved"):
            notes.append(f"{data['starved']} refreshes found the token queue empty")
        res.note = "; ".join(notes)
        return res

    def run(
        self,
        url: str,
        script: str,
        seconds: int,
        env: dict[str, str],
        name: str,
        server: Server,
        db_pids: Callable[[], list[int]],
        during: Callable[[], None] | None = None,
    ) -> Result:
        cpu0 = children_cpu_seconds()
        with Sampler(server, db_pids) as sampler:
            proc = self.start(url, script, seconds, env, name)
            try:
                if during is not None:
                    during()
                res = self.finish(proc, seconds, name)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        elapsed = sampler.elapsed or 1.0
        res.loadgen_cpu = (children_cpu_seconds() - cpu0) / elapsed
        res.rss_peak = sampler.peak_sum
        res.worker_rss = [sampler.peak_per_worker.get(pid, 0) for pid in server.worker_pids()]
        res.server_cpu = sampler.server_cpu
        res.worker_cpu = sampler.worker_cpu
        if uneven(res):
            split = "+".join(f"{x:.2f}" for x in res.worker_cpu)
            res.note = "; ".join(
                x
                for x in (
                    res.note,
                    f"uneven load: worker CPU {split} (one worker accepted most connections)",
                )
                if x
            )
        res.db_cpu = sampler.db_cpu
        # What the rest of the machine used meanwhile (this script's own share, the sampler
        # and the (e) probe, is left out): other people's work skews every figure.
        res.other_cpu = max(
            0.0,
            sampler.machine_cpu
            - sampler.server_cpu
            - sampler.db_cpu
            - res.loadgen_cpu
            - sampler.self_cpu,
        )
        if res.requests > 0 and res.errors >= res.requests:
            raise BenchError(
                f"scenario {name}: every one of {res.requests} requests failed "
                f"({res.note or 'no detail'})"
            )
        if res.requests == 0:
            raise BenchError(f"scenario {name}: wrk completed no request")
        return res


class Probe:
    """A steady GET /health/live at `rate` per second on one keep-alive connection. Latency is
    measured from each request's scheduled send time, so a stall that delays the requests
    behind it counts for all of them (no coordinated omission)."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.interval = 1.0 / rate
        self.latencies: list[float] = []
        self.errors = 0
        self.seconds = 0.0

    def run(self, seconds: float) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        start = time.perf_counter()
        i = 0
        try:
            while True:
                scheduled = start + i * self.interval
                if scheduled - start >= seconds:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    conn.request("GET", "/health/live")
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                self.latencies.append(time.perf_counter() - scheduled)
                if not ok:
                    self.errors += 1
                i += 1
        finally:
            conn.close()
        self.seconds = time.perf_counter() - start

    def result(self) -> Result:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            if not lat:
                return 0.0
            return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat)) - 1))] * 1000

        return Result(
            scenario="e",
            requests=len(lat),
            seconds=self.seconds,
            p50_ms=pct(50),
            p99_ms=pct(99),
            errors=self.errors,
            bad_responses=self.errors,
        )


# ---------------------------------------------------------------------------------------------
# The hash bound


HASH_BOUND_CODE = """
import secrets, statistics, sys, time
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
h = PasswordHash((Argon2Hasher(memory_cost=int(sys.argv[1]), time_cost=int(sys.argv[2]),
                               parallelism=int(sys.argv[3])),))
pw = secrets.token_hex(16)
stored = h.hash(pw)
wall, cpu = [], []
for _ in range(int(sys.argv[4])):
    t, c = time.perf_counter(), time.thread_time()
    ok, _new = h.verify_and_update(pw, stored)
    cpu.append(time.thread_time() - c)
    wall.append(time.perf_counter() - t)
    assert ok
print(statistics.median(wall), statistics.median(cpu))
"""


def verify_seconds(python: str, rounds: int) -> tuple[float, float]:
    """Median wall time and median CPU time of one Argon2id verify with the server's
    parameters (pwdlib's `verify_and_update`, as the server calls it), on one core."""
    args = [str(ARGON2_MEMORY_KIB), str(ARGON2_TIME_COST), str(ARGON2_PARALLELISM), str(rounds)]
    proc = subprocess.run(
        [python, "-c", HASH_BOUND_CODE, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"timing Argon2id with {python} failed: {err}")
    wall, cpu = (float(x) for x in proc.stdout.split())
    return wall, cpu


# ---------------------------------------------------------------------------------------------
# One server configuration


@dataclass
class ConfigResult:
    db: str
    workers: int
    results: dict[str, Result]
    verify_ms: float  # median wall time of one verify
    verify_cpu_ms: float  # median CPU time of one verify
    hash_bound: float  # logins per second


@dataclass
class Options:
    duration: int
    mixed_duration: int
    connections: int
    threads: int
    probe_rate: float
    mix: str
    hash_rounds: int
    server_log_level: str | None
    quiet_wait: float
    server_env: dict[str, str]
    retries: int
    patience: float  # seconds in all for quiet waits and repeated runs; spent as used

    def spend(self, seconds: float) -> None:
        self.patience = max(0.0, self.patience - seconds)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run_config(
    db: str,
    workers: int,
    opts: Options,
    server_bin: str,
    server_python: str,
    postgres: Postgres | None,
    load_tool: Load,
    workdir: Path,
) -> ConfigResult:
    tag = f"{db}-w{workers}"
    cfg_dir = workdir / tag
    (cfg_dir / "data").mkdir(parents=True)
    env = {"CONDUCTOR_DATA_DIR": str(cfg_dir / "data"), "ALLOW_REGISTRATION": "true"}
    if opts.server_log_level:
        env["LOG_LEVEL"] = opts.server_log_level
    env.update(opts.server_env)
    dbname = ""
    with contextlib.ExitStack() as stack:
        if db == "postgres":
            assert postgres is not None
            dbname = postgres.create()
            stack.callback(postgres.drop, dbname)
            env["DATABASE_URL"] = postgres.url(dbname)
        server = Server(server_bin, cfg_dir, workers, clean_env(**env))
        stack.callback(server.stop)
        log(f"[{tag}] starting conductor-api serve --workers {workers} on port {server.port}")
        server.start()

        c = opts.connections
        n_users = max(2 * c, 8)
        n_refresh = 2 * c
        log(f"[{tag}] seeding {n_users} users and {n_users} access tokens")
        pools = seed(server.url, n_users)
        tokens = write_lines(cfg_dir / "access.txt", pools.access_tokens)
        users = write_lines(
            cfg_dir / "users.txt",
            [f"{u.username}\t{u.password}\tbench-login" for u in pools.users],
        )
        url = server.url
        d = opts.duration
        results: dict[str, Result] = {}

        def db_pids() -> list[int]:
            return postgres_backends(dbname) if db == "postgres" else []

        def quiet(what: str) -> str:
            """Wait for the rest of the machine to go quiet; a note if it did not."""
            if opts.quiet_wait <= 0 or opts.patience < 1:
                return ""
            waited, busy = wait_quiet(min(opts.quiet_wait, opts.patience))
            opts.spend(max(0.0, waited - 1.0))  # the first second is the reading itself
            if busy >= 0.3:
                log(f"[{tag}] machine still busy ({busy:.2f} cores) before {what}; going on")
                return f"other processes used {busy:.2f} cores just before"
            if waited > 1.5:
                log(f"[{tag}] waited {waited:.0f}s for other processes to quieten")
            return ""

        def scenario(
            key: str,
            script: str,
            prepare: Callable[[], dict[str, str]],
            path: str = "/",
            seconds: int = d,
            probe_rate: float = 0.0,
            retries: int = opts.retries,
        ) -> Result:
            """Run one scenario; if other processes took CPU meanwhile, wait for quiet and
            run it again (up to `retries` times), keeping the least disturbed attempt.
            `prepare` gives the pools for an attempt (fresh refresh chains each time)."""
            best: Result | None = None
            for attempt in range(retries + 1):
                busy_note = quiet(key)
                env = prepare()
                probe = Probe(server.port, probe_rate) if probe_rate else None
                during = None
                if probe is not None:
                    # The probe starts once the flood is under way and stops before it ends.
                    lead_in = min(1.0, seconds * 0.2)

                    def during(p: Probe = probe, lead_in: float = lead_in) -> None:
                        time.sleep(lead_in)
                        p.run(max(0.5, seconds - 2 * lead_in))

                opened0 = postgres.sessions_opened(dbname) if postgres and dbname else None
                again = f" (attempt {attempt + 1})" if attempt else ""
                log(f"[{tag}] {SCENARIOS[key]} for {seconds}s{again}")
                res = load_tool.run(
                    url + path, script, seconds, env, f"{tag}-{key}{attempt}", server, db_pids,
                    during,
                )  # fmt: skip
                if server.proc is not None and server.proc.poll() is not None:
                    raise BenchError(
                        f"server [{tag}] died in scenario {key}: {server.last_log_line()}"
                    )
                churn = ""
                if opened0 is not None and postgres is not None:
                    opened = (postgres.sessions_opened(dbname) or opened0) - opened0
                    if opened > 20 * workers:
                        # More than filling the pools would take: connections opened and
                        # closed under load. Each costs a backend fork, and short-lived
                        # backends escape the sampler, so their CPU shows as "other".
                        churn = f"the server opened {opened} new PostgreSQL connections"
                res.note = "; ".join(x for x in (res.note, busy_note, churn) if x)
                res.attempts = attempt + 1
                if probe is not None:
                    res.probe = probe.result()
                if best is None or disturbance(res) < disturbance(best):
                    best = res
                if attempt > 0:
                    opts.spend(res.seconds)
                if disturbance(res) <= BUSY_CORES:
                    break
                if attempt >= retries or opts.patience < seconds:
                    break
                why = (
                    "one worker took most connections"
                    if uneven(res)
                    else f"other processes used {res.other_cpu:.2f} cores"
                )
                log(f"[{tag}] {why}; again")
            assert best is not None
            if attempt > 0:
                best.note = "; ".join(
                    x for x in (best.note, f"kept attempt {best.attempts} of {attempt + 1}") if x
                )
            results[key] = best
            return best

        def chains(name: str, tag_: str) -> Callable[[], dict[str, str]]:
            def make() -> dict[str, str]:
                fresh = fresh_refresh_tokens(url, pools.users, n_refresh, tag_)
                return {name: str(write_lines(cfg_dir / f"{tag_}.txt", fresh))}

            return make

        scenario("a", "health.lua", dict, "/health/live")
        scenario("b", "me.lua", lambda: {"BENCH_TOKENS": str(tokens)})
        scenario("c", "refresh.lua", chains("BENCH_TOKENS", "bench-rf"))

        quiet("the Argon2id timing")
        log(f"[{tag}] timing Argon2id verify ({opts.hash_rounds} rounds)")
        verify_s, verify_cpu_s = verify_seconds(server_python, opts.hash_rounds)
        # On a quiet machine the two agree. When other processes stretched the wall time,
        # the CPU time is the verify's real cost, and a bound from the wall time would be low.
        bound = cores() / (verify_cpu_s if verify_s > 1.15 * verify_cpu_s else verify_s)

        log(f"[{tag}] (e) probes /health/live at {opts.probe_rate:g} req/s during (d)")
        login = scenario(
            "d", "login.lua", lambda: {"BENCH_USERS": str(users)}, probe_rate=opts.probe_rate
        )
        assert login.probe is not None
        results["e"] = login.probe
        results["e"].rss_peak = login.rss_peak
        if results["e"].errors:
            results["e"].note = f"{results['e'].errors} probe requests failed"

        mixed_chains = chains("BENCH_REFRESH", "bench-mix")
        scenario(
            "f",
            "mixed.lua",
            lambda: {
                "BENCH_TOKENS": str(tokens),
                "BENCH_USERS": str(users),
                "BENCH_MIX": opts.mix,
                **mixed_chains(),
            },
            seconds=opts.mixed_duration,
            retries=0,
        )
        # Logins still in flight when wrk stops finish within a second or two; then read
        # what each worker keeps.
        time.sleep(2.0)
        results["f"].worker_rss_after = [proc_rss(pid) for pid in server.worker_pids()]
        return ConfigResult(db, workers, results, verify_s * 1000, verify_cpu_s * 1000, bound)


# ---------------------------------------------------------------------------------------------
# Report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_errors(r: Result) -> str:
    if not r.errors:
        return "0"
    total = r.requests or 1
    return f"{r.errors} ({100 * r.errors / total:.1f}%)"


def fmt_cpu(r: Result) -> str:
    if r.server_cpu is None:
        return ""
    parts = (r.db_cpu if r.db_cpu else None, r.loadgen_cpu, r.other_cpu)
    server = f"{r.server_cpu:.2f}"
    if len(r.worker_cpu) > 1:
        server += " (" + "+".join(f"{x:.2f}" for x in r.worker_cpu) + ")"
    return "/".join([server] + ["-" if x is None else f"{x:.2f}" for x in parts])


def fmt_cost(r: Result) -> str:
    """Server and database CPU time per request, in ms."""
    if r.server_cpu is None or not r.rps:
        return ""
    return f"{1000 * (r.server_cpu + (r.db_cpu or 0)) / r.rps:.2f}"


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    configs: list[ConfigResult], header: dict[str, str], opts: Options
) -> tuple[str, list[tuple[str, str, bool]]]:
    lines = ["# Conductor API load benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += [
        "",
        "req/s counts successful responses only; p50 and p99 (of all responses) are "
        "wrk's (a-d, f) or the probe's own (e, timed from each request's scheduled send). "
        "Errors are HTTP statuses >= 400 plus socket errors and timeouts. RSS is the peak, "
        "during the scenario, of the summed resident memory of the worker processes; for (f) "
        "the target column gives each worker's RSS 2 s after the load stopped, and its peak "
        "during the load. CPU is cores busy on average during the scenario, as "
        "server/db/wrk/other: the server's workers (each worker's share in brackets), the "
        "PostgreSQL backends of the run's "
        "database, wrk (the load generator shares the same cores), and every other process "
        "on the machine (this script and its probe left out); CPU ms/req is (server + db) "
        "CPU time per request. Where other is well above 0, "
        "someone else's work was taking CPU from the server and the figures are low.",
        "",
        "| db | workers | scenario | req/s | vs (a) | p50 ms | p99 ms | errors | RSS MiB "
        "| CPU srv/db/wrk/other | CPU ms/req | target | |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    checks: list[tuple[str, str, bool]] = []
    notes: list[str] = []
    for cfg in configs:
        a = cfg.results["a"].rps
        for key in "abcdef":
            r = cfg.results.get(key)
            if r is None:
                continue
            ratio = f"{r.rps / a:.2f}" if a and key != "e" else ""
            target, ok = "", None
            label = f"{cfg.db} w{cfg.workers} {key}"
            if key == "b":
                ok = r.rps >= TARGET_ME_RATIO * a
                target = f"≥ {TARGET_ME_RATIO} x (a)"
                checks.append((f"{label}: /auth/me ≥ {TARGET_ME_RATIO} x (a)", ratio, ok))
            elif key == "c":
                ok = r.rps >= TARGET_REFRESH_RATIO * a
                target = f"≥ {TARGET_REFRESH_RATIO} x (a)"
                checks.append((f"{label}: /auth/refresh ≥ {TARGET_REFRESH_RATIO} x (a)", ratio, ok))
            elif key == "d":
                ok = r.rps >= TARGET_LOGIN_OF_BOUND * cfg.hash_bound
                share = r.rps / cfg.hash_bound
                disturbed = cfg.verify_ms > 1.15 * cfg.verify_cpu_ms
                per_verify = cfg.verify_cpu_ms if disturbed else cfg.verify_ms
                target = (
                    f"≥ {TARGET_LOGIN_OF_BOUND} x hash bound {cfg.hash_bound:.1f}/s "
                    f"({cores()} cores / {per_verify:.1f} ms{' CPU' if disturbed else ''}): "
                    f"{share:.2f}"
                )
                checks.append(
                    (f"{label}: login ≥ {TARGET_LOGIN_OF_BOUND} x hash bound", f"{share:.2f}", ok)
                )
                if cfg.verify_ms > 1.15 * cfg.verify_cpu_ms:
                    notes.append(
                        f"{cfg.db} w{cfg.workers} hash bound: a verify took {cfg.verify_ms:.1f} "
                        f"ms of wall time but {cfg.verify_cpu_ms:.1f} ms of CPU: other processes "
                        "disturbed the timing, so the bound uses the CPU time"
                    )
            elif key == "e":
                ok = r.p99_ms <= TARGET_PROBE_P99_MS
                target = f"p99 ≤ {TARGET_PROBE_P99_MS:.0f} ms"
                checks.append(
                    (f"{label}: /health/live p99 under login flood", f"{r.p99_ms:.1f} ms", ok)
                )
            elif key == "f":
                worst = max(r.worker_rss_after, default=0) / MIB
                ok = worst <= TARGET_WORKER_RSS_MIB
                after = ", ".join(f"{x / MIB:.1f}" for x in r.worker_rss_after)
                peak = ", ".join(f"{x / MIB:.1f}" for x in r.worker_rss)
                target = (
                    f"each worker ≤ {TARGET_WORKER_RSS_MIB:.0f} MiB after the load: {after} "
                    f"(peak during it: {peak})"
                )
                checks.append((f"{label}: RSS per worker after mixed load", f"{worst:.1f} MiB", ok))
            name = SCENARIOS[key]
            if key == "f":
                name += f", {opts.mixed_duration} s"
            lines.append(
                f"| {cfg.db} | {cfg.workers} | {name} | {fmt_rate(r.rps)} | {ratio} "
                f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {fmt_errors(r)} | {r.rss_peak / MIB:.1f} "
                f"| {fmt_cpu(r)} | {fmt_cost(r)} | {target} | {'' if ok is None else mark(ok)} |"
            )
            if r.note:
                notes.append(f"{cfg.db} w{cfg.workers} {key}: {r.note}")
            if any(not k.startswith("2") for k in r.statuses):
                notes.append(f"{cfg.db} w{cfg.workers} {key}: statuses {r.statuses}")
    by = {(c.db, c.workers): c for c in configs}
    if ("postgres", 1) in by and ("postgres", 2) in by:
        one = by[("postgres", 1)].results["b"].rps
        two = by[("postgres", 2)].results["b"].rps
        scale = two / one if one else 0.0
        checks.append(
            (
                f"postgres: /auth/me with 2 workers ≥ {TARGET_PG_SCALING} x 1 worker",
                f"{scale:.2f}",
                scale >= TARGET_PG_SCALING,
            )
        )
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {mark(ok)} |" for name, value, ok in checks]
    met = sum(ok for _, _, ok in checks)
    lines += ["", f"{met} of {len(checks)} targets met."]
    busy = [
        f"{c.db} w{c.workers} {k}"
        for c in configs
        for k, r in c.results.items()
        if r.other_cpu is not None and r.other_cpu > BUSY_CORES
    ]
    if busy:
        lines += [
            "",
            f"Warning: other processes used more than {BUSY_CORES} cores on average during "
            f"{len(busy)} scenario(s) ({', '.join(busy)}); those figures understate the server.",
        ]
    lopsided = [
        f"{c.db} w{c.workers} {k}" for c in configs for k, r in c.results.items() if uneven(r)
    ]
    if lopsided:
        lines += [
            "",
            f"Warning: one worker did nearly all the work in {len(lopsided)} scenario(s) "
            f"({', '.join(lopsided)}): the kernel handed it most of wrk's connections, so "
            "those figures show one worker, not the server.",
        ]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n", checks


# ---------------------------------------------------------------------------------------------
# Main


def find_server(explicit: str | None) -> str:
    candidates = (
        [explicit]
        if explicit
        else [
            str(Path(sys.executable).parent / "conductor-api"),
            str(REPO / ".venv" / "bin" / "conductor-api"),
            shutil.which("conductor-api") or "",
        ]
    )
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    if explicit:
        raise BenchError(f"--server {explicit}: no such executable")
    raise BenchError("conductor-api not found: run `make .venv/.installed` or pass --server")


def server_python_for(server_bin: str) -> str:
    """The interpreter of the server's venv (from the script's #! line)."""
    with contextlib.suppress(OSError, IndexError):
        first = Path(server_bin).read_text(errors="replace").splitlines()[0]
        if first.startswith("#!"):
            interp = shlex.split(first[2:])[0]
            if Path(interp).is_file():
                return interp
    sibling = Path(server_bin).parent / "python"
    return str(sibling) if sibling.exists() else sys.executable


VERSIONS_CODE = """
import importlib.metadata as m, json, platform
out = {"python": platform.python_version()}
for name in ("conductor-api", "fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic",
             "pwdlib", "argon2-cffi", "asyncpg", "aiosqlite", "uvloop", "httptools"):
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def server_versions(python: str) -> dict[str, str]:
    proc = subprocess.run(
        [python, "-c", VERSIONS_CODE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {"python": "unknown"}
    data: dict[str, str] = json.loads(proc.stdout)
    return data


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
    p.add_argument("--hash-rounds", type=int, default=20, help="Argon2id verifies timed (20)")
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
    for name in ("duration", "mixed_duration", "connections", "threads", "timeout"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads > args.connections:
        p.error("--threads must not exceed --connections")
    if args.probe_rate <= 0:
        p.error("--probe-rate must be positive")
    m = re.fullmatch(r"postgres(?:ql)?://([^@/]+@)?([^:/]+)(:\d+)?/?", args.pg_url)
    if not m or m.group(2) not in ("127.0.0.1", "localhost"):
        p.error("--pg-url must be postgresql://USER@127.0.0.1[:PORT], without a database")
    args.pg_url = args.pg_url.rstrip("/")
    for item in args.server_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item):
            p.error(f"--server-env: expected NAME=VALUE, got {item!r}")
    return args


HAND_WRITTEN = "<!-- Hand-written notes below this line are kept when run.py rewrites the file. -->"


def write_report(path: Path, text: str) -> None:
    """Write the report to `path`, keeping whatever an earlier version of the file had below
    the HAND_WRITTEN marker (analysis written by people), after the new report."""
    kept = ""
    with contextlib.suppress(OSError):
        old = path.read_text()
        if HAND_WRITTEN in old:
            kept = old.split(HAND_WRITTEN, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + HAND_WRITTEN + (kept or "\n"))
    log(f"wrote {path}")
    if kept.strip():
        log(f"kept the hand-written part of {path}: check that it still fits the new figures")


def keep_note(workdir: Path) -> str:
    """Where the logs of a failed run are, if it got far enough to write any."""
    return f" (logs kept in {workdir})" if any(workdir.iterdir()) else ""


def main(argv: list[str]) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    workdir = Path(tempfile.mkdtemp(prefix="conductor-bench-"))
    try:
        wrk = shutil.which("wrk")
        if not wrk:
            raise BenchError("wrk not found: `apt-get install -y wrk` (or `make tools`)")
        server_bin = find_server(args.server)
        server_python = server_python_for(server_bin)
        dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
        postgres = None
        pg_version = ""
        if "postgres" in dbs:
            postgres = Postgres(args.pg_url, server_python)
            pg_version = postgres.version()
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
        )
        load_tool = Load(wrk, args.threads, args.connections, args.timeout, workdir)
        versions = server_versions(server_python)
        started = datetime.now(UTC)
        configs = []
        for db in dbs:
            for workers in args.worker_counts:
                configs.append(
                    run_config(
                        db, workers, opts, server_bin, server_python, postgres, load_tool, workdir
                    )
                )
        elapsed = (datetime.now(UTC) - started).total_seconds()

        shown = " ".join(shlex.quote(a) for a in ["python", "bench/run.py", *argv])
        header = {
            "command": f"`{shown}`",
            "date": started.strftime("%Y-%m-%dT%H:%M:%SZ") + f" ({elapsed:.0f} s in all)",
            "machine": f"`nproc` {cores()}, {cpu_model()}, {platform.system()} "
            f"{platform.release()}",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())
            + f", wrk {wrk_version(wrk)}"
            + (f", PostgreSQL {pg_version}" if pg_version else ""),
            "server": f"`conductor-api serve --workers N` at commit {git_describe()}, "
            f"log level {args.server_log_level or 'default'}"
            + "".join(f", {item}" for item in args.server_env)
            + ", fresh data directory "
            "(and fresh PostgreSQL database) per row group",
            "load": f"wrk -t{args.threads} -c{args.connections} --timeout {args.timeout}s, "
            f"{args.duration} s per scenario, (f) {args.mixed_duration} s of {args.mix}; "
            f"(e) one keep-alive connection at {args.probe_rate:g} req/s; "
            f"Argon2id m={ARGON2_MEMORY_KIB} KiB t={ARGON2_TIME_COST} p={ARGON2_PARALLELISM}, "
            f"median of {args.hash_rounds} verifies"
            + (" (--quick: figures are not meaningful)" if args.quick else ""),
        }
        text, _checks = report(configs, header, opts)
        print(text, end="", flush=True)
        if args.out:
            write_report(args.out, text)
        if args.keep:
            log(f"logs, pools and wrk output kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    except BenchError as e:
        failure = f"bench: error: {e}"
    except KeyboardInterrupt:
        failure = "bench: error: interrupted"
    except Exception as e:  # one line, never a traceback
        failure = f"bench: error: unexpected {type(e).__name__}: {e}".replace("\n", " ")
    # Servers and databases are gone by now (run_config's ExitStack); logs stay on failure.
    kept = keep_note(workdir)
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    print(failure + kept, file=sys.stderr)
    return 130 if failure.endswith("interrupted") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
