"""The server under test: a `conductor-api serve` process group, its PostgreSQL database,
and where the server's executable and interpreter are."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from conductor_bench.common import HOST, REPO, BenchError
from conductor_bench.system import free_port, proc_children, proc_cmdline


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Conductor setting, plus `extra`."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "ANDROID_API_", "CONDUCTOR_", "DATABASE_", "CORS_", "KEY_"))
        and k
        not in (
            "ALLOW_REGISTRATION",
            "TRUSTED_PROXIES",
            "LOG_FORMAT",
            "LOG_LEVEL",
            "MAX_FAILED_LOGIN_ATTEMPTS",
            "MAX_FAILED_LOGINS_PER_IP",
            "MAX_REGISTRATIONS_PER_IP",
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
        """The processes that serve requests: the workers `serve` supervises (one process
        per worker, each on its own SO_REUSEPORT socket), not the supervisor."""
        assert self.proc is not None
        return sorted(
            pid
            for pid in proc_children(self.proc.pid)
            if "conductor_api.serving.worker" in proc_cmdline(pid)
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


@dataclass(frozen=True)
class Setup:
    """What every benchmark run needs before its first server."""

    wrk: str
    server_bin: str
    server_python: str
    dbs: list[str]  # "sqlite", "postgres"
    postgres: Postgres | None
    pg_version: str


def set_up(db: str, server: str | None, pg_url: str) -> Setup:
    """Find wrk and the server (and its Python); `db` is sqlite, postgres or both."""
    wrk = shutil.which("wrk")
    if not wrk:
        raise BenchError("wrk not found: `apt-get install -y wrk` (or `make tools`)")
    server_bin = find_server(server)
    server_python = server_python_for(server_bin)
    dbs = ["sqlite", "postgres"] if db == "both" else [db]
    postgres = Postgres(pg_url, server_python) if "postgres" in dbs else None
    pg_version = postgres.version() if postgres is not None else ""
    return Setup(wrk, server_bin, server_python, dbs, postgres, pg_version)
