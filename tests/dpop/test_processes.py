"""Real `conductor-api serve` processes sharing a database: server A with two workers and
server B, both behind the same (trusted) proxy name, nonces required.

- a proof used once is refused on every other connection, whichever worker or instance
  takes it (the replay cache is shared: a file beside the SQLite database, a table on
  PostgreSQL);
- a nonce handed out by one worker or instance is accepted by all of them;
- a stock OAuth 2.0 client library that speaks DPoP (requests-oauth2client), unmodified,
  signs in at /auth/token, calls /auth/me and refreshes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from requests_oauth2client import DPoPKey, OAuth2Client

from conductor_api import migrate
from tests.conftest import (
    ACCESS_SECRET,
    PASSWORD,
    REFRESH_SECRET,
    TEST_KEK,
    create_pg_database,
    drop_pg_database,
    make_settings,
    pg_url,
)
from tests.dpop.keys import API, PhoneKey
from tests.e2e.server import Server, create_user

pytestmark = pytest.mark.e2e

PUBLIC = "https://api.example.com"
# What the proxy in front of both servers tells them (they trust 127.0.0.1).
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Server A (two workers) and server B (one) on one database."""
    root = tmp_path_factory.mktemp("dpop-e2e")
    database = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'shared.db'}"
    else:
        database = create_pg_database()
        url = pg_url(database)
    try:
        migrate.upgrade(make_settings(root, url))
        env = {
            "DATABASE_URL": url,
            "JWT_SECRET_KEY": ACCESS_SECRET,
            "JWT_REFRESH_SECRET_KEY": REFRESH_SECRET,
            "KEY_ENCRYPTION_KEY": TEST_KEK,
            "TRUSTED_PROXIES": "127.0.0.1",
            "DPOP_REQUIRE_NONCE": "true",
            "PASSWORD_HASH_CONCURRENCY": "1",
        }
        create_user(root / "a", env, "alice", PASSWORD)
        with Server(root / "a", env, workers=2) as a, Server(root / "b", env) as b:
            yield a, b
    finally:
        if database is not None:
            drop_pg_database(database)


def send(server: Server, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request on a fresh connection (so that either worker may take it)."""
    headers = {**FORWARDED, **kw.pop("headers", {})}
    with httpx.Client(base_url=server.url) as client:
        return client.request(method, path, headers=headers, **kw)


def signed_in(server: Server, key: PhoneKey) -> tuple[str, str]:
    """Log in through `server` with the nonce dance: the bound access token and a nonce."""
    body = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}
    first = send(server, "POST", API + "/login", json=body,
                 headers={"DPoP": key.proof("POST", PUBLIC + API + "/login", _now())})  # fmt: skip
    assert first.status_code == 400 and first.json()["code"] == "use_dpop_nonce", first.text
    nonce = first.headers["DPoP-Nonce"]
    proof = key.proof("POST", PUBLIC + API + "/login", _now(), nonce=nonce)
    second = send(server, "POST", API + "/login", json=body, headers={"DPoP": proof})
    assert second.status_code == 200, second.text
    assert second.json()["token_type"] == "DPoP"
    return second.json()["access_token"], second.headers["DPoP-Nonce"]


def _now() -> float:
    import time

    return time.time()


class TestAcrossProcesses:
    def test_a_proof_is_used_once_across_workers_and_instances(
        self, servers: tuple[Server, Server]
    ) -> None:
        a, b = servers
        key = PhoneKey()
        token, nonce = signed_in(a, key)
        proof = key.proof("GET", PUBLIC + API + "/me", _now(), token=token, nonce=nonce)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert send(a, "GET", API + "/me", headers=headers).status_code == 200
        # Eight more tries on fresh connections to A (both workers, almost surely) and B.
        for server in (a, a, a, a, a, a, b, b):
            replay = send(server, "GET", API + "/me", headers=headers)
            assert replay.status_code == 401, replay.text
            assert replay.json()["code"] == "invalid_dpop_proof"

    def test_a_nonce_from_one_process_is_accepted_by_all(
        self, servers: tuple[Server, Server]
    ) -> None:
        a, b = servers
        key = PhoneKey()
        token, nonce = signed_in(b, key)  # the nonce comes from B
        for server in (a, a, a, a, a, a, b):
            proof = key.proof("GET", PUBLIC + API + "/me", _now(), token=token, nonce=nonce)
            response = send(
                server,
                "GET",
                API + "/me",
                headers={"Authorization": f"DPoP {token}", "DPoP": proof},
            )
            assert response.status_code == 200, response.text


class TestStockClient:
    def test_requests_oauth2client_signs_in_calls_and_refreshes(
        self, servers: tuple[Server, Server]
    ) -> None:
        a, _ = servers
        session = requests.Session()
        session.headers.update(FORWARDED)
        # The servers see the public URL (the proxy's headers); the library posts to the
        # real one, and signs the public one: a small adapter maps the two.
        session.mount(PUBLIC, _Rewrite(a.url))
        client = OAuth2Client(
            token_endpoint=PUBLIC + API + "/token", client_id="conductor-android",
            session=session, dpop_bound_access_tokens=True,
        )  # fmt: skip
        token = client.resource_owner_password(username="alice", password=PASSWORD)
        assert token.token_type == "DPoP"
        assert isinstance(token.dpop_key, DPoPKey)

        me = session.get(PUBLIC + API + "/me", auth=token)
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "alice"

        refreshed = client.refresh_token(token)
        assert refreshed.token_type == "DPoP"
        again = session.get(PUBLIC + API + "/sessions", auth=refreshed)
        assert again.status_code == 200, again.text
        assert [s["bound"] for s in again.json() if s["current"]] == [True]

        stolen = requests.post(
            a.url + API + "/refresh", json={"refresh_token": refreshed.refresh_token},
            headers=FORWARDED, timeout=10,
        )  # fmt: skip
        assert stolen.status_code == 400
        assert stolen.json()["code"] == "invalid_dpop_proof"


class _Rewrite(requests.adapters.HTTPAdapter):
    """Sends requests for the public name to the test server (the proxy's job)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        assert request.url is not None
        sent = request.copy()
        sent.url = request.url.replace(PUBLIC, self.target, 1)
        response = super().send(sent, *args, **kwargs)
        # The client sees its own request (the library signs its retries from it).
        response.request = request
        return response
