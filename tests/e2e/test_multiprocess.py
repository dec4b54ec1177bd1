"""Several server processes on one database: a session revoked through one is refused by
the others on the very next request, refresh-token reuse is caught whichever process
sees it, and concurrent refreshes spread over processes all succeed with one child token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ACCESS_SECRET, PASSWORD, REFRESH_SECRET, TEST_KEK
from tests.e2e.server import Server, create_user

pytestmark = pytest.mark.e2e

SECRETS = {
    "JWT_SECRET_KEY": ACCESS_SECRET,
    "JWT_REFRESH_SECRET_KEY": REFRESH_SECRET,
    "KEY_ENCRYPTION_KEY": TEST_KEK,
}
API = "/api/v1/auth"


@contextmanager
def two_servers(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    """Servers A and B, separate processes with separate working directories."""
    with Server(tmp_path / "a", env) as a, Server(tmp_path / "b", env) as b:
        yield a, b


def login(server: Server, device: str = "Pixel 8") -> dict[str, Any]:
    """Log alice in through `server`; the token pair."""
    response = httpx.post(
        server.url + API + "/login",
        json={"username": "alice", "password": PASSWORD, "device_name": device},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def me(server: Server, access_token: str) -> httpx.Response:
    """GET /auth/me on a fresh connection."""
    return httpx.get(server.url + API + "/me", headers={"Authorization": f"Bearer {access_token}"})


def refresh(server: Server, refresh_token: str) -> httpx.Response:
    """POST /auth/refresh."""
    return httpx.post(server.url + API + "/refresh", json={"refresh_token": refresh_token})


def assert_refused(response: httpx.Response, code: str = "invalid_token") -> None:
    """A 401 with the contract's code."""
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code
    if code == "invalid_token":
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def concurrent_refreshes(urls: list[str], token: str) -> list[httpx.Response]:
    """One refresh per URL, all sent at once."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(client.post(url + API + "/refresh", json={"refresh_token": token}) for url in urls)
        )


def assert_one_child(responses: list[httpx.Response], session_id: str) -> str:
    """Every refresh succeeded, for the same session, with the same new refresh token."""
    assert [r.status_code for r in responses] == [200] * len(responses), [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert {b["session_id"] for b in bodies} == {session_id}
    children: set[str] = {b["refresh_token"] for b in bodies}
    assert len(children) == 1
    return children.pop()


class TestTwoServersOnPostgres:
    @pytest.fixture
    def env(self, pg_database: str) -> dict[str, str]:
        return {"DATABASE_URL": pg_database, **SECRETS}

    def test_login_on_a_works_on_b(self, tmp_path: Path, env: dict[str, str]) -> None:
        create_user(tmp_path, env, "alice", PASSWORD)
        with two_servers(tmp_path, env) as (a, b):
            pair = login(a)
            response = me(b, pair["access_token"])
            assert response.status_code == 200, response.text
            assert response.json()["username"] == "alice"
            sessions = httpx.get(
                b.url + API + "/sessions",
                headers={"Authorization": f"Bearer {pair['access_token']}"},
            )
            assert [(s["id"], s["current"]) for s in sessions.json()] == [
                (pair["session_id"], True)
            ]

    def test_revocation_through_a_is_seen_by_b_at_once(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        create_user(tmp_path, env, "alice", PASSWORD)
        with two_servers(tmp_path, env) as (a, b):
            phone, tablet = login(a, "Pixel 8"), login(b, "Pixel Tablet")
            # B has verified both tokens (and may remember them) before they are revoked.
            for pair in (phone, tablet):
                assert me(b, pair["access_token"]).status_code == 200
                assert me(a, pair["access_token"]).status_code == 200

            logout = httpx.post(
                a.url + API + "/logout",
                headers={"Authorization": f"Bearer {phone['access_token']}"},
            )
            assert logout.status_code == 204
            assert_refused(me(b, phone["access_token"]))
            assert_refused(refresh(b, phone["refresh_token"]), "invalid_refresh_token")
            assert me(b, tablet["access_token"]).status_code == 200

            other = login(a, "Laptop")
            delete = httpx.delete(
                a.url + API + f"/sessions/{tablet['session_id']}",
                headers={"Authorization": f"Bearer {other['access_token']}"},
            )
            assert delete.status_code == 204
            assert_refused(me(b, tablet["access_token"]))
            assert_refused(me(a, tablet["access_token"]))
            assert me(b, other["access_token"]).status_code == 200

    def test_concurrent_refreshes_split_across_servers(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        create_user(tmp_path, env, "alice", PASSWORD)
        with two_servers(tmp_path, env) as (a, b):
            pair = login(a)
            responses = asyncio.run(concurrent_refreshes([a.url, b.url] * 4, pair["refresh_token"]))
            child = assert_one_child(responses, pair["session_id"])
            for response in responses:
                assert me(a, response.json()["access_token"]).status_code == 200
            nxt = refresh(b, child)
            assert nxt.status_code == 200, nxt.text
            assert me(a, nxt.json()["access_token"]).status_code == 200


class TestReuseAcrossServers:
    @pytest.fixture
    def env(self, pg_database: str) -> dict[str, str]:
        # No grace: the spent token is theft at once, so the test need not wait.
        return {"DATABASE_URL": pg_database, "REFRESH_REUSE_GRACE_SECONDS": "0", **SECRETS}

    def test_spent_token_on_b_kills_the_session_on_a(
        self, tmp_path: Path, env: dict[str, str]
    ) -> None:
        create_user(tmp_path, env, "alice", PASSWORD)
        with two_servers(tmp_path, env) as (a, b):
            first = login(a)
            rotated = refresh(a, first["refresh_token"])
            assert rotated.status_code == 200, rotated.text
            second = rotated.json()
            assert me(a, second["access_token"]).status_code == 200

            assert_refused(refresh(b, first["refresh_token"]), "refresh_token_reused")

            assert_refused(me(a, second["access_token"]))
            assert_refused(me(a, first["access_token"]))
            assert_refused(refresh(a, second["refresh_token"]), "invalid_refresh_token")
            events = httpx.get(
                a.url + API + "/events",
                headers={"Authorization": f"Bearer {login(a)['access_token']}"},
            )
            assert "refresh_token_reused" in [e["type"] for e in events.json()]


class TestWorkersOnSqlite:
    def test_two_workers_share_revocation_and_refreshes(self, tmp_path: Path) -> None:
        env = {"CONDUCTOR_DATA_DIR": str(tmp_path / "data")}
        with Server(tmp_path, env, workers=2) as server:
            create_user(tmp_path, env, "alice", PASSWORD)
            pair = login(server)
            urls = [server.url] * 8
            child = assert_one_child(
                asyncio.run(concurrent_refreshes(urls, pair["refresh_token"])), pair["session_id"]
            )
            nxt = refresh(server, child)
            assert nxt.status_code == 200, nxt.text
            access = nxt.json()["access_token"]
            # Fresh connections, so that both workers answer some of them.
            assert [me(server, access).status_code for _ in range(8)] == [200] * 8
            logout = httpx.post(
                server.url + API + "/logout", headers={"Authorization": f"Bearer {access}"}
            )
            assert logout.status_code == 204
            for _ in range(8):
                assert_refused(me(server, access))
