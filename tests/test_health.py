"""Health endpoints and what every response carries."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.conftest import Account, bearer, tokens


class TestHealth:
    async def test_live(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_ready_when_database_answers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_head_answers_like_get(self, client: httpx.AsyncClient) -> None:
        # Load balancers and uptime checkers often probe with HEAD.
        for path in ("/health/live", "/health/ready"):
            response = await client.head(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "application/json"

    async def test_head_on_every_get_endpoint_answers_like_get(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        # RFC 9110: a server that answers GET answers HEAD, with the same status and headers.
        auth = bearer((await tokens(client))["access_token"])
        schema = (await client.get("/openapi.json")).json()
        paths = sorted(path for path, operations in schema["paths"].items() if "get" in operations)
        assert "/api/v1/auth/me" in paths and "/.well-known/jwks.json" in paths
        for path in paths:
            if "{" in path:
                continue
            get = await client.get(path, headers=auth)
            head = await client.head(path, headers=auth)
            assert head.status_code == get.status_code, path
            assert head.headers["content-type"] == get.headers["content-type"], path
        # Without a token HEAD is refused as GET is, challenge included.
        refused = await client.head("/api/v1/auth/me")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        # And it stays out of the API's description.
        assert not any("head" in operations for operations in schema["paths"].values())

    async def test_every_response_has_nosniff_and_no_server_banner(
        self, client: httpx.AsyncClient
    ) -> None:
        for path in ("/health/live", "/api/v1/auth/me", "/nowhere"):
            response = await client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "server" not in response.headers
            assert response.headers["x-request-id"]

    async def test_unknown_path_is_json_404(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/nowhere")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


class TestInternalError:
    async def test_a_500_carries_nosniff_and_the_request_id(self, app: FastAPI) -> None:
        async def boom() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/boom", boom)
        # The app's exception reaches the transport after the response: keep the response.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/boom", headers={"X-Request-ID": "req-500"})
        assert response.status_code == 500
        assert response.json() == {"detail": "Internal error", "code": "internal_error"}
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"] == "req-500"
        assert "server" not in response.headers
