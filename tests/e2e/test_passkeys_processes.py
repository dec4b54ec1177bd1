"""Passkeys against real `conductor-api serve` processes sharing one PostgreSQL database: a
challenge made by one process is answered on another (server A runs two workers, B is a
second process), for a registration and for sign-ins; a passkey deleted through one is
refused by the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.server import Server, create_user
from tests.e2e.test_multiprocess import SECRETS
from tests.passkeys.authenticator import ORIGIN, RP_ID, Authenticator

pytestmark = pytest.mark.e2e

API = "/api/v1/auth"


def _post(
    server: Server, path: str, body: dict[str, Any], token: str | None = None
) -> httpx.Response:
    """POST on a fresh connection (so that either worker may answer)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + API + path, json=body, headers=headers, timeout=30)


def _sign_in(made_by: Server, answered_by: Server, phone: Authenticator) -> httpx.Response:
    started = _post(made_by, "/passkeys/login/options", {}).json()
    return _post(answered_by, "/passkeys/login", {
        "challenge_id": started["challenge_id"], "device_name": "Pixel 8",
        "credential": phone.sign_in(started["options"]),
    })  # fmt: skip


def test_challenges_made_by_one_process_are_answered_on_another(
    tmp_path: Path, pg_database: str
) -> None:
    env = {"DATABASE_URL": pg_database, "WEBAUTHN_RP_ID": RP_ID, "WEBAUTHN_ORIGINS": ORIGIN,
           **SECRETS}  # fmt: skip
    create_user(tmp_path, env, "alice", PASSWORD)
    with Server(tmp_path / "a", env, workers=2) as a, Server(tmp_path / "b", env) as b:
        login = _post(a, "/login", {"username": "alice", "password": PASSWORD,
                                    "device_name": "Pixel 8"})  # fmt: skip
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        phone = Authenticator()

        started = _post(a, "/passkeys/register/options", {}, token).json()
        credential = phone.register(started["options"])
        added = _post(b, "/passkeys/register", {
            "challenge_id": started["challenge_id"], "credential": credential, "name": "Pixel",
        }, token)  # fmt: skip
        assert added.status_code == 201, added.text

        # Made on B, answered on A's two workers; made on A, answered on B and on A.
        for made_by, answered_by in [(b, a), (b, a), (a, b), (a, a), (a, a), (a, a)]:
            signed_in = _sign_in(made_by, answered_by, phone)
            assert signed_in.status_code == 200, signed_in.text
            assert signed_in.json()["device_token"]

        # A spent challenge is spent for every process.
        started = _post(a, "/passkeys/login/options", {}).json()
        body = {"challenge_id": started["challenge_id"], "device_name": "Pixel 8",
                "credential": phone.sign_in(started["options"])}  # fmt: skip
        assert _post(a, "/passkeys/login", body).status_code == 200
        body["credential"] = phone.sign_in(started["options"])
        again = _post(b, "/passkeys/login", body)
        assert again.status_code == 401 and again.json()["code"] == "invalid_passkey"

        passkey_id = added.json()["id"]
        deleted = httpx.delete(
            f"{b.url}{API}/passkeys/{passkey_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert deleted.status_code == 204
        refused = _sign_in(b, a, phone)
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_passkey"
