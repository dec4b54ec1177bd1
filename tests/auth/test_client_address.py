"""Brute-force protection per client address (MAX_FAILED_LOGINS_PER_IP within LOCKOUT_MINUTES),
and which address that is: the socket peer, or X-Forwarded-For behind a trusted proxy only."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.sessions.models import DeviceSession
from tests.conftest import (
    CLIENT_IP,
    PASSWORD,
    Account,
    add_user,
    login,
    make_client,
    tokens,
)

WRONG = "wrong password, but long enough"
OTHER_IP = "198.51.100.9"
REFRESH = "/api/v1/auth/refresh"
LIMITS = {"max_failed_logins_per_ip": 3, "max_failed_login_attempts": 100}
PROXY_NET = ipaddress.ip_network("203.0.113.0/24")  # CLIENT_IP is in it


def assert_blocked(response: httpx.Response, retry_after: int) -> None:
    """429 too_many_attempts with `Retry-After: retry_after`."""
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "too_many_attempts"
    assert response.headers["retry-after"] == str(retry_after)


async def fail(client: httpx.AsyncClient, username: str, **headers: str) -> None:
    """One wrong-password login that must be a plain 401."""
    response = await login(client, username, WRONG, **headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_credentials"


async def address_rows(container: Container) -> dict[str, int]:
    """The per-address counters: address -> failures."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(select(LoginThrottle).where(LoginThrottle.scope == "ip"))
        return {r.key: r.failures for r in rows}


async def session_address(container: Container, session_id: str) -> str:
    """The client address a session recorded."""
    async with container.sessionmaker() as db:
        row = await db.get(DeviceSession, uuid.UUID(session_id))
    assert row is not None
    return row.ip_address


async def assert_recorded(
    client: httpx.AsyncClient, container: Container, cases: list[tuple[str, str]]
) -> None:
    """For each `X-Forwarded-For` header, the address a login's session records."""
    body = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}
    for header, expected in cases:
        response = await client.post(
            "/api/v1/auth/login", json=body, headers={"X-Forwarded-For": header}
        )
        assert response.status_code == 200, (header, response.text)
        recorded = await session_address(container, response.json()["session_id"])
        assert recorded == expected, header


class TestAddressLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return LIMITS

    async def test_failures_across_names_block_the_address(
        self, app: FastAPI, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        for name in ("alice", "bob", "carol"):
            await fail(client, name)
        # Even the right password, for a name that has failed nothing from here.
        assert_blocked(await login(client), retry_after=900)
        assert_blocked(await login(client, "dave", WRONG), retry_after=900)
        async with container.sessionmaker() as db:
            alice_row = await db.get(LoginThrottle, ("user", "alice"))
            dave_row = await db.get(LoginThrottle, ("user", "dave"))
        # A refused attempt is no check of the name: its count is untouched.
        assert alice_row is not None
        assert alice_row.failures == 1
        assert dave_row is None
        assert set(await address_rows(container)) == {CLIENT_IP}

        async with make_client(app, OTHER_IP) as other:
            await tokens(other)

    async def test_an_ipv6_client_is_its_64(
        self, app: FastAPI, alice: Account, container: Container
    ) -> None:
        # One subscriber's /64: every address in it is one client for the limit.
        for host in ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::9", "2001:db8:1:2:ffff:1:2:3"):
            async with make_client(app, host) as c:
                await fail(c, "bob")
        async with make_client(app, "2001:db8:1:2:dead:beef:0:1") as c:
            assert_blocked(await login(c), retry_after=900)
        assert await address_rows(container) == {"2001:db8:1:2::/64": 3}
        # Another /64 is another client; sessions and events keep the address itself.
        async with make_client(app, "2001:db8:1:3::1") as neighbour:
            pair = await tokens(neighbour)
        assert await session_address(container, pair["session_id"]) == "2001:db8:1:3::1"

    async def test_window_expires(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        for name in ("bob", "carol", "dave"):
            await fail(client, name)
        clock.advance(minutes=5)
        assert_blocked(await login(client), retry_after=600)
        clock.advance(minutes=10)
        await tokens(client)

    async def test_successes_do_not_count(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        for _ in range(4):
            await tokens(client)
        assert (await address_rows(container)).get(CLIENT_IP, 0) == 0
        for name in ("bob", "carol", "dave"):
            await fail(client, name)
        assert_blocked(await login(client), retry_after=900)

    async def test_forged_refresh_tokens_count(
        self, app: FastAPI, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        refresh_token: str = pair["refresh_token"]
        tampered = refresh_token[:-4] + ("AAAA" if not refresh_token.endswith("AAAA") else "BBBB")
        for forged in ("garbage", tampered, pair["access_token"]):
            response = await client.post(REFRESH, json={"refresh_token": forged})
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "invalid_refresh_token"
        blocked = await client.post(REFRESH, json={"refresh_token": "garbage"})
        assert_blocked(blocked, retry_after=900)
        assert_blocked(await login(client), retry_after=900)

        # A genuine refresh token still works, from anywhere: a block signs nobody out.
        async with make_client(app, OTHER_IP) as other:
            refreshed = await other.post(REFRESH, json={"refresh_token": refresh_token})
            assert refreshed.status_code == 200, refreshed.text
        again = await client.post(
            REFRESH, json={"refresh_token": refreshed.json()["refresh_token"]}
        )
        assert again.status_code == 200, again.text


class TestSharedAddress:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return LIMITS

    async def test_logins_in_flight_are_not_failures(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        # Many people behind one NAT sign in at once: more logins in flight than the
        # address may fail, and every one of them is right.
        names = [f"user{i}" for i in range(8)]
        for name in names:
            await add_user(container, name)
        responses = await asyncio.gather(*(login(client, name) for name in names))
        assert [r.status_code for r in responses] == [200] * len(names)
        assert await address_rows(container) == {}


class TestForwardedForIgnored:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return LIMITS

    async def test_without_trusted_proxies(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client, **{"X-Forwarded-For": "198.51.100.77"})
        assert await session_address(container, pair["session_id"]) == CLIENT_IP
        for i in range(3):
            await fail(client, "bob", **{"X-Forwarded-For": f"198.51.100.{i + 1}"})
        blocked = await login(client, **{"X-Forwarded-For": "198.51.100.200"})
        assert_blocked(blocked, retry_after=900)
        assert set(await address_rows(container)) == {CLIENT_IP}


class TestTrustedProxy:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**LIMITS, "trusted_proxies": [PROXY_NET]}

    async def test_forwarded_address_is_recorded_and_limited(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        a, b = {"X-Forwarded-For": "198.51.100.20"}, {"X-Forwarded-For": "198.51.100.21"}
        pair = await tokens(client, **a)
        assert await session_address(container, pair["session_id"]) == "198.51.100.20"
        for name in ("bob", "carol", "dave"):
            await fail(client, name, **a)
        assert_blocked(await login(client, **a), retry_after=900)
        # Another client behind the same proxy has a count of its own.
        await fail(client, "bob", **b)
        await tokens(client, **b)
        # Failures only: the refused attempt is not one.
        assert await address_rows(container) == {"198.51.100.20": 3, "198.51.100.21": 1}

    async def test_spoofed_hops_on_the_left_do_not_escape_the_limit(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # The proxy appends the address it saw; whatever the client sent stays on the left.
        for i in range(3):
            await fail(client, "bob", **{"X-Forwarded-For": f"192.0.2.{i}, 198.51.100.40"})
        blocked = await login(client, **{"X-Forwarded-For": "192.0.2.99, 198.51.100.40"})
        assert_blocked(blocked, retry_after=900)
        assert set(await address_rows(container)) == {"198.51.100.40"}

    async def test_which_hop_is_the_client(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        cases: list[tuple[list[tuple[str, str]], str]] = [
            ([("X-Forwarded-For", "10.9.8.7, 198.51.100.30")], "198.51.100.30"),
            # Two proxies of ours: the right-most untrusted hop is the client.
            ([("X-Forwarded-For", "198.51.100.31, 203.0.113.50")], "198.51.100.31"),
            (
                [("X-Forwarded-For", "10.9.8.7"), ("X-Forwarded-For", "198.51.100.32")],
                "198.51.100.32",
            ),
            ([("X-Forwarded-For", " 2001:db8::1 ")], "2001:db8::1"),
            ([("X-Forwarded-For", "not-an-address, 198.51.100.33")], "198.51.100.33"),
            # Nothing usable from the proxy: the proxy's own address, never a 500.
            ([("X-Forwarded-For", "not-an-address")], CLIENT_IP),
            ([("X-Forwarded-For", "198.51.100.34, <script>")], CLIENT_IP),
            ([("X-Forwarded-For", "")], CLIENT_IP),
            ([("X-Forwarded-For", "," * 50)], CLIENT_IP),
            ([], CLIENT_IP),
        ]
        body = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}
        for headers, expected in cases:
            response = await client.post("/api/v1/auth/login", json=body, headers=headers)
            assert response.status_code == 200, (headers, response.text)
            recorded = await session_address(container, response.json()["session_id"])
            assert recorded == expected, headers

    async def test_hops_with_ports_are_read_as_addresses(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        cases = [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
            ("10.0.0.1, 198.51.100.60:1234", "198.51.100.60"),
            # Proxies of ours with ports are walked past like any trusted hop.
            ("198.51.100.61:80, 203.0.113.9:8443", "198.51.100.61"),
            # Malformed ports are no address: the proxy's own address, never a 500.
            ("1.2.3.4:99999", CLIENT_IP),
            ("1.2.3.4:", CLIENT_IP),
            ("[2001:db8::1]x", CLIENT_IP),
            ("[2001:db8::1", CLIENT_IP),
        ]
        await assert_recorded(client, container, cases)

    async def test_zones_and_ipv4_mapped_addresses_are_plain_addresses(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        cases = [
            # A zone names an interface of the proxy: no part of the client's address (and
            # a long one overflowed the column on PostgreSQL: a 500).
            ("fe80::1%" + "a" * 100, "fe80::1"),
            ("fe80::2%eth0", "fe80::2"),
            # A dual-stack proxy writes an IPv4 client as IPv4-mapped IPv6.
            ("::ffff:198.51.100.70", "198.51.100.70"),
            ("198.51.100.71, ::ffff:203.0.113.9", "198.51.100.71"),
        ]
        await assert_recorded(client, container, cases)

    async def test_a_proxy_seen_as_ipv4_mapped_is_trusted(
        self, app: FastAPI, alice: Account, container: Container
    ) -> None:
        # A server listening on "::" sees an IPv4 proxy as ::ffff:a.b.c.d.
        async with make_client(app, "::ffff:203.0.113.5") as proxied:
            pair = await tokens(proxied, **{"X-Forwarded-For": "198.51.100.80"})
        assert await session_address(container, pair["session_id"]) == "198.51.100.80"

    async def test_an_untrusted_peer_is_not_believed(
        self, app: FastAPI, alice: Account, container: Container
    ) -> None:
        async with make_client(app, OTHER_IP) as outsider:
            pair = await tokens(outsider, **{"X-Forwarded-For": "198.51.100.50"})
        assert await session_address(container, pair["session_id"]) == OTHER_IP


class TestTrustedProxyWrittenAsIpv4Mapped:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        # As an operator may copy it from a dual-stack server's log.
        return {**LIMITS, "trusted_proxies": "::ffff:203.0.113.0/120"}

    async def test_still_matches_its_proxy(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client, **{"X-Forwarded-For": "198.51.100.90"})
        assert await session_address(container, pair["session_id"]) == "198.51.100.90"
