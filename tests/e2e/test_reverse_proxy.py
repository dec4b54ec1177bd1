"""A real nginx (deploy/'s config) in front of `serve --workers 2`. Behind TRUSTED_PROXIES
the session list and the events show the address nginx forwarded, the per-address limit
counts that address, and a client's own X-Forwarded-For cannot choose it; without
TRUSTED_PROXIES the server sees the proxy.

Clients connect from other loopback addresses (127.0.0.2, ...) so that a client's address
differs from the proxy's (127.0.0.1)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.dpop.keys import PhoneKey
from tests.e2e.proxy import Nginx
from tests.e2e.server import Server, create_user, free_port
from tests.e2e.test_serve import exchange

pytestmark = pytest.mark.e2e

SECRETS = {
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "JWT_REFRESH_SECRET_KEY": secrets.token_urlsafe(48),
}
API = "/api/v1/auth"
WRONG = "wrong password, but long enough"
LIMIT = 3


@contextmanager
def behind_nginx(tmp_path: Path, *, tls: bool = False, **env: str) -> Iterator[Nginx]:
    """alice's server (two workers) with nginx in front (`tls`: also on HTTPS)."""
    settings = {**SECRETS, "MAX_FAILED_LOGINS_PER_IP": str(LIMIT), **env}
    create_user(tmp_path / "api", SECRETS, "alice", PASSWORD)
    with (
        Server(tmp_path / "api", settings, workers=2) as server,
        Nginx(tmp_path / "nginx", server.port, tls=tls) as nginx,
    ):
        yield nginx


def client_from(nginx: Nginx, address: str) -> httpx.Client:
    """A client whose connections come from `address`."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=nginx.url + API, transport=transport, timeout=30)


def login(client: httpx.Client, password: str = PASSWORD, **headers: str) -> httpx.Response:
    """POST /auth/login as alice."""
    body = {"username": "alice", "password": password, "device_name": "Pixel 8"}
    return client.post("/login", json=body, headers=headers)


def sessions_and_events(client: httpx.Client, token: str) -> tuple[Any, Any]:
    """The caller's session list and security events."""
    auth = {"Authorization": f"Bearer {token}"}
    sessions = client.get("/sessions", headers=auth)
    events = client.get("/events", headers=auth)
    assert sessions.status_code == events.status_code == 200, sessions.text + events.text
    return sessions.json(), events.json()


def event_list(events: Any) -> list[dict[str, Any]]:
    """The events, whether the body is a list or a page object."""
    if isinstance(events, dict):
        for value in events.values():
            if isinstance(value, list):
                return value
    assert isinstance(events, list)
    return events


class TestTrustedNginx:
    def test_forwarded_address_is_seen_limited_and_cannot_be_chosen(self, tmp_path: Path) -> None:
        with behind_nginx(tmp_path, TRUSTED_PROXIES="127.0.0.1") as nginx:
            with client_from(nginx, "127.0.0.2") as phone:
                pair = login(phone)
                assert pair.status_code == 200, pair.text
                sessions, events = sessions_and_events(phone, pair.json()["access_token"])
            assert [s["ip_address"] for s in sessions] == ["127.0.0.2"]
            logins = [e for e in event_list(events) if e["type"] == "login_succeeded"]
            assert [e["ip_address"] for e in logins] == ["127.0.0.2"]

            # A client's own X-Forwarded-For: nginx appends the real peer, which wins.
            with client_from(nginx, "127.0.0.3") as liar:
                pair = login(liar, **{"X-Forwarded-For": "198.51.100.7"})
                assert pair.status_code == 200, pair.text
                sessions, _ = sessions_and_events(liar, pair.json()["access_token"])
            current = [s for s in sessions if s["current"]]
            assert [s["ip_address"] for s in current] == ["127.0.0.3"]

            # The per-address limit counts the forwarded address, whatever the header says.
            with client_from(nginx, "127.0.0.4") as guesser:
                for n in range(LIMIT):
                    spoof = {"X-Forwarded-For": f"198.51.100.{n + 10}"}
                    assert login(guesser, WRONG, **spoof).status_code == 401
                blocked = login(guesser, PASSWORD, **{"X-Forwarded-For": "198.51.100.99"})
                assert blocked.status_code == 429, blocked.text
                assert blocked.json()["code"] == "too_many_attempts"
            # ... and only that address: another client behind the same proxy signs in.
            with client_from(nginx, "127.0.0.5") as other:
                assert login(other).status_code == 200


class TestUntrustedNginx:
    def test_without_trusted_proxies_the_server_sees_the_proxy(self, tmp_path: Path) -> None:
        with behind_nginx(tmp_path) as nginx, client_from(nginx, "127.0.0.2") as phone:
            pair = login(phone, **{"X-Forwarded-For": "198.51.100.7"})
            assert pair.status_code == 200, pair.text
            sessions, events = sessions_and_events(phone, pair.json()["access_token"])
        assert [s["ip_address"] for s in sessions] == ["127.0.0.1"]
        assert {e["ip_address"] for e in event_list(events)} == {"127.0.0.1"}


