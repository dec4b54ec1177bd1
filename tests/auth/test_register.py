"""POST /auth/register: off by default, then accounts with the password rules."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conductor_api.container import Container
from conductor_api.users.models import User
from tests.conftest import PASSWORD, add_user, bearer, login

REGISTER = "/api/v1/auth/register"


async def register(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    """POST /auth/register."""
    return await client.post(REGISTER, json={"username": username, "password": password})


async def user_count(container: Container) -> int:
    """How many rows the users table holds."""
    async with container.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(User)) or 0)


class TestRegistrationDisabled:
    async def test_is_404_by_default(self, client: httpx.AsyncClient, container: Container) -> None:
        assert container.settings.allow_registration is False
        response = await register(client)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert await user_count(container) == 0

    async def test_404_does_not_echo_the_password(self, client: httpx.AsyncClient) -> None:
        response = await register(client, password="Sup3r-Secret-Value-123")
        assert response.status_code == 404
        assert "Sup3r-Secret-Value-123" not in response.text

    async def test_is_404_as_for_an_unknown_path_whatever_the_body_or_method(
        self, client: httpx.AsyncClient
    ) -> None:
        unknown = await client.post("/api/v1/auth/nowhere", json={})
        assert unknown.status_code == 404
        for response in (
            await client.post(REGISTER, json={}),
            await client.post(REGISTER, content=b"{not json", headers={"Content-Type": "x"}),
            await client.post(REGISTER, json={"username": 5, "password": None}),
            await client.get(REGISTER),
        ):
            assert response.status_code == 404, response.text
            assert response.json() == unknown.json()
            assert "allow" not in response.headers


class TestRegistrationEnabled:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_registration": True}

    async def test_creates_an_account(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        response = await register(client)
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"id", "username", "created_at", "is_active"}
        uuid.UUID(body["id"])
        assert body["username"] == "alice"
        assert body["is_active"] is True
        assert body["created_at"].endswith("Z")
        assert body["created_at"].startswith("2026-11-25T12:00:00")
        async with container.sessionmaker() as db:
            user = await db.get(User, uuid.UUID(body["id"]))
        assert user is not None
        assert user.username == "alice"
        assert user.is_active

    async def test_login_works_afterwards(self, client: httpx.AsyncClient) -> None:
        created = (await register(client)).json()
        response = await login(client)
        assert response.status_code == 200, response.text
        me = await client.get("/api/v1/auth/me", headers=bearer(response.json()["access_token"]))
        assert me.json() == created

    async def test_stores_only_an_argon2id_hash(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        assert (await register(client)).status_code == 201
        async with container.sessionmaker() as db:
            stored = await db.scalar(select(User.password_hash))
        assert stored is not None
        assert stored.startswith("$argon2id$")
        assert PASSWORD not in stored
        assert PASSWORD.encode().hex() not in stored

    # The last is "alice" in fullwidth letters: the same name after NFKC.
    @pytest.mark.parametrize(
        "second", ["alice", "ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45"]
    )
    async def test_duplicate_username(
        self, second: str, client: httpx.AsyncClient, container: Container
    ) -> None:
        assert (await register(client, "alice")).status_code == 201
        response = await register(client, second, "another long password here")
        assert response.status_code == 409
        assert response.json()["code"] == "username_taken"
        assert await user_count(container) == 1
        # The first account keeps its password.
        assert (await login(client, "alice")).status_code == 200

    async def test_duplicate_of_an_existing_user(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        await add_user(container, "bob")
        response = await register(client, "BOB")
        assert response.status_code == 409
        assert response.json()["code"] == "username_taken"

    @pytest.mark.parametrize(
        "password",
        [
            "Short-Secret-9",  # 14 characters
            "averyverylongusername",  # the username itself
            "x" * 1025,
        ],
    )
    async def test_weak_password(
        self, password: str, client: httpx.AsyncClient, container: Container
    ) -> None:
        response = await register(client, "averyverylongusername", password)
        assert response.status_code == 422, response.text
        assert response.json()["code"] in ("password_rejected", "validation_error")
        assert password not in response.text
        assert await user_count(container) == 0

    @pytest.mark.parametrize("password", ["Short-Secret-9", "averyverylongusername"])
    async def test_rule_violation_is_password_rejected(
        self, password: str, client: httpx.AsyncClient
    ) -> None:
        response = await register(client, "averyverylongusername", password)
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "password_rejected"
        assert body["detail"]
        assert password not in response.text

    async def test_invalid_username(self, client: httpx.AsyncClient, container: Container) -> None:
        response = await register(client, "no spaces allowed")
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_username"
        assert await user_count(container) == 0

    @pytest.mark.parametrize("filler", ["\u3164", "\u115f", "\u1160", "\uffa0"])
    async def test_a_name_with_an_invisible_letter_is_refused(
        self, filler: str, client: httpx.AsyncClient, container: Container
    ) -> None:
        # The Hangul fillers are letters to Unicode (so word characters) and blank to the
        # eye: "bob" with one would look exactly like "bob".
        assert (await register(client, "bob")).status_code == 201
        for name in ("bob" + filler, "bo" + filler + "b", filler + "eve"):
            response = await register(client, name)
            assert response.status_code == 422, name
            assert response.json()["code"] == "invalid_username"
        assert await user_count(container) == 1


class TestCommonPasswordAtRegistration:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_registration": True, "min_password_length": 8}

    async def test_common_password_is_rejected(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        response = await register(client, "frank", "password1234")
        assert response.status_code == 422
        assert response.json()["code"] == "password_rejected"
        assert "password1234" not in response.text
        assert await user_count(container) == 0
        assert (await register(client, "frank", "password1234-but-mine")).status_code == 201
