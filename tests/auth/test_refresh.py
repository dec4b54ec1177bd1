"""POST /auth/refresh: rotation, the grace window for concurrent refreshes, reuse detection,
refusals that revoke nothing, sliding and absolute expiry, and refreshing while locked."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select, update

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.sessions.models import DeviceSession
from tests.conftest import PASSWORD, Account, bearer, login, session_row, tokens

REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"
SESSIONS = "/api/v1/auth/sessions"
DAY = 86400


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """POST /auth/refresh."""
    return await client.post(REFRESH, json={"refresh_token": token})


async def rotated(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """Refresh, asserting success; the new pair."""
    response = await refresh(client, token)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """An error response with the contract's status and code."""
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert "access_token" not in response.text


async def event_types(container: Container, session_id: str) -> list[str]:
    """The types of the events recorded about one session."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(SecurityEvent.type).where(SecurityEvent.session_id == uuid.UUID(session_id))
        )
        return sorted(rows.all())


def digest(token: str) -> str:
    """SHA-256 hex, as the sessions table keeps tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


class TestRotation:
    async def test_new_pair_same_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        clock.advance(minutes=20)
        second = await rotated(client, first["refresh_token"])
        assert set(second) == set(first) - {"device_token"}  # sign-ins only
        assert second["session_id"] == first["session_id"]
        assert second["token_type"] == "bearer"
        assert second["expires_in"] == 1800
        assert second["refresh_expires_in"] == 7 * DAY
        assert second["access_token"] != first["access_token"]
        assert second["refresh_token"] != first["refresh_token"]

        row = await session_row(container, first["session_id"])
        assert row.last_used_at == clock.now()
        assert row.created_at == clock.now() - timedelta(minutes=20)
        assert row.refresh_token_hash == digest(second["refresh_token"])
        assert row.previous_token_hash == digest(first["refresh_token"])
        assert row.generation == 1
        assert row.revoked_at is None
        me = await client.get(ME, headers=bearer(second["access_token"]))
        assert me.status_code == 200
        assert me.json()["id"] == str(alice.id)

    async def test_chain_of_rotations(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        seen = {pair["refresh_token"]}
        for _ in range(3):
            clock.advance(minutes=31)
            pair = await rotated(client, pair["refresh_token"])
            assert pair["refresh_token"] not in seen
            seen.add(pair["refresh_token"])
        assert (await session_row(container, pair["session_id"])).generation == 3


class TestGraceWindow:
    async def test_spent_token_inside_the_window_gets_the_same_child(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        clock.advance(minutes=5)
        second = await rotated(client, first["refresh_token"])
        clock.advance(seconds=9)
        again = await rotated(client, first["refresh_token"])
        assert again["refresh_token"] == second["refresh_token"]
        assert again["session_id"] == first["session_id"]
        row = await session_row(container, first["session_id"])
        assert row.revoked_at is None
        assert row.generation == 1
        assert row.refresh_token_hash == digest(second["refresh_token"])
        # Both access tokens work, and the (one) child refreshes.
        for pair in (second, again):
            assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        third = await rotated(client, again["refresh_token"])
        assert third["session_id"] == first["session_id"]
        assert await event_types(container, first["session_id"]) == ["login_succeeded"]

    async def test_concurrent_refreshes_with_one_token(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        clock.advance(minutes=31)
        responses = await asyncio.gather(
            *(refresh(client, first["refresh_token"]) for _ in range(8))
        )
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        bodies = [r.json() for r in responses]
        assert {b["session_id"] for b in bodies} == {first["session_id"]}
        children = {b["refresh_token"] for b in bodies}
        assert len(children) == 1
        row = await session_row(container, first["session_id"])
        assert row.generation == 1
        assert row.revoked_at is None
        clock.advance(seconds=30)
        # Whichever copy the client kept works for its next refresh.
        nxt = await rotated(client, children.pop())
        assert nxt["session_id"] == first["session_id"]
        assert (await client.get(ME, headers=bearer(nxt["access_token"]))).status_code == 200


class TestReuse:
    async def test_spent_token_after_the_window_revokes_the_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        second = await rotated(client, first["refresh_token"])
        clock.advance(seconds=11)
        response = await refresh(client, first["refresh_token"])
        assert_error(response, 401, "refresh_token_reused")

        row = await session_row(container, first["session_id"])
        assert row.revoked_at == clock.now()
        assert row.revoked_reason == "refresh_token_reused"
        assert await event_types(container, first["session_id"]) == [
            "login_succeeded",
            "refresh_token_reused",
            "session_revoked",
        ]
        for pair in (first, second):
            me = await client.get(ME, headers=bearer(pair["access_token"]))
            assert_error(me, 401, "invalid_token")
            assert me.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert_error(await refresh(client, second["refresh_token"]), 401, "invalid_refresh_token")
        # Presenting the spent token again changes nothing more.
        assert_error(await refresh(client, first["refresh_token"]), 401, "invalid_refresh_token")

    async def test_reuse_leaves_other_sessions_alone(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        stolen = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        await rotated(client, stolen["refresh_token"])
        clock.advance(minutes=1)
        assert_error(await refresh(client, stolen["refresh_token"]), 401, "refresh_token_reused")
        assert (await session_row(container, other["session_id"])).revoked_at is None
        assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200
        await rotated(client, other["refresh_token"])


class TestInvalidRefreshToken:
    def forged(self, container: Container, claims: dict[str, Any], key: str) -> str:
        settings = container.settings
        payload = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, **claims}
        return jwt.encode(payload, key, algorithm="HS256")

    async def test_bad_tokens_revoke_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        sid = pair["session_id"]
        now = int(clock.now().timestamp())
        claims = {
            "sub": str(alice.id), "sid": sid, "jti": "x" * 24, "typ": "refresh",
            "iat": now, "exp": now + 7 * DAY, "sxp": now + 90 * DAY,
        }  # fmt: skip
        header, payload, signature = pair["refresh_token"].split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        expired = container.tokens.issue_refresh(
            alice.id, uuid.UUID(sid), "y" * 24, now - 8 * DAY, now - DAY, now + 80 * DAY
        )
        bad = {
            "malformed": "not-a-token",
            "empty": "",
            "forged with another key": self.forged(container, claims, "k" * 48),
            "signed with the access key": self.forged(
                container, claims, container.settings.access_secret
            ),
            "tampered payload": f"{header}.{flipped}.{signature}",
            "expired": expired,
            "an access token": pair["access_token"],
            "unsigned": jwt.encode(claims, "", algorithm="none"),
        }
        for name, token in bad.items():
            response = await refresh(client, token)
            assert response.status_code == 401, (name, response.text)
            assert response.json()["code"] == "invalid_refresh_token", name

        row = await session_row(container, sid)
        assert row.revoked_at is None
        assert row.generation == 0
        assert row.refresh_token_hash == digest(pair["refresh_token"])
        assert await event_types(container, sid) == ["login_succeeded"]
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        await rotated(client, pair["refresh_token"])

    async def test_refresh_after_logout(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        logout = await client.post("/api/v1/auth/logout", headers=bearer(pair["access_token"]))
        assert logout.status_code == 204
        assert_error(await refresh(client, pair["refresh_token"]), 401, "invalid_refresh_token")
        row = await session_row(container, pair["session_id"])
        assert row.revoked_reason == "logout"
        assert row.generation == 0

    async def test_missing_field_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(REFRESH, json={})
        assert response.status_code == 422


class TestExpiry:
    async def test_refresh_token_expires_after_seven_days(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        clock.advance(days=7, seconds=1)
        assert_error(await refresh(client, pair["refresh_token"]), 401, "invalid_refresh_token")

    async def test_sliding_expiry(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        assert pair["refresh_expires_in"] == 7 * DAY
        clock.advance(days=3)
        pair = await rotated(client, pair["refresh_token"])
        assert pair["refresh_expires_in"] == 7 * DAY
        row = await session_row(container, pair["session_id"])
        assert row.expires_at == clock.now() + timedelta(days=7)
        # Past the login's seven days: the phone that came back stays signed in.
        clock.advance(days=5)
        pair = await rotated(client, pair["refresh_token"])
        assert pair["refresh_expires_in"] == 7 * DAY


class TestAbsoluteCap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"session_max_days": 8}

    async def test_no_session_outlives_session_max_days(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        assert pair["refresh_expires_in"] == 7 * DAY
        clock.advance(days=6)
        pair = await rotated(client, pair["refresh_token"])
        # Capped at login + 8 days, not six + seven.
        assert pair["refresh_expires_in"] == 2 * DAY
        row = await session_row(container, pair["session_id"])
        assert row.absolute_expires_at == clock.now() + timedelta(days=2)
        clock.advance(days=2, seconds=1)  # the last token was issued two days ago
        assert_error(await refresh(client, pair["refresh_token"]), 401, "invalid_refresh_token")


class TestLoweredCap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        # Lowered from the default 90: the sessions below began under the old setting.
        return {"session_max_days": 30}

    async def test_sessions_begun_under_a_higher_setting_end_by_the_new_one(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        old = await tokens(client, device="Old phone")
        young = await tokens(client, device="Young phone")
        for pair, days in ((old, 40), (young, 25)):
            began = clock.now() - timedelta(days=days)
            async with container.sessionmaker.begin() as db:
                await db.execute(
                    update(DeviceSession)
                    .where(DeviceSession.id == uuid.UUID(pair["session_id"]))
                    .values(created_at=began, absolute_expires_at=began + timedelta(days=90))
                )
        before = await session_row(container, old["session_id"])

        assert_error(await refresh(client, old["refresh_token"]), 401, "invalid_refresh_token")
        after = await session_row(container, old["session_id"])
        assert after.refresh_token_hash == before.refresh_token_hash
        assert after.generation == before.generation
        young = await rotated(client, young["refresh_token"])

        listed = await client.get(SESSIONS, headers=bearer(young["access_token"]))
        assert listed.status_code == 200
        (shown,) = listed.json()
        assert shown["device_name"] == "Young phone"
        # Thirty days after its login, before the seven of its new refresh token.
        assert young["refresh_expires_in"] == 7 * DAY
        ends = clock.now() + timedelta(days=5)
        assert shown["expires_at"] == ends.isoformat().replace("+00:00", "Z")
        clock.advance(days=5)
        assert_error(await refresh(client, young["refresh_token"]), 401, "invalid_refresh_token")


class TestLockedUser:
    async def test_lockout_does_not_sign_anyone_out(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        for _ in range(5):
            assert (await login(client, password=PASSWORD + "!")).status_code == 401
        locked = await login(client)
        assert_error(locked, 429, "account_locked")
        assert int(locked.headers["retry-after"]) > 0
        clock.advance(minutes=1)
        pair = await rotated(client, pair["refresh_token"])
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        assert_error(await login(client), 429, "account_locked")
