"""A real Prometheus (deploy/'s config, its target and intervals substituted) scrapes
`serve --workers 2` and answers PromQL over its HTTP API: the lockout a test provoked is
there, summed over the workers, and the shipped alert rules are loaded."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.e2e.server import Server, _die_with_parent, create_user, free_port
from tests.e2e.tools import DEPLOY, tool

pytestmark = pytest.mark.e2e

SECRETS = {
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "JWT_REFRESH_SECRET_KEY": secrets.token_urlsafe(48),
}
WRONG = "wrong password, but long enough"


def prometheus_config(target: str) -> str:
    """deploy/prometheus.yml with the test's target, second intervals and the rules file by
    its absolute path; nothing else changes."""
    text = (DEPLOY / "prometheus.yml").read_text()
    for old, new in (
        ('"127.0.0.1:9464"', f'"{target}"'),
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ("- conductor-api.rules.yml", f"- {DEPLOY / 'conductor-api.rules.yml'}"),
    ):
        assert text.count(old) == 1, f"deploy/prometheus.yml changed shape: {old}"
        text = text.replace(old, new)
    return text


@contextmanager
def prometheus(workdir: Path, target: str) -> Iterator[str]:
    """Prometheus on a free loopback port with its own storage; its base URL."""
    binary = tool("prometheus")
    workdir.mkdir(parents=True)
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(target))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=_die_with_parent,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail("prometheus exited: " + (workdir / "prometheus.log").read_text())
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus not ready: " + (workdir / "prometheus.log").read_text())
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    response = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_value(url: str, promql: str, expected: float, timeout: float = 45) -> float:
    """Poll `promql` until its single value is `expected`; the last value seen."""
    deadline = time.monotonic() + timeout
    value = float("nan")
    while time.monotonic() < deadline:
        result = query(url, promql)
        if result:
            value = float(result[0]["value"][1])
            if value == expected:
                return value
        time.sleep(0.5)
    return value


def test_prometheus_scrapes_the_server_and_answers_promql(tmp_path: Path) -> None:
    tool("prometheus")
    metrics_port = free_port()
    env = {**SECRETS, "METRICS_PORT": str(metrics_port), "MAX_FAILED_LOGIN_ATTEMPTS": "2"}
    create_user(tmp_path / "api", SECRETS, "alice", PASSWORD)
    with Server(tmp_path / "api", env, workers=2) as server:
        body = {"username": "alice", "password": WRONG, "device_name": "Pixel 8"}
        codes = [
            httpx.post(server.url + "/api/v1/auth/login", json=body).json()["code"]
            for _ in range(4)
        ]
        assert codes == ["invalid_credentials"] * 2 + ["account_locked"] * 2, codes
        with prometheus(tmp_path / "prometheus", f"127.0.0.1:{metrics_port}") as url:
            locked = 'sum(conductor_logins_total{result="locked"})'
            assert wait_for_value(url, locked, 2.0) == 2.0
            failed = 'sum(conductor_logins_total{method="password",result="failed"})'
            assert wait_for_value(url, failed, 2.0) == 2.0
            up = query(url, 'up{job="conductor-api"}')
            assert [r["value"][1] for r in up] == ["1"]
            rules = httpx.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
            names = {r["name"] for g in rules for r in g["rules"]}
            assert names == {
                "ConductorLockoutStorm", "ConductorRefreshTokenReuse", "ConductorHashQueueGrowing"
            }  # fmt: skip
