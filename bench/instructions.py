"""CPU instructions a sign-in or a refresh costs, counted by valgrind (callgrind).

    .venv/bin/python bench/instructions.py --op login --db sqlite --n 300
    .venv/bin/python bench/instructions.py --op refresh --db postgres --n 600

Seconds on this machine drift by more than the changes worth measuring (a virtual machine's
neighbours); an instruction count does not: the same code, inputs and hash seed give the same
total within a fraction of a percent, whatever else the machine is doing. So an A/B of a
change to the request path is two runs of this script, one per commit.

The application runs in this process (its lifespan, a real database: a SQLite file, or a
fresh PostgreSQL database), driven through httpx's ASGI transport, so the count covers the
whole request path (routing, validation, the statements, token signing) plus the client's
own share, and no network. The Argon2id verify is replaced by an instant answer: it is the
same for every commit, and would drown the rest. The script runs itself under valgrind
twice, with no operation and with `--n` of them (each after the same start-up and warm-up);
the difference over `--n` is the figure. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASSWORD = "bench horse battery staple"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
USERS = 8
WARM_UP = 50


async def _drive(db: str, op: str, n: int, pg_url: str) -> None:
    """Start the application, make `USERS` users, warm up, then run `op` `n` times."""
    import asyncpg
    import httpx

    from conductor_api import migrate
    from conductor_api.app import create_app
    from conductor_api.config import load_settings

    data = Path(tempfile.mkdtemp(prefix="conductor-instructions-"))
    database_url, name = None, ""
    if db == "postgres":
        name = f"instructions_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(pg_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        database_url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    # Secrets made and kept in the data directory, as `serve` makes them.
    settings = load_settings(
        _env_file=None,
        conductor_data_dir=data,
        database_url=database_url,
        allow_registration=True,
        max_registrations_per_ip=1_000_000,
    )
    try:
        await asyncio.to_thread(migrate.upgrade, settings)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                for i in range(USERS):
                    body = {"username": f"user{i}", "password": PASSWORD}
                    response = await client.post("/api/v1/auth/register", json=body)
                    response.raise_for_status()

                async def instant(password: str, stored: str) -> tuple[bool, str | None]:
                    return True, None

                app.state.container.hasher.verify = instant
                token = ""
                for i in range(WARM_UP + n):
                    if op == "login" or not token:
                        # A fingerprint: each login also replaces that device's session.
                        body = {
                            "username": f"user{i % USERS}", "password": PASSWORD,
                            "device_name": "bench", "device_fingerprint": f"fp{i % USERS}",
                        }  # fmt: skip
                        response = await client.post("/api/v1/auth/login", json=body)
                    else:
                        body = {"refresh_token": token}
                        response = await client.post("/api/v1/auth/refresh", json=body)
                    response.raise_for_status()
                    token = response.json()["refresh_token"]
    finally:
        if name:
            admin = await asyncpg.connect(pg_url)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


def _start(args: argparse.Namespace, n: int, workdir: Path) -> subprocess.Popen[str]:
    """A whole run of this script with `n` operations, under callgrind."""
    out = workdir / f"callgrind-{n}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    command += [__file__, "--inner", str(n), "--op", args.op, "--db", args.db]
    command += ["--pg-url", args.pg_url]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


def _count(proc: subprocess.Popen[str], n: int) -> int:
    """The instructions the run counted (valgrind's "Collected" line)."""
    _, stderr = proc.communicate()
    found = re.search(r"Collected : (\d+)", stderr)
    if proc.returncode != 0 or found is None:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"instructions: error: the run with {n} operations failed: {last}")
    return int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=("login", "refresh"), default="login")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--n", type=int, default=300, help="operations counted (300)")
    p.add_argument("--pg-url", default=ADMIN_URL, help="PostgreSQL server (its admin database)")
    p.add_argument("--inner", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner is not None:
        asyncio.run(_drive(args.db, args.op, args.inner, args.pg_url))
        return
    if args.n < 1:
        p.error("--n must be at least 1")
    if shutil.which("valgrind") is None:
        sys.exit("instructions: error: valgrind not found (Debian: apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="conductor-callgrind-"))
    # Side by side: instructions do not depend on what else runs.
    runs = {n: _start(args, n, workdir) for n in (0, args.n)}
    base, full = (_count(proc, n) for n, proc in runs.items())
    per = (full - base) / args.n
    print(f"{args.op} on {args.db}: {per / 1e6:.2f} M instructions each ({args.n} counted)")


if __name__ == "__main__":
    main()
