"""POST /auth/token: the password and refresh_token grants in the OAuth 2.0 form (RFC 6749)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.security.tokens import token_digest
from conductor_api.users import service as users
from tests.conftest import PASSWORD, Account, bearer, login, session_row

TOKEN = "/api/v1/auth/token"


async def token_request(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    """POST the form, application/x-www-form-urlencoded as RFC 6749 asks."""
    return await client.post(TOKEN, data=form)


async def password_grant(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD, **extra: str
) -> httpx.Response:
    """grant_type=password."""
    return await token_request(
        client, grant_type="password", username=username, password=password, **extra
    )


def assert_token_response(response: httpx.Response) -> dict[str, Any]:
    """RFC 6749 section 5.1: the pair, uncacheable."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str)
    assert isinstance(body["refresh_token"], str)
    assert body["expires_in"] == 1800
    assert body["refresh_expires_in"] == 7 * 86400
    uuid.UUID(body["session_id"])
    return body


def assert_oauth_error(response: httpx.Response, error: str, code: str) -> dict[str, Any]:
    """RFC 6749 section 5.2, with the contract's `code` beside it."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert body["code"] == code
    assert body["detail"]
    # RFC 6749 section 5.2: %x20-21 / %x23-5B / %x5D-7E only.
    assert body["error_description"], body
    assert all(" " <= ch <= "~" and ch not in '"\\' for ch in body["error_description"]), body
    return body


class TestPasswordGrant:
    async def test_success(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        body = assert_token_response(await password_grant(client))
        me = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200
        assert me.json()["id"] == str(alice.id)
        row = await session_row(container, body["session_id"])
        assert row.user_id == alice.id
        assert row.device_name  # a default name, since the form did not give one
        assert row.refresh_token_hash == token_digest(body["refresh_token"])

    async def test_device_name_is_recorded(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        body = assert_token_response(await password_grant(client, device_name="Swagger UI"))
        assert (await session_row(container, body["session_id"])).device_name == "Swagger UI"

    async def test_extra_oauth_parameters_are_ignored(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        # What the docs' Authorize button and stock clients may add.
        response = await password_grant(client, scope="", client_id="docs", client_secret="")
        assert_token_response(response)

    async def test_wrong_password(self, client: httpx.AsyncClient, alice: Account) -> None:
        response = await password_grant(client, password=PASSWORD + "x")
        assert_oauth_error(response, "invalid_grant", "invalid_credentials")
        assert "access_token" not in response.text

    async def test_unknown_user_is_the_same_error(self, client: httpx.AsyncClient) -> None:
        response = await password_grant(client, username="nobody")
        assert_oauth_error(response, "invalid_grant", "invalid_credentials")

    async def test_disabled_account(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        async with container.sessionmaker.begin() as db:
            user = await users.require_user(db, "alice")
            await users.set_active(db, user, False, container.clock.now())
        response = await password_grant(client)
        assert_oauth_error(response, "invalid_grant", "account_disabled")

    async def test_the_json_login_gives_the_same_code(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await login(client, password=PASSWORD + "x")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"


class TestRefreshGrant:
    async def test_rotates(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = assert_token_response(await password_grant(client))
        clock.advance(minutes=1)
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=first["refresh_token"]
        )
        second = assert_token_response(response)
        assert second["session_id"] == first["session_id"]
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        row = await session_row(container, first["session_id"])
        assert row.refresh_token_hash == token_digest(second["refresh_token"])
        assert row.previous_token_hash == token_digest(first["refresh_token"])
        assert row.last_used_at == clock.now()
        me = await client.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
        assert me.status_code == 200
        # The new token rotates in turn.
        clock.advance(minutes=1)
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=second["refresh_token"]
        )
        assert assert_token_response(response)["session_id"] == first["session_id"]

    async def test_works_with_a_token_from_the_json_login(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = (await login(client)).json()
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=pair["refresh_token"]
        )
        assert assert_token_response(response)["session_id"] == pair["session_id"]

    @pytest.mark.parametrize("refresh_token", ["garbage", "a.b.c", "x" * 5000])
    async def test_bad_refresh_token(
        self, refresh_token: str, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=refresh_token
        )
        assert_oauth_error(response, "invalid_grant", "invalid_refresh_token")

    async def test_access_token_as_refresh_token(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = assert_token_response(await password_grant(client))
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=pair["access_token"]
        )
        assert_oauth_error(response, "invalid_grant", "invalid_refresh_token")

    async def test_spent_token_after_grace_window(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = assert_token_response(await password_grant(client))
        assert_token_response(
            await token_request(
                client, grant_type="refresh_token", refresh_token=first["refresh_token"]
            )
        )
        clock.advance(seconds=container.settings.refresh_reuse_grace_seconds + 1)
        response = await token_request(
            client, grant_type="refresh_token", refresh_token=first["refresh_token"]
        )
        assert_oauth_error(response, "invalid_grant", "refresh_token_reused")
        assert (await session_row(container, first["session_id"])).revoked_at is not None


class TestRequestErrors:
    async def test_unsupported_grant_type(self, client: httpx.AsyncClient, alice: Account) -> None:
        for grant in ("client_credentials", "authorization_code", "PASSWORD", "implicit"):
            response = await token_request(
                client, grant_type=grant, username="alice", password=PASSWORD
            )
            assert_oauth_error(response, "unsupported_grant_type", "unsupported_grant_type")

    @pytest.mark.parametrize(
        "form",
        [
            {"grant_type": "password", "username": "alice"},
            {"grant_type": "password", "password": PASSWORD},
            {"grant_type": "password", "username": "", "password": PASSWORD},
            {"grant_type": "password"},
            {"grant_type": "refresh_token"},
            {"grant_type": "refresh_token", "refresh_token": ""},
            {"username": "alice", "password": PASSWORD},
            {},
        ],
    )
    async def test_missing_fields(
        self, form: dict[str, str], client: httpx.AsyncClient, alice: Account
    ) -> None:
        # RFC 6749 section 5.2: a missing required parameter is invalid_request.
        response = await token_request(client, **form)
        assert_oauth_error(response, "invalid_request", "invalid_request")

    @pytest.mark.parametrize(
        ("content", "content_type"),
        [
            (b"&".join(b"f%d=1" % i for i in range(1001)), "application/x-www-form-urlencoded"),
            (b"x", "multipart/form-data"),
            (
                b"--b\r\nContent-Disposition: form-data\r\n\r\npassword\r\n--b--\r\n",
                "multipart/form-data; boundary=b",
            ),
        ],
    )
    async def test_a_form_that_cannot_be_read_is_invalid_request(
        self, content: bytes, content_type: str, client: httpx.AsyncClient
    ) -> None:
        # Still RFC 6749 section 5.2 (a stock client reads `error`), not the JSON endpoints' 400.
        response = await client.post(TOKEN, content=content, headers={"Content-Type": content_type})
        assert_oauth_error(response, "invalid_request", "invalid_request")

    @pytest.mark.parametrize(
        "form",
        [
            "grant_type=password&username=alice&username=bob&password=x",
            "grant_type=password&grant_type=refresh_token&username=alice&password=x",
            "grant_type=refresh_token&refresh_token=a&refresh_token=b",
            # Names a strict client could not parse back if echoed as they came.
            "grant_type=password&%C3%A9=1&%C3%A9=2",
            "grant_type=password&%22%5C=1&%22%5C=2",
            "grant_type=password&a%0Ab=1&a%0Ab=2",
            "grant_type=password&"
            + "&".join(f"{'x' * 500}{i}=1&{'x' * 500}{i}=2" for i in range(9)),
        ],
    )
    async def test_a_parameter_given_twice_is_invalid_request(
        self, form: str, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # RFC 6749 section 3.2: parameters must not be included more than once.
        response = await client.post(
            TOKEN, content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        body = assert_oauth_error(response, "invalid_request", "invalid_request")
        assert "given more than once" in body["detail"]
        assert len(body["error_description"]) < 300
        assert response.headers["cache-control"] == "no-store"
        # Refused before any credential was looked at: no attempt was counted.
        async with container.sessionmaker() as db:
            assert await db.scalar(select(func.count()).select_from(LoginThrottle)) == 0

    @pytest.mark.parametrize(
        ("form", "field"),
        [
            ({"username": "a" * 200}, "username"),
            ({"device_name": "d" * 101}, "device_name"),
            ({"password": "p" * 1025}, "password"),
            ({"username": "al\x00ice"}, "username"),
        ],
    )
    async def test_a_field_that_fails_validation_is_invalid_request(
        self,
        form: dict[str, str],
        field: str,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
    ) -> None:
        """RFC 6749 section 5.2's 400, not the JSON endpoints' 422: what a stock OAuth client
        reads. `code` is the JSON endpoints' (`validation_error`); the description names the
        field and never holds the value."""
        fields = {"grant_type": "password", "username": "alice", "password": PASSWORD, **form}
        response = await token_request(client, **fields)
        body = assert_oauth_error(response, "invalid_request", "validation_error")
        assert response.headers["cache-control"] == "no-store"
        assert body["error_description"].startswith(f"{field}: "), body
        assert all(" " <= ch <= "~" and ch not in '"\\' for ch in body["error_description"])
        assert form[field] not in response.text
        if "\x00" in form[field]:
            # In words: the pattern's backslash may not appear in a description.
            assert body["error_description"] == f"{field}: must not contain a NUL character"
        async with container.sessionmaker() as db:
            assert await db.scalar(select(func.count()).select_from(LoginThrottle)) == 0

    async def test_missing_password_costs_no_attempt(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        for _ in range(6):
            await token_request(client, grant_type="password", username="alice")
        assert_token_response(await password_grant(client))


class TestLockout:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_failed_login_attempts": 5, "lockout_minutes": 15}

    async def test_lockout_stays_429(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        for _ in range(5):
            response = await password_grant(client, password="wrong password, still long")
            assert_oauth_error(response, "invalid_grant", "invalid_credentials")
        response = await password_grant(client)
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "account_locked"
        assert 0 < int(response.headers["retry-after"]) <= 15 * 60
        # The JSON login sees the same lock.
        assert (await login(client)).status_code == 429
        clock.advance(minutes=15, seconds=1)
        assert_token_response(await password_grant(client))
