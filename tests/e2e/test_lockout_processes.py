"""The per-username limit across processes: of 40 simultaneous wrong-password logins spread
over two servers on one PostgreSQL database, or over two workers on one SQLite file, at most
MAX_FAILED_LOGIN_ATTEMPTS (5) are checked (401) and the rest get 429 `account_locked`."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

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
LOGIN = "/api/v1/auth/login"
WRONG = "wrong password, but long enough"


async def simultaneous_logins(
    urls: list[str], username: str, password: str
) -> list[httpx.Response]:
    """One login per URL, all sent at once."""
    body = {"username": username, "password": password, "device_name": "Pixel 8"}
    limits = httpx.Limits(max_connections=len(urls))
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(url + LOGIN, json=body) for url in urls))


def assert_at_most_five_checked(responses: list[httpx.Response]) -> None:
    """Five 401s (the limit), every other response 429 account_locked with Retry-After."""
    codes = Counter((r.status_code, r.json().get("code")) for r in responses)
    assert codes == {(401, "invalid_credentials"): 5, (429, "account_locked"): 35}, codes
    for response in responses:
        if response.status_code == 429:
            assert 0 < int(response.headers["retry-after"]) <= 15 * 60


def assert_locked(url: str, username: str) -> None:
    """The right password is refused too."""
    response = httpx.post(
        url + LOGIN, json={"username": username, "password": PASSWORD, "device_name": "Pixel"}
    )
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "account_locked"


class TestTwoServersOnPostgres:
    def test_simultaneous_wrong_logins(self, tmp_path: Path, pg_database: str) -> None:
        env = {"DATABASE_URL": pg_database, **SECRETS}
        create_user(tmp_path, env, "erin", PASSWORD)
        with Server(tmp_path / "a", env) as a, Server(tmp_path / "b", env) as b:
            responses = asyncio.run(simultaneous_logins([a.url, b.url] * 20, "erin", WRONG))
            assert_at_most_five_checked(responses)
            assert_locked(a.url, "erin")
            assert_locked(b.url, "erin")


class TestTwoWorkersOnSqlite:
    def test_simultaneous_wrong_logins(self, tmp_path: Path) -> None:
        env = {"CONDUCTOR_DATA_DIR": str(tmp_path / "data")}
        create_user(tmp_path, env, "erin", PASSWORD)
        with Server(tmp_path, env, workers=2) as server:
            responses = asyncio.run(simultaneous_logins([server.url] * 40, "erin", WRONG))
            assert_at_most_five_checked(responses)
            assert_locked(server.url, "erin")


class TestRightPasswordsOnTwoServers:
    def test_simultaneous_right_logins_all_succeed(self, tmp_path: Path, pg_database: str) -> None:
        # Issue 9 item 3: right passwords never lock a name, across instances either.
        env = {"DATABASE_URL": pg_database, **SECRETS}
        create_user(tmp_path, env, "frank", PASSWORD)
        with Server(tmp_path / "a", env) as a, Server(tmp_path / "b", env) as b:
            responses = asyncio.run(simultaneous_logins([a.url, b.url] * 5, "frank", PASSWORD))
            assert Counter(r.status_code for r in responses) == {200: 10}, [
                r.text for r in responses if r.status_code != 200
            ]
            # And the limit still holds for wrong ones afterwards.
            wrong = asyncio.run(simultaneous_logins([a.url, b.url] * 20, "frank", WRONG))
            assert_at_most_five_checked(wrong)
