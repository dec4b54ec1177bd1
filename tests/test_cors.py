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
        assert response.status_code == 200, response.text
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
        plain = await client.get("/health/live", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
