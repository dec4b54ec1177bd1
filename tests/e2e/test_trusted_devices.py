"""Trusted devices against a real `conductor-api serve`: an attacker who locks alice's name
does not lock alice's phone out, a thief with the phone's device token but not the password
locks only that token, and the TOTP second step works end to end.

Addresses are told apart through X-Forwarded-For from a trusted proxy (the loopback)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.conftest import PASSWORD
from tests.e2e.server import Server, create_user

pytestmark = pytest.mark.e2e

LOGIN = "/api/v1/auth/login"
WRONG = "wrong password, but long enough"
PHONE = {"X-Forwarded-For": "203.0.113.7"}
ATTACKER = {"X-Forwarded-For": "198.51.100.66"}


def env_for(tmp_path: Path) -> dict[str, str]:
    """SQLite in the test's data directory, the loopback as a trusted proxy."""
    return {"CONDUCTOR_DATA_DIR": str(tmp_path / "data"), "TRUSTED_PROXIES": "127.0.0.1/32"}


def login(
    url: str, headers: dict[str, str], password: str = PASSWORD, device_token: str | None = None
) -> httpx.Response:
    """POST /auth/login as alice."""
    body: dict[str, Any] = {"username": "alice", "password": password, "device_name": "Pixel 8"}
    if device_token is not None:
        body["device_token"] = device_token
    return httpx.post(url + LOGIN, json=body, headers=headers, timeout=30)


def code(response: httpx.Response) -> tuple[int, str | None]:
    """(status, code) of an answer."""
    return response.status_code, response.json().get("code")


@pytest.fixture
def server(tmp_path: Path) -> Any:
    """One server with alice, on SQLite."""
    env = env_for(tmp_path)
    create_user(tmp_path, env, "alice", PASSWORD)
    with Server(tmp_path, env) as s:
        yield s


class TestAttackerCannotLockTheOwnerOut:
    def test_phone_with_its_device_token_signs_in_at_once(self, server: Server) -> None:
        device_token = login(server.url, PHONE).json()["device_token"]
        for _ in range(5):
            assert code(login(server.url, ATTACKER, WRONG)) == (401, "invalid_credentials")
        assert code(login(server.url, ATTACKER)) == (429, "account_locked")
        assert code(login(server.url, PHONE)) == (429, "account_locked")
        ok = login(server.url, PHONE, device_token=device_token)
        assert ok.status_code == 200, ok.text
        assert ok.json()["device_token"] == device_token
        # The name stays locked for everyone without the token.
        assert code(login(server.url, ATTACKER)) == (429, "account_locked")

    def test_a_thief_with_the_token_but_not_the_password_locks_only_the_token(
        self, server: Server
    ) -> None:
        stolen = login(server.url, PHONE).json()["device_token"]
        for _ in range(5):
            assert code(login(server.url, ATTACKER, WRONG, stolen)) == (401, "invalid_credentials")
        locked = login(server.url, ATTACKER, WRONG, stolen)
        assert code(locked) == (429, "account_locked")
        assert 0 < int(locked.headers["retry-after"]) <= 900
        assert code(login(server.url, PHONE, device_token=stolen)) == (429, "account_locked")
        # Alice's name was never charged: she signs in without the token.
        fresh = login(server.url, PHONE)
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["device_token"] != stolen

    def test_forty_simultaneous_wrong_logins_with_one_token_over_two_workers(
        self, tmp_path: Path
    ) -> None:
        env = env_for(tmp_path)
        create_user(tmp_path, env, "alice", PASSWORD)
        with Server(tmp_path, env, workers=2) as s:
            token = login(s.url, PHONE).json()["device_token"]

            async def all_at_once() -> list[httpx.Response]:
                body = {
                    "username": "alice", "password": WRONG, "device_name": "x",
                    "device_token": token,
                }  # fmt: skip
                limits = httpx.Limits(max_connections=40)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                    return await asyncio.gather(
                        *(
                            client.post(s.url + LOGIN, json=body, headers=ATTACKER)
                            for _ in range(40)
                        )
                    )

            counts = Counter(code(r) for r in asyncio.run(all_at_once()))
            assert counts == {(401, "invalid_credentials"): 5, (429, "account_locked"): 35}, counts
            assert login(s.url, PHONE).status_code == 200


class TestTwoStepSignIn:
    def test_totp_from_setup_to_verify(self, server: Server) -> None:
        first = login(server.url, PHONE).json()
        auth = {"Authorization": f"Bearer {first['access_token']}", **PHONE}
        setup = httpx.post(
            server.url + "/api/v1/auth/mfa/totp/setup",
            json={"current_password": PASSWORD}, headers=auth,
        )  # fmt: skip
        assert setup.status_code == 200, setup.text
        totp = pyotp.TOTP(setup.json()["secret"])
        confirm = httpx.post(
            server.url + "/api/v1/auth/mfa/totp/confirm", json={"code": totp.now()}, headers=auth
        )
        assert confirm.status_code == 200, confirm.text
        pending = login(server.url, PHONE, device_token=first["device_token"])
        assert code(pending) == (403, "mfa_required")
        recovery = confirm.json()["recovery_codes"][0].upper()
        done = httpx.post(
            server.url + "/api/v1/auth/mfa/verify",
            json={"mfa_token": pending.json()["mfa_token"], "recovery_code": recovery},
            headers=PHONE,
        )
        assert done.status_code == 200, done.text
        assert done.headers["cache-control"] == "no-store"
        assert done.json()["device_token"]
