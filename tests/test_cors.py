"""CORS_ORIGINS: what a browser on a listed origin may send and read, and nothing for others."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

ORIGIN = "https://app.example"
API = "/api/v1/auth"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """One allowed origin."""
    return {"cors_origins": [ORIGIN]}


async def preflight(
    client: httpx.AsyncClient, path: str, method: str, origin: str = ORIGIN
) -> httpx.Response:
    """The OPTIONS request a browser sends before a credentialed cross-origin call."""
    return await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, dpop, x-request-id",
        },
    )


class TestCors:
    @pytest.mark.parametrize(
        ("path", "method"),
        [
            (API + "/me", "GET"),
            ("/health/ready", "HEAD"),
            (API + "/login", "POST"),
            (API + "/sessions/00000000-0000-0000-0000-000000000001", "DELETE"),
            (API + "/passkeys/00000000-0000-0000-0000-000000000001", "PATCH"),
        ],
    )
    async def test_every_method_the_api_takes_is_allowed_from_the_listed_origin(
        self, client: httpx.AsyncClient, path: str, method: str
    ) -> None:
        response = await preflight(client, path, method)
        assert response.status_code == 204, response.text
        assert response.content == b""
        assert "content-type" not in response.headers
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["access-control-allow-credentials"] == "true"
        assert method in response.headers["access-control-allow-methods"]
        allowed = response.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "content-type", "dpop", "x-request-id"):
            assert header in allowed, header

    async def test_the_answer_exposes_what_a_client_reads(self, client: httpx.AsyncClient) -> None:
        response = await client.get(API + "/me", headers={"Origin": ORIGIN})
        assert response.status_code == 401
        assert response.headers["access-control-allow-origin"] == ORIGIN
        exposed = {
            h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
        }
        assert {"retry-after", "x-request-id", "dpop-nonce", "www-authenticate"} <= exposed

    async def test_another_origin_gets_no_allowance(self, client: httpx.AsyncClient) -> None:
        response = await preflight(client, API + "/login", "POST", origin="https://evil.example")
        assert response.status_code == 400
        assert "access-control-allow-origin" not in response.headers
        # Refused in the API's error shape, with the headers every answer has.
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "Disallowed CORS origin", "code": "cors_refused"}
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"]
        plain = await client.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers

    async def test_a_method_or_header_not_allowed_is_a_json_400(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.options(
            API + "/login",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "x-secret",
            },
        )
        assert response.status_code == 400
        assert response.json() == {
            "detail": "Disallowed CORS method, headers",
            "code": "cors_refused",
        }

    async def test_the_servers_own_refusals_are_readable_from_the_listed_origin(
        self, client: httpx.AsyncClient
    ) -> None:
        """A 413 (answered before the body is parsed) and a 400 for a bad Host carry the
        CORS headers too, so a browser can read their `code` and `X-Request-ID`."""
        too_large = await client.post(
            API + "/login",
            content=b"{" + b" " * (64 * 1024),
            headers={"Origin": ORIGIN, "Content-Type": "application/json"},
        )
        bad_host = await client.get("/health/live", headers={"Origin": ORIGIN, "Host": "a b"})
        for response, status, code in (
            (too_large, 413, "payload_too_large"),
            (bad_host, 400, "bad_request"),
        ):
            assert response.status_code == status, response.text
            assert response.json()["code"] == code
            assert response.headers["access-control-allow-origin"] == ORIGIN
            assert response.headers["access-control-allow-credentials"] == "true"
            assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
            assert response.headers["x-content-type-options"] == "nosniff"
