"""Usernames that grow under NFKC and case folding past the key columns' 150 characters
answer like any unknown name, on both databases (issue 9, item 7)."""

from __future__ import annotations

import httpx
import pytest

from conductor_api.container import Container
from conductor_api.users.service import USERNAME_MAX, normalize_username
from tests.conftest import Account, login

GROWING = ["\ufdfa" * 10, "ß" * 100, "\u3392" * 60, "ﬃ" * 150]


@pytest.mark.parametrize("name", GROWING)
class TestGrowingNames:
    async def test_login_is_an_unknown_name(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        name: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        dummy_checks = 0
        verify_dummy = container.hasher.verify_dummy

        async def counting(password: str) -> None:
            nonlocal dummy_checks
            dummy_checks += 1
            await verify_dummy(password)

        monkeypatch.setattr(container.hasher, "verify_dummy", counting)
        response = await login(client, name, "some wrong password")
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_credentials"
        # The same path as any unknown name: the dummy hash was checked.
        assert dummy_checks == 1

    async def test_token_endpoint_is_an_unknown_name(
        self, client: httpx.AsyncClient, alice: Account, name: str
    ) -> None:
        response = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": name, "password": "wrong password!"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_credentials"

    async def test_lockout_still_counts(
        self, client: httpx.AsyncClient, alice: Account, name: str
    ) -> None:
        for _ in range(5):
            assert (await login(client, name, "wrong password!")).status_code == 401
        response = await login(client, name, "wrong password!")
        assert response.status_code == 429
        assert response.json()["code"] == "account_locked"
        # Another growing name is another key.
        other = await login(client, name[:-1] + "x", "wrong password!")
        assert other.status_code == 401


def test_bounded_key() -> None:
    for name in GROWING:
        key = normalize_username(name)
        assert len(key) <= USERNAME_MAX
        assert key.startswith("~")
    assert normalize_username("Alice") == "alice"
