"""Seeding through the API: users registered, logged in, and the token pools wrk reads."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

from conductor_bench.common import BenchError


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