class TestNginxAnswers:
    def test_no_version_banner_and_what_nginx_refuses_itself_is_json(self, tmp_path: Path) -> None:
        with behind_nginx(tmp_path, TRUSTED_PROXIES="127.0.0.1") as nginx:
            live = httpx.get(nginx.url + "/health/live")
            assert live.status_code == 200
            assert "/" not in live.headers.get("server", ""), live.headers  # no version
            # Over the API's 64 KiB: the API's own JSON 413 comes through.
            over = httpx.post(nginx.url + API + "/login", content=b"x" * (70 * 1024))
            # Over nginx's own bound: nginx answers, in the API's shape.
            far_over = httpx.post(nginx.url + API + "/login", content=b"x" * (2 * 1024 * 1024))
            for response in (over, far_over):
                assert response.status_code == 413
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["code"] == "payload_too_large"
                assert response.headers["x-content-type-options"] == "nosniff"

    def test_requests_nginx_refuses_before_the_api_are_json_too(self, tmp_path: Path) -> None:
        """Malformed request lines (which nginx cannot give a URI), a URL over nginx's
        buffer, a method or transfer coding or version it will not forward: the API's JSON
        shape with nosniff, never an HTML page or a 500."""
        cases = {
            "garbage": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
            "lower-case method": (
                b"post /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
                "bad_request",
            ),
            "NUL in the path": (
                b"GET /health/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
                "bad_request",
            ),
            "URL over 8 KiB": (
                b"GET /health/live?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                414,
                "uri_too_long",
            ),
            "gzip transfer coding": (
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                400,
                "bad_request",
            ),
            "HTTP/2.0 line": (b"GET /health/live HTTP/2.0\r\nHost: x\r\n\r\n", 400, "bad_request"),
            "TRACE": (b"TRACE /health/live HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
            "nginx's own paths": (
                b"GET /__conductor__/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                404,
                "not_found",
            ),
        }
        with Nginx(tmp_path / "nginx", free_port()) as nginx:
            for name, (request_bytes, status, code) in cases.items():
                line, headers, body = exchange(nginx.port, request_bytes)
                assert line.startswith(f"HTTP/1.1 {status} "), (name, line, body[:200])
                assert headers["content-type"] == "application/json", name
                assert headers["x-content-type-options"] == "nosniff", name
                assert json.loads(body)["code"] == code, name
                if status == 405:
                    assert headers["allow"].upper() == "GET, HEAD, POST, PATCH, DELETE", name
            assert "redirect to named location" not in nginx.error_log(), nginx.error_log()

    def test_an_http_1_0_request_without_host_reaches_the_api(self, tmp_path: Path) -> None:
        with behind_nginx(tmp_path) as nginx:
            line, _, body = exchange(nginx.port, b"GET /health/live HTTP/1.0\r\n\r\n")
        assert line.startswith("HTTP/1.1 200 "), (line, body)
        assert json.loads(body) == {"status": "ok"}

    def test_the_api_down_is_a_json_503(self, tmp_path: Path) -> None:
        with Nginx(tmp_path / "nginx", free_port()) as nginx:  # nothing listens upstream
            response = httpx.get(nginx.url + API + "/me")
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-content-type-options"] == "nosniff"

    def test_with_its_tls_lines_on_every_https_answer_carries_hsts(self, tmp_path: Path) -> None:
        # deploy/'s TLS lines uncommented as an operator does (a self-signed certificate):
        # the API's answers and nginx's own (its 413 and 503, in locations with headers of
        # their own, which do not inherit the server's) carry HSTS; plain HTTP ones do not.
        hsts = "strict-transport-security"
        with behind_nginx(tmp_path, tls=True) as nginx:
            assert nginx.tls_context is not None
            with httpx.Client(base_url=nginx.tls_url, verify=nginx.tls_context) as tls:
                answers = {
                    "proxied": tls.get("/health/live"),
                    "nginx's 413": tls.post(API + "/login", content=b"x" * (2 * 1024 * 1024)),
                }
            plain = httpx.get(nginx.url + "/health/live")
        with Nginx(tmp_path / "down", free_port(), tls=True) as nginx:  # nothing upstream
            assert nginx.tls_context is not None
            down = httpx.get(nginx.tls_url + API + "/me", verify=nginx.tls_context)
            answers["nginx's 503"] = down
        assert answers["proxied"].status_code == 200
        assert answers["nginx's 413"].status_code == 413
        assert answers["nginx's 503"].status_code == 503
        for name, response in answers.items():
            assert response.headers.get(hsts) == "max-age=63072000", (name, response.headers)
        assert hsts not in plain.headers, plain.headers

    def test_a_dpop_sign_in_through_nginx_on_its_own_port(self, tmp_path: Path) -> None:
        # The proof names the URL the phone used, nginx's port included.
        phone = PhoneKey()
        with behind_nginx(tmp_path, TRUSTED_PROXIES="127.0.0.1") as nginx:
            url = nginx.url + API + "/login"
            assert ":80/" not in url
            body = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}
            response = httpx.post(
                url, json=body, headers={"DPoP": phone.proof("POST", url, time.time())}
            )
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "DPoP"
