"""Metrics of a real `serve --workers 2`: after a scripted mix of sign-ins and refreshes, a
scrape of METRICS_PORT shows every outcome counted once, summed over both workers, in
prometheus-client's text format; nothing is served on the API port; `serve` removes the
directory the workers wrote their figures to."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.server import Server, cli_path, create_user, free_port
from tests.metrics.scrape import LOGIN_RESULT, REFRESH_RESULT, Scrape

pytestmark = pytest.mark.e2e

SECRETS = {
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "JWT_REFRESH_SECRET_KEY": secrets.token_urlsafe(48),
}
API = "/api/v1/auth"
WRONG = "wrong password, but long enough"
GRACE = 2


def metrics_env(tmp_path: Path, metrics_port: int) -> dict[str, str]:
    """A server with metrics on, a small lockout and a short grace window."""
    return {
        **SECRETS,
        "METRICS_PORT": str(metrics_port),
        "MAX_FAILED_LOGIN_ATTEMPTS": "3",
        "REFRESH_REUSE_GRACE_SECONDS": str(GRACE),
        "TMPDIR": str(tmp_path / "tmp"),
    }


def post(server: Server, path: str, body: dict[str, str]) -> httpx.Response:
    """A POST on a fresh connection: with two workers, requests land on either."""
    return httpx.post(server.url + API + path, json=body, timeout=30)


def scripted_mix(server: Server) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Right and wrong logins, a lockout, refreshes (rotated, grace, invalid, reused).
    Returns the expected login and refresh results, and the requests made per route."""
    logins: Counter[str] = Counter()
    refreshes: Counter[str] = Counter()
    routes: Counter[str] = Counter()

    def login(username: str, password: str) -> httpx.Response:
        r = post(server, "/login", {"username": username, "password": password,
                                    "device_name": "Pixel 8"})  # fmt: skip
        routes[f"{API}/login"] += 1
        logins[LOGIN_RESULT[200 if r.status_code == 200 else r.json()["code"]]] += 1
        return r

    def refresh(token: str) -> httpx.Response:
        r = post(server, "/refresh", {"refresh_token": token})
        routes[f"{API}/refresh"] += 1
        if r.status_code != 200:
            refreshes[REFRESH_RESULT[r.json()["code"]]] += 1
        return r

    first = login("alice", PASSWORD).json()
    login("alice", PASSWORD)
    for _ in range(3):
        login("bob", WRONG)  # bob has no account: failures all the same
    for _ in range(3):
        login("alice", WRONG)
    locked = login("alice", PASSWORD)  # locked now, even with the right password
    assert locked.json()["code"] == "account_locked", locked.text
    assert refresh(first["refresh_token"]).status_code == 200
    refreshes["rotated"] += 1
    assert refresh(first["refresh_token"]).status_code == 200  # a retry inside the window
    refreshes["grace"] += 1
    assert refresh("not-a-token").status_code == 401
    time.sleep(GRACE + 1.5)
    assert refresh(first["refresh_token"]).json()["code"] == "refresh_token_reused"
    return logins, refreshes, routes


