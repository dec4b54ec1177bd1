"""DPoP cost: `/auth/me` with a bound token and a fresh proof per request (as a phone sends),
beside the bearer path and `/health/live` on the same server; and bound refreshes.

    .venv/bin/python bench/dpop.py --db sqlite --duration 10
    .venv/bin/python bench/dpop.py --db postgres --duration 10

A proof is accepted once, so wrk cannot reuse one: the proofs are signed before the run
(ES256, one key, iat = now) and wrk sends each of them once, from a file. Refreshes form a
chain per session (each rotation spends the token before), so they are driven by an async
Python client with one chain per connection; its own cost is included (it signs a proof
per refresh), so that figure is a lower bound for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conductor_api.security.dpop import access_token_hash
from conductor_bench.servers import Postgres, Server, clean_env, find_server

API = "/api/v1/auth"
PASSWORD = "bench horse battery staple"
LUA = """
local requests = {}
local i = 0
function init(args)
  for line in io.lines(os.getenv("BENCH_DPOP_FILE")) do
    local auth, proof = line:match("([^\\t]+)\\t([^\\t]*)")
    local headers = {["Authorization"] = auth}
    if proof ~= "" then headers["DPoP"] = proof end
    requests[#requests + 1] = wrk.format("GET", os.getenv("BENCH_PATH"), headers)
  end
end
function request()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end
"""


class Key:
    """The phone's key."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))

    def proof(self, method: str, url: str, token: str | None = None) -> str:
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())
        }  # fmt: skip
        if token is not None:
            claims["ath"] = access_token_hash(token)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        return jwt.encode(claims, self.private, algorithm="ES256", headers=headers)


def wrk(
    server: Server, path: str, lines: list[str] | None, duration: int, work: Path
) -> dict[str, float]:
    """wrk -t1 -c16 on `path`; with `lines`, each request from the file (header values)."""
    env = {**os.environ, "BENCH_PATH": path}
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s", "--latency"]
    if lines is not None:
        (work / "requests.txt").write_text("\n".join(lines) + "\n")
        (work / "dpop.lua").write_text(LUA)
        env["BENCH_DPOP_FILE"] = str(work / "requests.txt")
        cmd += ["-s", str(work / "dpop.lua")]
    out = subprocess.run(
        [*cmd, server.url + path], env=env, capture_output=True, text=True, check=True
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rate": rate,
        "requests": total,
        "errors": int(bad.group(1)) if bad else 0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
    }


async def refresh_rate(server: Server, key: Key | None, duration: float, chains: int) -> float:
    """Rotations per second over `chains` concurrent sessions, each refreshing in turn."""
    url = server.url + API + "/refresh"
    async with httpx.AsyncClient(timeout=10) as client:

        async def login() -> str:
            headers = {"DPoP": key.proof("POST", server.url + API + "/login")} if key else {}
            body = {"username": "bench", "password": PASSWORD, "device_name": "bench"}
            r = await client.post(server.url + API + "/login", json=body, headers=headers)
            r.raise_for_status()
            token: str = r.json()["refresh_token"]
            return token

        tokens = [await login() for _ in range(chains)]
        done = 0
        deadline = time.monotonic() + duration

        async def chain(token: str) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                headers = {"DPoP": key.proof("POST", url)} if key else {}
                r = await client.post(url, json={"refresh_token": token}, headers=headers)
                r.raise_for_status()
                token = r.json()["refresh_token"]
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(chain(t) for t in tokens))
        return done / (time.monotonic() - started)


def run(db: str, duration: int, pg: str, refresh: bool = True) -> dict[str, Any]:
    binary = find_server(None)
    work = Path(tempfile.mkdtemp(prefix="dpop-bench-"))
    env = clean_env(
        CONDUCTOR_DATA_DIR=str(work / "data"),
        MAX_FAILED_LOGINS_PER_IP="1000000",
        LOG_LEVEL="warning",
        PASSWORD_HASH_CONCURRENCY="1",
    )
    postgres = None
    database = None
    if db == "postgres":
        postgres = Postgres(pg, sys.executable)
        database = postgres.create()
        env["DATABASE_URL"] = postgres.url(database)
    subprocess.run(
        [binary, "users", "create", "bench", "--password-stdin"], input=PASSWORD + "\n",
        env=env, cwd=work, capture_output=True, text=True, check=True,
    )  # fmt: skip
    server = Server(binary, work, 1, env)
    try:
        server.start()
        key = Key()
        body = {"username": "bench", "password": PASSWORD, "device_name": "bench"}
        bearer = httpx.post(server.url + API + "/login", json=body).json()["access_token"]
        bound = httpx.post(
            server.url + API + "/login", json=body,
            headers={"DPoP": key.proof("POST", server.url + API + "/login")},
        ).json()  # fmt: skip
        assert bound["token_type"] == "DPoP", bound
        results: dict[str, Any] = {"db": db}
        results["health"] = wrk(server, "/health/live", None, duration, work)
        results["me_bearer"] = wrk(server, API + "/me", [f"Bearer {bearer}\t"], duration, work)
        # Enough proofs for the run at up to ~6,000/s; signed just before it starts.
        me = server.url + API + "/me"
        token = bound["access_token"]
        lines = [f"DPoP {token}\t{key.proof('GET', me, token)}" for _ in range(6000 * duration)]
        results["me_dpop"] = wrk(server, API + "/me", lines, duration, work)
        if refresh:
            results["refresh_bearer"] = asyncio.run(refresh_rate(server, None, duration, 8))
            results["refresh_dpop"] = asyncio.run(refresh_rate(server, Key(), duration, 8))
        return results
    finally:
        server.stop()
        if postgres is not None and database is not None:
            postgres.drop(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--no-refresh", action="store_true", help="only the /auth/me figures")
    args = parser.parse_args()
    r = run(args.db, args.duration, args.pg_url, not args.no_refresh)
    health = r["health"]["rate"]
    print(f"{args.db}, 1 worker, wrk -t1 -c16 -d{args.duration}s")
    print(f"/health/live            {health:8.0f}/s")
    for name in ("me_bearer", "me_dpop"):
        m = r[name]
        print(
            f"/auth/me {name[3:]:<14} {m['rate']:8.0f}/s  {m['rate'] / health:.2f}x  "
            f"p99 {m['p99_ms']:.1f} ms  non-2xx {m['errors']} of {m['requests']}"
        )
    for name in ("refresh_bearer", "refresh_dpop") if "refresh_dpop" in r else ():
        print(f"/auth/refresh {name[8:]:<9} {r[name]:8.0f}/s  {r[name] / health:.2f}x")


if __name__ == "__main__":
    main()
