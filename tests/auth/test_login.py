"""POST /auth/login: the token pair, the session row it starts, and every way it refuses."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
from sqlalchemy import select, text, update

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.sessions.models import DeviceSession
from conductor_api.users.models import User
from tests.conftest import (
    CLIENT_IP,
    PASSWORD,
    TABLES,
    Account,
    add_user,
    bearer,
    login,
    tokens,
)

LOGIN = "/api/v1/auth/login"
TOKEN = "/api/v1/auth/token"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
AGENT = "Conductor/2.3 (Android 14; Pixel 8)"
# "alice" in full-width letters (U+FF41 ...): NFKC turns it into plain "alice".
FULLWIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45"
PAIR_FIELDS = {
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "refresh_expires_in",
    "session_id",
    "device_token",  # a sign-in's answer (trusted devices); a refresh has none
}


async def session_row(container: Container, session_id: str | uuid.UUID) -> DeviceSession:
    """The session as the database holds it."""
    async with container.sessionmaker() as db:
        row = await db.scalar(
            select(DeviceSession).where(DeviceSession.id == uuid.UUID(str(session_id)))
        )
    assert row is not None
    return row


async def user_sessions(container: Container, user_id: uuid.UUID) -> list[DeviceSession]:
    """Every session row of a user, oldest first."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(DeviceSession)
            .where(DeviceSession.user_id == user_id)
            .order_by(DeviceSession.created_at)
        )
        return list(rows.all())


async def database_text(container: Container) -> str:
    """Every row of every table, as one string to search for secrets."""
    parts: list[str] = []
    async with container.engine.connect() as conn:
        for table in TABLES:
            rows = await conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
            parts.extend(repr(tuple(row)) for row in rows)
    return "\n".join(parts)


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """POST /auth/refresh."""
    return await client.post(REFRESH, json={"refresh_token": token})


def without_request_id(response: httpx.Response) -> dict[str, str]:
    """The response headers, minus the one that differs on every request."""
    return {k: v for k, v in response.headers.items() if k != "x-request-id"}