def scrape(port: int) -> Scrape:
    """GET /metrics on the metrics listener."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


class TestTwoWorkers:
    def test_a_scrape_counts_every_outcome_of_both_workers(self, tmp_path: Path) -> None:
        metrics_port = free_port()
        env = metrics_env(tmp_path, metrics_port)
        (tmp_path / "tmp").mkdir()
        create_user(tmp_path, SECRETS, "alice", PASSWORD)
        with Server(tmp_path, env, workers=2) as server:
            # Before any sign-in, every outcome is there at 0.
            s = scrape(metrics_port)
            assert s.value("conductor_logins_total", method="password", result="locked") == 0
            assert s.has("conductor_logins_total", method="password", result="locked")
            assert s.has("conductor_database_errors_total")
            assert s.has("conductor_password_hash_queue")
            logins, refreshes, routes = scripted_mix(server)
            s = scrape(metrics_port)
            assert sum(logins.values()) == 9
            assert set(logins) == {"succeeded", "failed", "locked"}, logins
            for result in ("succeeded", "failed", "locked", "throttled", "disabled"):
                assert (
                    s.value("conductor_logins_total", method="password", result=result)
                    == logins[result]
                ), result
            for result in ("rotated", "grace", "reused", "invalid"):
                assert s.value("conductor_refreshes_total", result=result) == refreshes[result], (
                    result
                )
            for route, count in routes.items():
                assert s.value("conductor_http_requests_total", route=route) == count, route
                assert (
                    s.value("conductor_http_request_duration_seconds_count", route=route) == count
                )
            # Every login checked is a hash (a verification; a locked name is refused before
            # any), plus each worker's dummy hash at start.
            checked = sum(logins.values()) - logins["locked"]
            assert s.value("conductor_password_hash_seconds_count") >= checked + 2
            assert s.value("conductor_password_hash_queue") == 0
            assert s.value("conductor_database_errors_total") == 0
            assert s.types["conductor_logins"] == "counter"
            for secret in ("alice", "bob", "127.0.0.1", PASSWORD, WRONG):
                assert secret not in s.label_values()
            # A request the HTTP parser refuses is answered (400) and counted like any other.
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
                raw.sendall(b"FOO /x HTTP/1.1\r\nHost: x\r\n\r\n")
                assert raw.recv(65536).startswith(b"HTTP/1.1 400 ")
            s = scrape(metrics_port)
            refused = {"method": "other", "route": "unmatched", "status": "400"}
            assert s.value("conductor_http_requests_total", **refused) == 1
            # Only on the metrics listener: the API port has no /metrics.
            assert httpx.get(server.url + "/metrics").status_code == 404
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/other").status_code == 404
            assert list((tmp_path / "tmp").glob("conductor-metrics-*"))
        assert not list((tmp_path / "tmp").glob("conductor-metrics-*"))
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")

    def test_every_metric_is_there_before_the_first_request(self, tmp_path: Path) -> None:
        metrics_port = free_port()
        env = metrics_env(tmp_path, metrics_port)
        (tmp_path / "tmp").mkdir()
        server = Server(tmp_path, env, workers=2)
        # Started by hand: `Server.start` asks /health/ready, and no request may come first.
        log = server.log_path.open("ab")
        proc = subprocess.Popen(
            [cli_path(), "serve", "--port", str(server.port), "--workers", "2"],
            cwd=tmp_path, env=server.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        server.proc = proc
        try:
            deadline = time.monotonic() + 60
            s = None
            while time.monotonic() < deadline:
                try:
                    s = scrape(metrics_port)
                except httpx.HTTPError:
                    s = None
                # Each worker computes its dummy hash as it starts: both are up.
                if s is not None and s.value("conductor_password_hash_seconds_count") >= 2:
                    break
                time.sleep(0.2)
            assert s is not None, server.log()
            assert s.types == {
                "conductor_http_requests": "counter",
                "conductor_http_request_duration_seconds": "histogram",
                "conductor_logins": "counter",
                "conductor_refreshes": "counter",
                "conductor_password_hash_seconds": "histogram",
                "conductor_password_hash_queue": "gauge",
                "conductor_database_errors": "counter",
            }
            assert not s.has("conductor_http_requests_total")
            # The first request's sample replaces the empty family, not beside it.
            assert httpx.get(server.url + "/health/live").status_code == 200
            s = scrape(metrics_port)
            assert s.value("conductor_http_requests_total", route="/health/live") == 1
            assert s.text.count("# TYPE conductor_http_requests_total counter") == 1
        finally:
            server.stop()

    def test_a_killed_runs_metrics_directory_goes_at_the_next_start(self, tmp_path: Path) -> None:
        env = metrics_env(tmp_path, free_port())
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        # The directory of a process that is alive (pid 1, init) is left alone.
        foreign = tmp / "conductor-metrics-1-abcdef"
        foreign.mkdir()
        killed = Server(tmp_path, env).start()
        [orphan] = [p for p in tmp.glob("conductor-metrics-*") if p != foreign]
        killed.kill()  # SIGKILL: nothing runs to remove the directory
        assert orphan.exists()
        with Server(tmp_path, env):
            left = {p for p in tmp.glob("conductor-metrics-*") if p != foreign}
            assert orphan not in left and len(left) == 1, left
        assert foreign.exists()
        assert [p for p in tmp.glob("conductor-metrics-*") if p != foreign] == []

    def test_metrics_are_off_by_default(self, tmp_path: Path) -> None:
        env = {**SECRETS, "TMPDIR": str(tmp_path / "tmp")}
        (tmp_path / "tmp").mkdir()
        with Server(tmp_path, env) as server:
            assert httpx.get(server.url + "/metrics").status_code == 404
            assert not list((tmp_path / "tmp").glob("conductor-metrics-*"))
