"""POST /auth/password: a new password signs every other device out; a wrong current
password is a failed login, with the lockout that follows."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.sessions.models import DeviceSession
from conductor_api.users import service as users
from conductor_api.users.models import User
from tests.conftest import PASSWORD, Account, bearer, login, tokens

PASSWORD_URL = "/api/v1/auth/password"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
NEW_PASSWORD = "violet tugboat ladder 9 seasons"


async def change(
    client: httpx.AsyncClient, access_token: str, current: str, new: str = NEW_PASSWORD
) -> httpx.Response:
    """POST /auth/password."""
    return await client.post(
        PASSWORD_URL,
        json={"current_password": current, "new_password": new},
        headers=bearer(access_token),
    )


async def user_row(container: Container, user_id: uuid.UUID) -> User:
    """The user as the database holds it."""
    async with container.sessionmaker() as db:
        user = await db.get(User, user_id)
    assert user is not None
    return user


async def sessions_by_id(container: Container, user_id: uuid.UUID) -> dict[str, DeviceSession]:
    """Every session of a user, by id."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(select(DeviceSession).where(DeviceSession.user_id == user_id))
        return {str(s.id): s for s in rows}


async def events_of(container: Container, user_id: uuid.UUID) -> list[SecurityEvent]:
    """A user's recorded events."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(select(SecurityEvent).where(SecurityEvent.user_id == user_id))
        return list(rows.all())


class TestChange:
    async def test_success(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        me = await tokens(client, fingerprint="phone")
        others = [await tokens(client, fingerprint=f"device-{i}") for i in range(2)]
        old_hash = (await user_row(container, alice.id)).password_hash
        clock.advance(minutes=3)

        response = await change(client, me["access_token"], PASSWORD)
        assert response.status_code == 204, response.text
        assert response.content == b""

        user = await user_row(container, alice.id)
        assert user.password_hash != old_hash
        assert user.password_changed_at == clock.now()
        assert NEW_PASSWORD not in user.password_hash
        assert (await container.hasher.verify(NEW_PASSWORD, user.password_hash))[0]

        rows = await sessions_by_id(container, alice.id)
        assert rows[me["session_id"]].revoked_at is None
        for pair in others:
            row = rows[pair["session_id"]]
            assert row.revoked_at == clock.now()
            assert row.revoked_reason == "password_changed"
            refused = await client.get(ME, headers=bearer(pair["access_token"]))
            assert refused.status_code == 401
            assert refused.json()["code"] == "invalid_token"
            stale = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
            assert stale.status_code == 401
            assert stale.json()["code"] == "invalid_refresh_token"

        # The device that changed it stays signed in, and keeps refreshing.
        assert (await client.get(ME, headers=bearer(me["access_token"]))).status_code == 200
        refreshed = await client.post(REFRESH, json={"refresh_token": me["refresh_token"]})
        assert refreshed.status_code == 200

        old = await login(client)
        assert old.status_code == 401
        assert old.json()["code"] == "invalid_credentials"
        assert (await login(client, password=NEW_PASSWORD)).status_code == 200

    async def test_events(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        me = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        clock.advance(minutes=1)
        assert (await change(client, me["access_token"], PASSWORD)).status_code == 204
        recent = [
            (e.type, str(e.session_id))
            for e in await events_of(container, alice.id)
            if e.created_at == clock.now()
        ]
        assert sorted(recent) == sorted(
            [("password_changed", me["session_id"]), ("session_revoked", other["session_id"])]
        )
        listed = await client.get("/api/v1/auth/events", headers=bearer(me["access_token"]))
        assert "password_changed" in [e["type"] for e in listed.json()]

    async def test_needs_a_token(self, client: httpx.AsyncClient, alice: Account) -> None:
        response = await client.post(
            PASSWORD_URL, json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"


class TestWrongCurrentPassword:
    async def test_is_401_and_changes_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        me = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        old_hash = (await user_row(container, alice.id)).password_hash
        response = await change(client, me["access_token"], PASSWORD + "!")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"
        # Not an invalid token: the client must not drop its session over this.
        assert "www-authenticate" not in response.headers
        assert (await user_row(container, alice.id)).password_hash == old_hash
        rows = await sessions_by_id(container, alice.id)
        assert all(s.revoked_at is None for s in rows.values())
        assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200
        types = [e.type for e in await events_of(container, alice.id)]
        assert types.count("login_failed") == 1
        assert "password_changed" not in types

    async def test_counts_as_a_failed_login(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        me = await tokens(client)
        for _ in range(5):
            clock.advance(seconds=1)
            response = await change(client, me["access_token"], PASSWORD + "!")
            assert response.status_code == 401
            assert response.json()["code"] == "invalid_credentials"
        old_hash = (await user_row(container, alice.id)).password_hash
        clock.advance(seconds=1)

        locked = await change(client, me["access_token"], PASSWORD)
        assert locked.status_code == 429, locked.text
        assert locked.json()["code"] == "account_locked"
        assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
        assert (await user_row(container, alice.id)).password_hash == old_hash

        clock.advance(seconds=1)
        refused = await login(client)
        assert refused.status_code == 429
        assert refused.json()["code"] == "account_locked"
        assert "retry-after" in refused.headers

        async with container.sessionmaker() as db:
            throttle = await db.get(LoginThrottle, ("user", "alice"))
        assert throttle is not None
        assert throttle.locked_until is not None
        # A lockout never signs anyone out.
        assert (await client.get(ME, headers=bearer(me["access_token"]))).status_code == 200
        types = [e.type for e in await events_of(container, alice.id)]
        assert types.count("login_failed") == 5
        assert types.count("account_locked") == 1
        # Each names the session the attempts came from.
        sessions = {str(e.session_id) for e in await events_of(container, alice.id)}
        assert sessions == {me["session_id"]}


class TestWeakNewPassword:
    async def test_is_422_and_changes_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        me = await tokens(client, fingerprint="phone")
        other = await tokens(client, fingerprint="tablet")
        before = await user_row(container, alice.id)
        for weak in ("tooshort", "a" * 14, "1qaz2wsx3edc4rfv", "x" * 1025):
            response = await change(client, me["access_token"], PASSWORD, weak)
            assert response.status_code == 422, (weak, response.text)
            assert weak not in response.text
            assert PASSWORD not in response.text
        after = await user_row(container, alice.id)
        assert after.password_hash == before.password_hash
        assert after.password_changed_at == before.password_changed_at
        rows = await sessions_by_id(container, alice.id)
        assert all(s.revoked_at is None for s in rows.values())
        assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200
        types = [e.type for e in await events_of(container, alice.id)]
        assert "password_changed" not in types
        assert "login_failed" not in types
        # A rejected new password cost no attempt: the right change still goes through.
        assert (await change(client, me["access_token"], PASSWORD)).status_code == 204

    async def test_rule_code(self, client: httpx.AsyncClient, alice: Account) -> None:
        me = await tokens(client)
        response = await change(client, me["access_token"], PASSWORD, "tooshort")
        assert response.status_code == 422
        assert response.json()["code"] == "password_rejected"


class TestTwoChangesAtOnce:
    async def test_the_second_waits_for_the_first_and_finds_the_password_changed(
        self,
        client: httpx.AsyncClient,
        container: Container,
        alice: Account,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Two phones change the password at once, both with the right current one. Held in
        # step 5 until both are there (or a second has passed): with a shared lock each, the
        # two would then deadlock on the row; with the exclusive one, the second waits.
        first, second = (
            (await tokens(client))["access_token"],
            (await tokens(client))["access_token"],
        )
        arrived: list[None] = []
        both = asyncio.Event()
        store = users.set_password

        async def set_password_when_both_are_here(*args: Any, **kwargs: Any) -> Any:
            arrived.append(None)
            if len(arrived) == 2:
                both.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both.wait(), timeout=1.0)
            return await store(*args, **kwargs)

        monkeypatch.setattr(users, "set_password", set_password_when_both_are_here)
        answers = await asyncio.gather(
            change(client, first, PASSWORD, NEW_PASSWORD),
            change(client, second, PASSWORD, "another passphrase, 7 oranges"),
        )
        assert sorted(a.status_code for a in answers) == [204, 401], [a.text for a in answers]
        assert len(arrived) == 1, "the second never reached step 5 with the old password"
