"""A real server on PostgreSQL whose database goes away: 503s in bounded time, never a 500
and never a hung process; and no restart needed once the database is back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ACCESS_SECRET, PASSWORD, PG_HOST, PG_PORT, REFRESH_SECRET, TEST_KEK
from tests.e2e.server import Server
from tests.test_database_outage import BOUND, DATABASE_TIMEOUT, TcpProxy

pytestmark = pytest.mark.e2e

T = TypeVar("T")
USERNAME = "alice"


class ProxyThread:
    """A `TcpProxy` on an event loop of its own, driven from the test's thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> TcpProxy:
            return TcpProxy(target_host, target_port)

        self.proxy = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self.proxy.port

    def start(self) -> None:
        """Listen and forward (on the same port after a stop)."""
        self._run(self.proxy.start())

    def stop(self) -> None:
        """Refuse connections and reset every open one."""
        self._run(self.proxy.stop())

    def pause(self) -> None:
        """Accept but forward nothing."""
        self._loop.call_soon_threadsafe(self.proxy.pause)

    def resume(self) -> None:
        """Forward again."""
        self._loop.call_soon_threadsafe(self.proxy.resume)

    def close(self) -> None:
        """Stop the proxy and its loop."""
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def proxy() -> Iterator[ProxyThread]:
    """A proxy in front of the test PostgreSQL, running in a thread."""
    p = ProxyThread(PG_HOST, PG_PORT)
    p.start()
    yield p
    p.close()


@pytest.fixture
def server(tmp_path: Path, pg_database: str, proxy: ProxyThread) -> Iterator[Server]:
    """Two workers whose every database connection goes through the proxy."""
    database = urlsplit(pg_database).path.lstrip("/")
    env = {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}",
        "DATABASE_TIMEOUT_SECONDS": str(DATABASE_TIMEOUT),
        "CONDUCTOR_DATA_DIR": str(tmp_path / "data"),
        "JWT_SECRET_KEY": ACCESS_SECRET,
        "JWT_REFRESH_SECRET_KEY": REFRESH_SECRET,
        "KEY_ENCRYPTION_KEY": TEST_KEK,
        "ALLOW_REGISTRATION": "true",
        "LOG_FORMAT": "json",
    }
    with Server(tmp_path, env=env, workers=2) as s:
        yield s
        proxy.resume()


@dataclass
class Device:
    """A signed-in client of the server."""

    url: str
    access_token: str
    refresh_token: str

    def requests(self) -> dict[str, Callable[[], httpx.Response]]:
        """One request of each kind that needs the database."""
        timeout = BOUND * 3
        login = {"username": USERNAME, "password": PASSWORD, "device_name": "Pixel 8"}
        auth = {"Authorization": f"Bearer {self.access_token}"}
        refresh = {"refresh_token": self.refresh_token}
        return {
            "ready": lambda: httpx.get(self.url + "/health/ready", timeout=timeout),
            "login": lambda: httpx.post(
                self.url + "/api/v1/auth/login", json=login, timeout=timeout
            ),
            "refresh": lambda: httpx.post(
                self.url + "/api/v1/auth/refresh", json=refresh, timeout=timeout
            ),
            "me": lambda: httpx.get(self.url + "/api/v1/auth/me", headers=auth, timeout=timeout),
            "sessions": lambda: httpx.get(
                self.url + "/api/v1/auth/sessions", headers=auth, timeout=timeout
            ),
        }


def sign_in(server: Server) -> Device:
    """Register the user and log in."""
    created = httpx.post(
        server.url + "/api/v1/auth/register", json={"username": USERNAME, "password": PASSWORD}
    )
    assert created.status_code == 201, created.text
    response = httpx.post(
        server.url + "/api/v1/auth/login",
        json={"username": USERNAME, "password": PASSWORD, "device_name": "Pixel 8"},
    )
    assert response.status_code == 200, response.text
    return Device(server.url, response.json()["access_token"], response.json()["refresh_token"])


def timed(request: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    """The response and how long it took."""
    started = time.monotonic()
    response = request()
    return response, time.monotonic() - started


def expect_unavailable(device: Device, rounds: int = 2) -> None:
    """Every request, several of each sent at once (so both workers answer), gets a
    503 in the contract's shape within the bound."""
    chosen = list(device.requests().items()) * rounds
    with ThreadPoolExecutor(len(chosen)) as pool:
        results = list(pool.map(lambda item: timed(item[1]), chosen))
    for (name, _), (response, elapsed) in zip(chosen, results, strict=True):
        assert response.status_code == 503, (name, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json"), name
        assert response.json()["code"] == "service_unavailable", (name, response.text)
        assert int(response.headers["retry-after"]) >= 1, name
        assert elapsed < BOUND, (name, elapsed)


def expect_service(device: Device) -> None:
    """Each request succeeds at its first attempt, on either worker."""
    requests = device.requests()
    for _ in range(4):
        for name in ("ready", "me", "sessions", "login"):
            response = requests[name]()
            assert response.status_code == 200, (name, response.text)
    # The refresh token presented during the outage was never spent.
    refreshed = requests["refresh"]()
    assert refreshed.status_code == 200, refreshed.text


def access_log(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines."""
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def assert_no_server_error(server: Server, *, outage_answered: bool = True) -> None:
    """Nothing answered 500 and nothing escaped as an unhandled error (and the 503s the
    test saw are in the access log, so that the log is the one being read)."""
    records = access_log(server)
    assert any(r.get("status") == 503 for r in records) == outage_answered
    assert [r for r in records if r.get("status") == 500] == []
    assert [r for r in records if r["level"] in ("error", "critical")] == []
    assert server.proc is not None and server.proc.poll() is None


class TestPostgresOutage:
    def test_refused_connections_get_503_then_service_resumes(
        self, server: Server, proxy: ProxyThread
    ) -> None:
        device = sign_in(server)
        proxy.stop()
        expect_unavailable(device)
        proxy.start()
        expect_service(device)
        assert_no_server_error(server)

    def test_restart_between_requests_needs_no_retry(
        self, server: Server, proxy: ProxyThread
    ) -> None:
        device = sign_in(server)
        for _ in range(4):  # pooled connections on both workers, in both pools
            assert device.requests()["me"]().status_code == 200
            assert device.requests()["ready"]().status_code == 200
        proxy.stop()
        time.sleep(0.2)
        proxy.start()
        expect_service(device)
        assert_no_server_error(server, outage_answered=False)

    def test_silent_database_gets_503_within_the_bound(
        self, server: Server, proxy: ProxyThread
    ) -> None:
        device = sign_in(server)
        proxy.pause()
        expect_unavailable(device)
        proxy.resume()
        expect_service(device)
        assert_no_server_error(server)

    def test_shutdown_while_the_database_is_silent_does_not_hang(
        self, server: Server, proxy: ProxyThread
    ) -> None:
        device = sign_in(server)
        assert device.requests()["me"]().status_code == 200
        proxy.pause()
        expect_unavailable(device, rounds=1)
        assert server.proc is not None
        started = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=BOUND * 2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {BOUND * 2}s after SIGTERM: {server.log()[-2000:]}")
        assert time.monotonic() - started < BOUND * 2
