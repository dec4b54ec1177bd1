"""Health endpoints and what every response carries."""

from __future__ import annotations

import httpx


class TestHealth:
    async def test_live(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_ready_when_database_answers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

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