class TestSuccess:
    async def test_token_pair(self, client: httpx.AsyncClient, alice: Account) -> None:
        response = await login(client, fingerprint="device-1")
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["x-content-type-options"] == "nosniff"
        body: dict[str, Any] = response.json()
        assert set(body) == PAIR_FIELDS
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 1800
        assert body["refresh_expires_in"] == 604800
        assert str(uuid.UUID(body["session_id"])) == body["session_id"]
        assert body["access_token"] != body["refresh_token"]
        me = await client.get(ME, headers=bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json()["id"] == str(alice.id)

    async def test_session_row_records_the_device(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        body = await tokens(
            client, device="Pixel 8 Pro", fingerprint="fp-1234", **{"User-Agent": AGENT}
        )
        row = await session_row(container, body["session_id"])
        now = container.clock.now()
        assert row.user_id == alice.id
        assert row.device_name == "Pixel 8 Pro"
        assert row.device_fingerprint == "fp-1234"
        assert row.ip_address == CLIENT_IP
        assert row.user_agent == AGENT
        assert row.created_at == now
        assert row.last_used_at == now
        assert row.revoked_at is None
        assert (row.expires_at - now).total_seconds() == 604800

    async def test_only_a_hash_of_the_refresh_token_is_stored(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        body = await tokens(client)
        row = await session_row(container, body["session_id"])
        refresh_token = body["refresh_token"]
        assert row.refresh_token_hash != refresh_token
        assert row.refresh_token_hash == hashlib.sha256(refresh_token.encode()).hexdigest()
        dump = await database_text(container)
        assert body["session_id"].replace("-", "") in dump.replace("-", "")  # the dump works
        assert refresh_token not in dump
        assert body["access_token"] not in dump
        # Not even the signature part alone.
        assert refresh_token.rsplit(".", 1)[1] not in dump

    async def test_success_event(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        body = await tokens(client, **{"User-Agent": AGENT})
        async with container.sessionmaker() as db:
            events = list(await db.scalars(select(SecurityEvent)))
        assert [(e.type, e.user_id, e.session_id) for e in events] == [
            ("login_succeeded", alice.id, uuid.UUID(body["session_id"]))
        ]
        assert events[0].ip_address == CLIENT_IP
        assert events[0].user_agent == AGENT


class TestUsernameMatching:
    async def test_case_insensitive(self, client: httpx.AsyncClient, alice: Account) -> None:
        for name in ("ALICE", "Alice", "aLiCe"):
            response = await login(client, username=name)
            assert response.status_code == 200, (name, response.text)

    async def test_after_nfkc(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        response = await login(client, username=FULLWIDTH_ALICE)
        assert response.status_code == 200, response.text
        row = await session_row(container, response.json()["session_id"])
        assert row.user_id == alice.id
        response = await login(client, username=FULLWIDTH_ALICE.upper())
        assert response.status_code == 200, response.text

    async def test_a_different_name_is_not_matched(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await login(client, username="alice2")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"


class TestWrongCredentials:
    async def test_wrong_password_and_unknown_user_look_the_same(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        wrong = await login(client, password=PASSWORD + "!")
        unknown = await login(client, username="mallory")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert wrong.json()["code"] == "invalid_credentials"
        assert set(wrong.json()) == {"detail", "code"}
        assert without_request_id(wrong) == without_request_id(unknown)
        assert PASSWORD not in wrong.text
        assert await user_sessions(container, alice.id) == []

    async def test_refusals_of_the_sign_in_paths_are_uncacheable(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        refusals = [
            await login(client, password=PASSWORD + "!"),
            await client.post(LOGIN, json={"username": "alice"}),
            await client.post("/api/v1/auth/refresh", json={"refresh_token": "x.y.z"}),
            await client.post("/api/v1/auth/refresh", json={}),
        ]
        assert [r.status_code for r in refusals] == [401, 422, 401, 422]
        for refused in refusals:
            assert refused.headers["cache-control"] == "no-store", refused.text
            assert refused.headers["pragma"] == "no-cache"
        # Other paths keep their own caching rules.
        me = await client.get("/api/v1/auth/me")
        assert me.status_code == 401 and "cache-control" not in me.headers

    async def test_failures_are_recorded(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await login(client, password=PASSWORD + "!")
        await login(client, username="mallory")
        async with container.sessionmaker() as db:
            events = list(await db.scalars(select(SecurityEvent).order_by(SecurityEvent.user_id)))
        assert sorted((e.type, e.username_key, e.user_id) for e in events) == sorted(
            [("login_failed", "alice", alice.id), ("login_failed", "mallory", None)]
        )


class TestValidation:
    async def post(self, client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
        body = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8", **fields}
        return await client.post(LOGIN, json={k: v for k, v in body.items() if v is not None})

    async def test_device_name_is_required(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        for device_name in (None, "", "x" * 101):
            response = await self.post(client, device_name=device_name)
            assert response.status_code == 422, (device_name, response.text)
            assert PASSWORD not in response.text
        assert await user_sessions(container, alice.id) == []

    async def test_device_name_limits(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        for device_name in ("x", "x" * 100):
            response = await self.post(client, device_name=device_name)
            assert response.status_code == 200, response.text
        # Sorted: the frozen clock gives both sessions one created_at.
        names = sorted(s.device_name for s in await user_sessions(container, alice.id))
        assert names == ["x", "x" * 100]

    async def test_device_name_has_no_control_characters(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        """It is shown in lists and on the operator's terminal: a line break or an escape
        sequence could forge lines there or drive the terminal."""
        for device_name in (
            "Pixel 9\n00000000 active",
            "Pixel\r",
            "a\tb",
            "\x1b[2J",
            "x\x7f",
            "\x9b2J",
        ):
            response = await self.post(client, device_name=device_name)
            assert response.status_code == 422, (device_name, response.text)
            assert response.json()["detail"][0]["loc"] == ["body", "device_name"]
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        response = await client.post(TOKEN, data={**form, "device_name": "Pixel 8\r\nforged"})
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
        assert await user_sessions(container, alice.id) == []
        for device_name in ("Pixel 8 Pro, 화면 📱", "Ünïcödé\u00a0name"):
            response = await self.post(client, device_name=device_name)
            assert response.status_code == 200, (device_name, response.text)

    async def test_fingerprint_length(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        response = await self.post(client, device_fingerprint="f" * 257)
        assert response.status_code == 422, response.text
        assert await user_sessions(container, alice.id) == []
        response = await self.post(client, device_fingerprint="f" * 256)
        assert response.status_code == 200, response.text
        rows = await user_sessions(container, alice.id)
        assert [s.device_fingerprint for s in rows] == ["f" * 256]


class TestFingerprint:
    async def test_same_fingerprint_replaces_the_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client, fingerprint="phone-1")
        clock.advance(seconds=5)
        second = await tokens(client, fingerprint="phone-1")
        assert second["session_id"] != first["session_id"]

        old = await session_row(container, first["session_id"])
        assert old.revoked_at == clock.now()
        assert old.revoked_reason == "replaced"
        assert (await session_row(container, second["session_id"])).revoked_at is None

        me = await client.get(ME, headers=bearer(first["access_token"]))
        assert me.status_code == 401
        assert me.json()["code"] == "invalid_token"
        assert me.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        response = await refresh(client, first["refresh_token"])
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"

        assert (await client.get(ME, headers=bearer(second["access_token"]))).status_code == 200
        assert (await refresh(client, second["refresh_token"])).status_code == 200

    async def test_different_fingerprints_keep_both(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        phone = await tokens(client, device="Pixel 8", fingerprint="phone-1")
        tablet = await tokens(client, device="Pixel Tablet", fingerprint="tablet-1")
        rows = await user_sessions(container, alice.id)
        assert {str(s.id) for s in rows} == {phone["session_id"], tablet["session_id"]}
        assert all(s.revoked_at is None for s in rows)
        for pair in (phone, tablet):
            assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200

    async def test_another_users_fingerprint_is_not_touched(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await add_user(container, "bob")
        bob = await tokens(client, username="bob", fingerprint="shared-1")
        await tokens(client, fingerprint="shared-1")
        assert (await session_row(container, bob["session_id"])).revoked_at is None

    async def test_without_fingerprint_every_login_is_a_new_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await tokens(client)
        await tokens(client)
        rows = await user_sessions(container, alice.id)
        assert len(rows) == 2
        assert all(s.revoked_at is None and s.device_fingerprint is None for s in rows)


class TestDisabledAccount:
    async def disable(self, container: Container, user_id: uuid.UUID) -> None:
        async with container.sessionmaker.begin() as db:
            await db.execute(update(User).where(User.id == user_id).values(is_active=False))

    async def test_right_password_is_403(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await self.disable(container, alice.id)
        response = await login(client)
        assert response.status_code == 403
        assert response.json()["code"] == "account_disabled"
        assert "access_token" not in response.text
        assert await user_sessions(container, alice.id) == []

    async def test_wrong_password_is_401(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await self.disable(container, alice.id)
        response = await login(client, password=PASSWORD + "!")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"
        unknown = await login(client, username="mallory")
        assert response.json() == unknown.json()
        assert await user_sessions(container, alice.id) == []
