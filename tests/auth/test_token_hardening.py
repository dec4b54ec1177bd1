"""Token lifetimes to the second, the exact grace window, canonical encodings only, and
access tokens that never outlive their session (issue 9, items 4, 5, 6, 8, 9)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from tests.auth.test_refresh import DAY, ME, REFRESH, assert_error, digest, event_types, rotated
from tests.conftest import Account, bearer, session_row, tokens


@pytest.fixture
def clock() -> FrozenClock:
    """A clock nine tenths into a second, where cutting to whole seconds shows."""
    clock = FrozenClock()
    clock._now = clock.now().replace(year=2026, month=11, day=25, microsecond=900_000)
    return clock


def claims(token: str) -> dict[str, Any]:
    """A token's claims, unverified."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


class TestExactLifetimes:
    async def test_login_and_refresh_report_the_full_lifetimes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        assert (pair["expires_in"], pair["refresh_expires_in"]) == (1800, 7 * DAY)
        refresh_claims = claims(pair["refresh_token"])
        assert refresh_claims["exp"] - refresh_claims["iat"] == 7 * DAY
        clock.advance(minutes=20)
        pair = await rotated(client, pair["refresh_token"])
        assert (pair["expires_in"], pair["refresh_expires_in"]) == (1800, 7 * DAY)
        access_claims = claims(pair["access_token"])
        assert access_claims["exp"] - access_claims["iat"] == 1800


class TestExactGraceWindow:
    async def test_window_is_measured_from_the_exact_rotation_time(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        second = await rotated(client, first["refresh_token"])  # at .9 s
        row = await session_row(container, first["session_id"])
        assert row.rotated_at == clock.now()  # microseconds kept
        clock.advance(seconds=9.4)  # 10.3 s after the whole second, 9.4 s after the rotation
        again = await rotated(client, first["refresh_token"])
        assert again["refresh_token"] == second["refresh_token"]
        assert (await session_row(container, first["session_id"])).revoked_at is None

    async def test_window_ends_within_a_tenth_of_a_second(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        await rotated(client, first["refresh_token"])
        clock.advance(seconds=10.1)
        response = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
        assert_error(response, 401, "refresh_token_reused")


def variants(token: str) -> dict[str, str]:
    """Encodings of `token` that PyJWT accepts but that are not the one issued."""
    header, payload, signature = token.split(".")
    spare = {"A": "B", "E": "F", "I": "J", "M": "N", "Q": "R", "U": "V", "Y": "Z", "c": "d"}
    out = {
        "padding appended": token + "=",
        "padded payload": f"{header}.{payload}==.{signature}",
        "double padding": token + "==",
    }
    # A 43-character HS256 signature has two spare bits in its last character.
    if len(signature) % 4 == 3 and signature[-1] in spare:
        out["spare bits set"] = f"{header}.{payload}.{signature[:-1]}{spare[signature[-1]]}"
    return out


class TestCanonicalEncoding:
    async def test_variant_of_a_current_refresh_token_revokes_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        for name, token in variants(pair["refresh_token"]).items():
            response = await client.post(REFRESH, json={"refresh_token": token})
            assert_error(response, 401, "invalid_refresh_token")
            assert name
        row = await session_row(container, pair["session_id"])
        assert row.revoked_at is None
        assert row.refresh_token_hash == digest(pair["refresh_token"])
        assert await event_types(container, pair["session_id"]) == ["login_succeeded"]
        await rotated(client, pair["refresh_token"])

    async def test_variant_of_a_spent_refresh_token_revokes_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        second = await rotated(client, first["refresh_token"])
        clock.advance(minutes=1)
        for token in variants(first["refresh_token"]).values():
            response = await client.post(REFRESH, json={"refresh_token": token})
            assert_error(response, 401, "invalid_refresh_token")
        assert (await session_row(container, first["session_id"])).revoked_at is None
        await rotated(client, second["refresh_token"])

    async def test_variant_of_an_access_token_is_refused(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        for token in variants(pair["access_token"]).values():
            response = await client.get(ME, headers=bearer(token))
            assert_error(response, 401, "invalid_token")
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200

    async def test_variant_on_the_token_endpoint(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        response = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"] + "="},
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_refresh_token"
        assert (await session_row(container, pair["session_id"])).revoked_at is None


class TestLoneSurrogates:
    # JSON escapes: the body is valid UTF-8, but decodes to strings with lone surrogates.
    @pytest.mark.parametrize("escaped", ["\\ud800", "a.b.\\udfff", "\\udfff\\ud800"])
    async def test_refresh_token(self, client: httpx.AsyncClient, escaped: str) -> None:
        response = await client.post(
            REFRESH,
            content='{"refresh_token": "' + escaped + '"}',
            headers={"Content-Type": "application/json"},
        )
        assert_error(response, 401, "invalid_refresh_token")


class TestAccessTokenWithinTheSession:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"session_max_days": 1, "refresh_token_expire_days": 1}

    async def test_access_token_ends_with_its_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        row = await session_row(container, pair["session_id"])
        end = row.absolute_expires_at
        clock.advance(days=1, minutes=-10)
        pair = await rotated(client, pair["refresh_token"])
        access = claims(pair["access_token"])
        assert access["exp"] <= end.timestamp()
        assert pair["expires_in"] == access["exp"] - access["iat"]
        assert pair["expires_in"] < 1800
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        clock._now = end + timedelta(seconds=1)
        response = await client.get(ME, headers=bearer(pair["access_token"]))
        assert_error(response, 401, "invalid_token")


LOGIN_FIELDS = {
    "username": "al\\ud800ice",
    "password": "correct horse \\ud800 staple",
    "device_name": "Pixel \\udfff",
    "device_fingerprint": "\\ud800",
}


class TestLoneSurrogatesElsewhere:
    @pytest.mark.parametrize("field", sorted(LOGIN_FIELDS))
    async def test_login_fields(
        self, client: httpx.AsyncClient, alice: Account, field: str
    ) -> None:
        values = {"username": "alice", "password": "correct horse battery staple"}
        values["device_name"] = "Pixel 8"
        values[field] = LOGIN_FIELDS[field]
        body = "{" + ", ".join(f'"{k}": "{v}"' for k, v in values.items()) + "}"
        response = await client.post(
            "/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
        assert "code" in response.json()

    @pytest.mark.parametrize(
        "form",
        [
            "grant_type=password&username=al%ED%A0%80&password=x",
            "grant_type=password&username=alice&password=%ED%A0%80%80",
            "grant_type=refresh_token&refresh_token=%ED%A0%80",
            "grant_type=password&username=alice&password=wrong&device_name=%ED%A0%80",
        ],
    )
    async def test_form_endpoint(
        self, client: httpx.AsyncClient, alice: Account, form: str
    ) -> None:
        response = await client.post(
            "/api/v1/auth/token",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 400, response.text

    async def test_headers_that_are_not_utf8(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await client.post(
            "/api/v1/auth/login",
            json={"username": "alice", "password": "wrong password!", "device_name": "x"},
            headers={b"User-Agent": b"\xed\xa0\x80\xff", b"X-Request-ID": b"\xed\xa0\x80"},
        )
        assert response.status_code == 401
