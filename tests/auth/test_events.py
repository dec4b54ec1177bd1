"""GET /auth/events: the caller's own security events, produced by real actions."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import httpx

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.events.repository import new_event_id
from tests.conftest import CLIENT_IP, PASSWORD, Account, add_user, bearer, login, tokens

EVENTS = "/api/v1/auth/events"
REFRESH = "/api/v1/auth/refresh"
AGENT = "Conductor/2.3 (Android 14)"
EVENT_FIELDS = {"id", "type", "created_at", "ip_address", "user_agent", "session_id"}
ALL_TYPES = {
    "login_succeeded",
    "login_failed",
    "account_locked",
    "refresh_token_reused",
    "session_revoked",
    "password_changed",
}


def iso(moment: datetime) -> str:
    """A timestamp as the contract writes it."""
    return moment.isoformat().replace("+00:00", "Z")


async def list_events(
    client: httpx.AsyncClient, access_token: str, **params: Any
) -> list[dict[str, Any]]:
    """GET /auth/events, asserting success."""
    response = await client.get(EVENTS, headers=bearer(access_token), params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


def test_event_ids_sort_in_the_order_they_were_made() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # As SQLite stores them (hex text) too, and they are ordinary UUIDs (version 7).
    assert [i.hex for i in ids] == sorted(i.hex for i in ids)
    assert {(i.version, i.variant) for i in ids} == {(7, uuid.RFC_4122)}


class TestEventsOfRealActions:
    async def test_every_type_newest_first(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        ua = {"User-Agent": AGENT}
        expected: list[tuple[str, str, str | None]] = []

        def expect(type_: str, session_id: str | None = None) -> None:
            expected.append((iso(clock.now()), type_, session_id))

        clock.advance(seconds=1)
        assert (await login(client, password=PASSWORD + "!", **ua)).status_code == 401
        expect("login_failed")
        clock.advance(seconds=1)
        phone = await tokens(client, fingerprint="phone", **ua)
        expect("login_succeeded", phone["session_id"])
        clock.advance(seconds=1)
        tablet = await tokens(client, fingerprint="tablet", **ua)
        expect("login_succeeded", tablet["session_id"])
        clock.advance(seconds=1)
        spent = tablet["refresh_token"]
        rotated = await client.post(REFRESH, json={"refresh_token": spent}, headers=ua)
        assert rotated.status_code == 200
        clock.advance(seconds=30)
        reused = await client.post(REFRESH, json={"refresh_token": spent}, headers=ua)
        assert reused.json()["code"] == "refresh_token_reused"
        expect("refresh_token_reused", tablet["session_id"])
        expect("session_revoked", tablet["session_id"])
        clock.advance(seconds=1)
        laptop = await tokens(client, fingerprint="laptop", **ua)
        expect("login_succeeded", laptop["session_id"])
        clock.advance(seconds=1)
        changed = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "violet tugboat ladder 9"},
            headers={**bearer(phone["access_token"]), **ua},
        )
        assert changed.status_code == 204
        expect("password_changed", phone["session_id"])
        expect("session_revoked", laptop["session_id"])
        for _ in range(5):
            clock.advance(seconds=1)
            assert (await login(client, password=PASSWORD + "!", **ua)).status_code == 401
            expect("login_failed")
        expect("account_locked")
        clock.advance(seconds=1)

        body = await list_events(client, phone["access_token"], limit=200)
        assert {e["type"] for e in body} == ALL_TYPES
        for item in body:
            # Sign-ins also say how, and whether a second factor was used.
            extra = {"method", "mfa"} if item["type"] == "login_succeeded" else set()
            assert set(item) == EVENT_FIELDS | extra
            if extra:
                assert (item["method"], item["mfa"]) == ("password", False)
            assert str(uuid.UUID(item["id"])) == item["id"]
            assert item["created_at"].endswith("Z")
            assert item["ip_address"] == CLIENT_IP
            assert item["user_agent"] == AGENT
        stamps = [e["created_at"] for e in body]
        assert stamps == sorted(stamps, reverse=True)
        got = Counter((e["created_at"], e["type"], e["session_id"]) for e in body)
        assert got == Counter(expected)
        # Events of one instant in the order they happened: the lock after the failure that
        # caused it, the revocation after the reuse or the password change.
        assert [e["type"] for e in body[:2]] == ["account_locked", "login_failed"]
        types = [e["type"] for e in body]
        reuse = types.index("refresh_token_reused")
        assert types[reuse - 1] == "session_revoked"
        password_at = types.index("password_changed")
        assert types[password_at - 1] == "session_revoked"
        assert (body[-1]["type"], body[-1]["session_id"]) == ("login_failed", None)

    async def test_events_survive_the_session_they_name(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        old = await tokens(client)
        clock.advance(seconds=1)
        assert (
            await client.post("/api/v1/auth/logout", headers=bearer(old["access_token"]))
        ).status_code == 204
        clock.advance(seconds=1)
        new = await tokens(client)
        body = await list_events(client, new["access_token"])
        assert [(e["type"], e["session_id"]) for e in body] == [
            ("login_succeeded", new["session_id"]),
            ("session_revoked", old["session_id"]),
            ("login_succeeded", old["session_id"]),
        ]


class TestOwnEventsOnly:
    async def test_another_users_events_never_show(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await add_user(container, "bob")
        mine = await tokens(client)
        for _ in range(2):
            clock.advance(seconds=1)
            assert (await login(client, "bob", PASSWORD + "!")).status_code == 401
        clock.advance(seconds=1)
        assert (await login(client, "mallory", PASSWORD)).status_code == 401
        clock.advance(seconds=1)
        bob = await tokens(client, username="bob")

        alice_events = await list_events(client, mine["access_token"])
        assert [(e["type"], e["session_id"]) for e in alice_events] == [
            ("login_succeeded", mine["session_id"])
        ]
        bob_events = await list_events(client, bob["access_token"])
        assert [e["type"] for e in bob_events] == [
            "login_succeeded",
            "login_failed",
            "login_failed",
        ]
        assert mine["session_id"] not in {e["session_id"] for e in bob_events}

    async def test_needs_a_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get(EVENTS)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"] == "Bearer"


class TestLimit:
    async def add_events(self, container: Container, user: Account, count: int) -> list[str]:
        """`count` events a second apart, straight into the table; their ids, newest first."""
        start = container.clock.now() - timedelta(hours=1)
        ids: list[str] = []
        async with container.sessionmaker.begin() as db:
            for i in range(count):
                event_id = await events.record(
                    db, EventType.LOGIN_FAILED, now=start + timedelta(seconds=i),
                    username_key=user.username, user_id=user.id, ip_address=CLIENT_IP,
                )  # fmt: skip
                ids.append(str(event_id))
        return ids[::-1]

    async def test_limit_returns_the_newest(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        older = await self.add_events(container, alice, 3)
        pair = await tokens(client)
        body = await list_events(client, pair["access_token"], limit=2)
        assert len(body) == 2
        assert [e["type"] for e in body] == ["login_succeeded", "login_failed"]
        assert body[1]["id"] == older[0]
        assert len(await list_events(client, pair["access_token"], limit=200)) == 4

    async def test_default_is_50(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        ids = await self.add_events(container, alice, 60)
        pair = await tokens(client)
        body = await list_events(client, pair["access_token"])
        assert len(body) == 50
        assert body[0]["type"] == "login_succeeded"
        assert [e["id"] for e in body[1:]] == ids[:49]

    async def test_out_of_range_is_422(self, client: httpx.AsyncClient, alice: Account) -> None:
        pair = await tokens(client)
        # Only decimal digits are a count: not a float, a sign, spaces or an underscore.
        for limit in ("0", "201", "-1", "ten", "5.0", "+5", " 5", "5 ", "1_0", "\u0663"):
            response = await client.get(
                EVENTS, headers=bearer(pair["access_token"]), params={"limit": limit}
            )
            assert response.status_code == 422, (limit, response.text)
            assert response.json()["code"] == "validation_error"
        assert len(await list_events(client, pair["access_token"], limit="007")) == 1
