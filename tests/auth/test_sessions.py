"""The caller's device sessions: listing, revoking one, revoking the others, logging out,
and an operator disabling the account."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.sessions import service as sessions_service
from conductor_api.sessions.models import DeviceSession
from conductor_api.users import service as users
from tests.conftest import (
    CLIENT_IP,
    PASSWORD,
    Account,
    add_user,
    bearer,
    make_client,
    session_row,
    tokens,
)  # fmt: skip

SESSIONS = "/api/v1/auth/sessions"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
AGENT = "Conductor/2.3 (Android 14)"
SESSION_FIELDS = {
    "id",
    "device_name",
    "device_fingerprint",
    "ip_address",
    "user_agent",
    "created_at",
    "last_used_at",
    "expires_at",
    "current",
    "bound",
}


def iso(moment: datetime) -> str:
    """A timestamp as the contract writes it."""
    return moment.isoformat().replace("+00:00", "Z")


async def live_session_ids(container: Container, user_id: uuid.UUID) -> set[str]:
    """Ids of a user's unrevoked sessions."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(DeviceSession.id).where(
                DeviceSession.user_id == user_id, DeviceSession.revoked_at.is_(None)
            )
        )
        return {str(sid) for sid in rows}


async def revoked_event_sessions(container: Container, user_id: uuid.UUID) -> list[str]:
    """The sessions named by the user's `session_revoked` events."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(SecurityEvent.session_id).where(
                SecurityEvent.user_id == user_id, SecurityEvent.type == "session_revoked"
            )
        )
        return [str(sid) for sid in rows]


async def assert_refused(client: httpx.AsyncClient, access_token: str) -> None:
    """The access token is refused as the contract says (RFC 6750 section 3)."""
    response = await client.get(ME, headers=bearer(access_token))
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def assert_refresh_refused(client: httpx.AsyncClient, refresh_token: str) -> None:
    """The refresh token no longer refreshes."""
    response = await client.post(REFRESH, json={"refresh_token": refresh_token})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_refresh_token"


async def assert_alive(client: httpx.AsyncClient, access_token: str) -> None:
    """The access token still works."""
    response = await client.get(ME, headers=bearer(access_token))
    assert response.status_code == 200, response.text


class TestList:
    async def test_own_active_sessions_most_recent_first(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await add_user(container, "bob")
        start = clock.now()
        phone = await tokens(client, device="Pixel 8", fingerprint="phone", **{"User-Agent": AGENT})
        clock.advance(minutes=1)
        tablet = await tokens(client, device="Pixel Tablet", fingerprint="tablet")
        clock.advance(minutes=1)
        laptop = await tokens(client, device="Laptop")
        clock.advance(minutes=1)
        gone = await tokens(client, device="Old phone", fingerprint="old")
        assert (await client.post(LOGOUT, headers=bearer(gone["access_token"]))).status_code == 204
        await tokens(client, username="bob", device="Bob's phone")
        clock.advance(minutes=1)
        # The phone refreshes: it is now the most recently used.
        refreshed = await client.post(REFRESH, json={"refresh_token": phone["refresh_token"]})
        assert refreshed.status_code == 200

        response = await client.get(SESSIONS, headers=bearer(tablet["access_token"]))
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        assert [s["id"] for s in body] == [
            phone["session_id"],
            laptop["session_id"],
            tablet["session_id"],
        ]
        for item in body:
            assert set(item) == SESSION_FIELDS
            for field in ("created_at", "last_used_at", "expires_at"):
                assert item[field].endswith("Z"), item[field]
            assert item["ip_address"] == CLIENT_IP
        assert [s["current"] for s in body] == [False, False, True]
        first = body[0]
        assert first["device_name"] == "Pixel 8"
        assert first["device_fingerprint"] == "phone"
        assert first["user_agent"] == AGENT
        assert first["created_at"] == iso(start)
        assert first["last_used_at"] == iso(clock.now())
        assert first["expires_at"] == iso(clock.now() + timedelta(days=7))
        assert body[1]["device_fingerprint"] is None

    async def test_a_utf8_user_agent_is_kept_as_text(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """A user agent in UTF-8 (a phone model's name) reads as sent; bytes that are not
        UTF-8 as Latin-1 reads them."""
        for sent, shown in (("Conductor/2.3 (Xiaomi Rédmi ☃)", None), (b"Caf\xe9/1", "Café/1")):
            raw = sent.encode() if isinstance(sent, str) else sent
            response = await client.post(
                "/api/v1/auth/login",
                json={"username": alice.username, "password": alice.password, "device_name": "x"},
                headers={b"User-Agent": raw},
            )
            assert response.status_code == 200, response.text
            body = await client.get(SESSIONS, headers=bearer(response.json()["access_token"]))
            mine = [s for s in body.json() if s["current"]]
            assert mine[0]["user_agent"] == (shown or sent)

    async def test_current_follows_the_caller(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        a = await tokens(client, fingerprint="a")
        b = await tokens(client, fingerprint="b")
        for mine, other in ((a, b), (b, a)):
            body = (await client.get(SESSIONS, headers=bearer(mine["access_token"]))).json()
            current = {s["id"]: s["current"] for s in body}
            assert current == {mine["session_id"]: True, other["session_id"]: False}

    async def test_records_the_client_address(
        self, app: FastAPI, alice: Account, container: Container
    ) -> None:
        async with make_client(app, "198.51.100.23") as other:
            pair = await tokens(other)
            body = (await other.get(SESSIONS, headers=bearer(pair["access_token"]))).json()
        assert [s["ip_address"] for s in body] == ["198.51.100.23"]
        assert (await session_row(container, pair["session_id"])).ip_address == "198.51.100.23"

    async def test_expired_sessions_are_not_listed(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        old = await tokens(client, device="Forgotten tablet")
        clock.advance(days=7, seconds=1)
        new = await tokens(client)
        body = (await client.get(SESSIONS, headers=bearer(new["access_token"]))).json()
        assert [s["id"] for s in body] == [new["session_id"]]
        assert old["session_id"] not in {s["id"] for s in body}

    async def test_needs_a_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get(SESSIONS)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"] == "Bearer"


class TestRevokeOne:
    async def test_own_other_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        me = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        await assert_alive(client, other["access_token"])  # a verified token, then revoked
        response = await client.delete(
            f"{SESSIONS}/{other['session_id']}", headers=bearer(me["access_token"])
        )
        assert response.status_code == 204
        assert response.content == b""
        await assert_refused(client, other["access_token"])
        await assert_refresh_refused(client, other["refresh_token"])
        row = await session_row(container, other["session_id"])
        assert row.revoked_at == clock.now()
        assert row.revoked_reason == "revoked"
        await assert_alive(client, me["access_token"])
        assert await live_session_ids(container, alice.id) == {me["session_id"]}

    async def test_again_is_404(self, client: httpx.AsyncClient, alice: Account) -> None:
        me = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        url = f"{SESSIONS}/{other['session_id']}"
        assert (await client.delete(url, headers=bearer(me["access_token"]))).status_code == 204
        response = await client.delete(url, headers=bearer(me["access_token"]))
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"

    async def test_an_expired_session_is_404_and_stays_as_it_ended(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        """It left the list when it expired: the app reloads, and nothing new is recorded."""
        old = await tokens(client, fingerprint="tablet")
        clock.advance(days=7, seconds=1)
        me = await tokens(client, fingerprint="phone")
        response = await client.delete(
            f"{SESSIONS}/{old['session_id']}", headers=bearer(me["access_token"])
        )
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "not_found"
        row = await session_row(container, old["session_id"])
        assert (row.revoked_at, row.revoked_reason) == (None, None)
        assert await revoked_event_sessions(container, alice.id) == []

    async def test_own_current_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        me = await tokens(client)
        response = await client.delete(
            f"{SESSIONS}/{me['session_id']}", headers=bearer(me["access_token"])
        )
        assert response.status_code == 204
        await assert_refused(client, me["access_token"])
        assert await live_session_ids(container, alice.id) == set()

    async def test_another_users_session_is_404(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        bob_account = await add_user(container, "bob")
        bob = await tokens(client, username="bob")
        me = await tokens(client)
        response = await client.delete(
            f"{SESSIONS}/{bob['session_id']}", headers=bearer(me["access_token"])
        )
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        unknown = await client.delete(
            f"{SESSIONS}/{uuid.uuid4()}", headers=bearer(me["access_token"])
        )
        # Someone else's session and no session at all look the same.
        assert unknown.status_code == 404
        assert unknown.json() == response.json()
        assert (await session_row(container, bob["session_id"])).revoked_at is None
        assert await live_session_ids(container, bob_account.id) == {bob["session_id"]}
        await assert_alive(client, bob["access_token"])

    async def test_unknown_or_malformed_id_is_404(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        me = await tokens(client)
        for sid in (str(uuid.uuid4()), "not-a-uuid", "1"):
            response = await client.delete(f"{SESSIONS}/{sid}", headers=bearer(me["access_token"]))
            assert response.status_code == 404, (sid, response.text)
            assert response.json()["code"] == "not_found"
        assert await live_session_ids(container, alice.id) == {me["session_id"]}


class TestRevokeOthers:
    async def test_only_the_current_session_survives(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        bob_account = await add_user(container, "bob")
        bob = await tokens(client, username="bob")
        others = [await tokens(client, fingerprint=f"device-{i}") for i in range(3)]
        me = await tokens(client, fingerprint="me")
        response = await client.post(
            f"{SESSIONS}/revoke-others", headers=bearer(me["access_token"])
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"revoked": 3}
        assert await live_session_ids(container, alice.id) == {me["session_id"]}
        for pair in others:
            await assert_refused(client, pair["access_token"])
            await assert_refresh_refused(client, pair["refresh_token"])
            assert (await session_row(container, pair["session_id"])).revoked_reason == "revoked"
        await assert_alive(client, me["access_token"])
        await assert_alive(client, bob["access_token"])
        assert await live_session_ids(container, bob_account.id) == {bob["session_id"]}

        again = await client.post(f"{SESSIONS}/revoke-others", headers=bearer(me["access_token"]))
        assert again.json() == {"revoked": 0}

    async def test_expired_sessions_are_not_counted_or_recorded(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        expired = await tokens(client, fingerprint="old tablet")
        clock.advance(days=7, seconds=1)
        live = await tokens(client, fingerprint="laptop")
        me = await tokens(client, fingerprint="phone")
        listed = (await client.get(SESSIONS, headers=bearer(me["access_token"]))).json()
        assert {s["id"] for s in listed} == {live["session_id"], me["session_id"]}
        response = await client.post(
            f"{SESSIONS}/revoke-others", headers=bearer(me["access_token"])
        )
        assert response.json() == {"revoked": 1}
        assert await revoked_event_sessions(container, alice.id) == [live["session_id"]]
        assert (await session_row(container, expired["session_id"])).revoked_at is None
        assert (await session_row(container, live["session_id"])).revoked_reason == "revoked"

    async def test_a_sign_in_does_not_replace_an_expired_session_again(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        """The same fingerprint's earlier session had ended: no `session_revoked` for it."""
        expired = await tokens(client, fingerprint="phone")
        clock.advance(days=7, seconds=1)
        await tokens(client, fingerprint="phone")
        assert await revoked_event_sessions(container, alice.id) == []
        assert (await session_row(container, expired["session_id"])).revoked_at is None


class TestLogout:
    async def test_token_is_refused_at_once(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        other = await tokens(client)
        await assert_alive(client, pair["access_token"])
        response = await client.post(LOGOUT, headers=bearer(pair["access_token"]))
        assert response.status_code == 204
        assert response.content == b""
        await assert_refused(client, pair["access_token"])
        await assert_refresh_refused(client, pair["refresh_token"])
        row = await session_row(container, pair["session_id"])
        assert row.revoked_at == clock.now()
        assert row.revoked_reason == "logout"
        # Only this device signed out.
        await assert_alive(client, other["access_token"])
        again = await client.post(LOGOUT, headers=bearer(pair["access_token"]))
        assert again.status_code == 401
        assert again.json()["code"] == "invalid_token"

    async def test_without_a_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGOUT)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"] == "Bearer"


class TestDisable:
    async def test_disabling_revokes_every_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pairs = [await tokens(client, fingerprint=f"device-{i}") for i in range(3)]
        async with container.sessionmaker.begin() as db:
            user = await users.require_user(db, "alice")
            revoked = await users.set_active(db, user, False, clock.now())
        assert {str(sid) for sid in revoked} == {p["session_id"] for p in pairs}
        assert await live_session_ids(container, alice.id) == set()
        for pair in pairs:
            await assert_refused(client, pair["access_token"])
            await assert_refresh_refused(client, pair["refresh_token"])
            row = await session_row(container, pair["session_id"])
            assert row.revoked_reason == "account_disabled"
        login = await client.post(
            "/api/v1/auth/login",
            json={"username": "alice", "password": alice.password, "device_name": "x"},
        )
        assert login.status_code == 403
        assert login.json()["code"] == "account_disabled"

    async def test_enabling_again_does_not_revive_sessions(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        for active in (False, True):
            async with container.sessionmaker.begin() as db:
                user = await users.require_user(db, "alice")
                await users.set_active(db, user, active, clock.now())
        await assert_refused(client, pair["access_token"])
        await assert_refresh_refused(client, pair["refresh_token"])
        await assert_alive(client, (await tokens(client))["access_token"])


class TestSigningEachOtherOut:
    """Two sessions of one user that sign each other out at once: the one that comes second
    finds its own session revoked under the user row's lock, and changes nothing."""

    async def test_a_password_change_from_a_session_revoked_meanwhile_changes_nothing(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        intruder = await tokens(client, fingerprint="intruder")
        owner = await tokens(client, fingerprint="owner")
        hash_new = container.hasher.hash

        async def owner_acts_while_the_new_password_hashes(password: str) -> str:
            # The owner signs the intruder out between the checks and the change.
            response = await client.post(
                f"{SESSIONS}/revoke-others", headers=bearer(owner["access_token"])
            )
            assert response.json() == {"revoked": 1}
            return await hash_new(password)

        monkeypatch.setattr(container.hasher, "hash", owner_acts_while_the_new_password_hashes)
        response = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "the intruder's own passphrase"},
            headers=bearer(intruder["access_token"]),
        )
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_token"
        # The owner is still signed in, and the password is the owner's.
        await assert_alive(client, owner["access_token"])
        assert await live_session_ids(container, alice.id) == {owner["session_id"]}
        monkeypatch.undo()
        assert (await tokens(client))["access_token"]
        async with container.sessionmaker() as db:
            events = (await db.scalars(select(SecurityEvent.type))).all()
        assert "password_changed" not in events

    @pytest.mark.parametrize("path", ["revoke-others", "one"])
    async def test_a_revoke_from_a_session_revoked_meanwhile_revokes_nothing(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
        path: str,
    ) -> None:
        intruder = await tokens(client, fingerprint="intruder")
        owner = await tokens(client, fingerprint="owner")
        lock = users.lock

        async def owner_commits_first(db: Any, user_id: uuid.UUID) -> Any:
            # The owner's revoke of the intruder commits while the intruder's request,
            # past its token check, waits for the user row.
            async with container.sessionmaker.begin() as other:
                user = await users.get(other, user_id)
                assert user is not None
                await sessions_service.revoke_session(
                    other, user, uuid.UUID(intruder["session_id"]), container.clock.now(),
                    None, reason="revoked",
                )  # fmt: skip
            return await lock(db, user_id)

        monkeypatch.setattr(users, "lock", owner_commits_first)
        auth = bearer(intruder["access_token"])
        if path == "one":
            response = await client.delete(f"{SESSIONS}/{owner['session_id']}", headers=auth)
        else:
            response = await client.post(f"{SESSIONS}/revoke-others", headers=auth)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_token"
        monkeypatch.undo()
        await assert_alive(client, owner["access_token"])
        assert await live_session_ids(container, alice.id) == {owner["session_id"]}
