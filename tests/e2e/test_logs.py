"""A real server with LOG_FORMAT=json: every line it writes is JSON, every request has one
access line with its request id, and no credential, token, key or hash reaches the log."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server

pytestmark = pytest.mark.e2e

API = "/api/v1/auth"
PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "incorrect mule battery paperclip"
ACCESS_SECRET = "e2e-access-secret-" + secrets.token_hex(16)
REFRESH_SECRET = "e2e-refresh-secret-" + secrets.token_hex(16)


def slices(secret: str, size: int = 20) -> set[str]:
    """Every `size`-character piece of `secret`."""
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


class TestJsonLog:
    def test_a_session_of_requests_logs_json_without_secrets(self, tmp_path: Path) -> None:
        env = {
            "LOG_FORMAT": "json",
            "JWT_SECRET_KEY": ACCESS_SECRET,
            "JWT_REFRESH_SECRET_KEY": REFRESH_SECRET,
            "ALLOW_REGISTRATION": "true",
        }
        creds = {"username": "alice", "password": PASSWORD}
        responses: list[httpx.Response] = []
        with Server(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as http:

            def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
                response = http.request(method, API + path, **kwargs)
                responses.append(response)
                return response

            assert call("POST", "/register", json=creds).status_code == 201
            login = call("POST", "/login", json={**creds, "device_name": "Pixel 8"})
            assert login.status_code == 200
            refresh_token = login.json()["refresh_token"]
            refreshed = call("POST", "/refresh", json={"refresh_token": refresh_token})
            assert refreshed.status_code == 200
            wrong = {**creds, "password": WRONG_PASSWORD, "device_name": "Pixel 8"}
            failed = call("POST", "/login", json=wrong)
            assert failed.status_code == 401
            invalid = call("POST", "/login", json=creds)  # a password but no device_name
            assert invalid.status_code == 422
            token = refreshed.json()["access_token"]
            me = call("GET", "/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
            form = {**creds, "grant_type": "password"}
            assert call("POST", "/token", data=form).status_code == 200
        log = server.log()

        secrets = {PASSWORD, WRONG_PASSWORD, ACCESS_SECRET, REFRESH_SECRET, "$argon2id$"}
        for pair in (login.json(), refreshed.json(), responses[-1].json()):
            for name in ("access_token", "refresh_token"):
                secrets |= slices(pair[name])
        secrets |= slices(ACCESS_SECRET) | slices(REFRESH_SECRET)
        leaked = sorted(s for s in secrets if s in log)
        assert leaked == [], leaked

        lines = [json.loads(line) for line in log.splitlines() if line.strip()]
        assert all(isinstance(line, dict) for line in lines)
        access = [line for line in lines if line["logger"] == "conductor_api.access"]
        assert all(line["request_id"] for line in access)
        by_id = {line["request_id"]: line for line in access}
        for response in responses:
            line = by_id[response.headers["x-request-id"]]
            assert line["status"] == response.status_code
            assert line["path"] == response.request.url.path
            assert line["method"] == response.request.method
            assert isinstance(line["duration_ms"], float)

        events = [line for line in lines if line["logger"] == "conductor_api.security"]
        assert [e["event"] for e in events] == [
            "login_succeeded",
            "login_failed",
            "login_succeeded",
        ]
        failure = events[1]
        assert failure["request_id"] == failed.headers["x-request-id"]
        assert failure["user_id"] == me.json()["id"]
        assert failure["client"] == "127.0.0.1"
        assert failure["level"] == "warning"
