"""The metrics listener's answers carry what every answer of the API carries: `nosniff`,
and no `Server` header naming the software or its version."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conductor_api.metrics import exposition
from conductor_api.metrics.exposition import MetricsListener
from conductor_api.metrics.service import Metrics


@contextmanager
def listening(directory: Path) -> Iterator[str]:
    """A metrics listener on a free loopback port: its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = MetricsListener("127.0.0.1", port, str(directory), Metrics().declared())
    served.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        served.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[str]:
    with listening(tmp_path) as address:
        yield address


def raw(address: str, request: bytes) -> bytes:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/metrics", 200), ("GET", "/elsewhere", 404), ("POST", "/metrics", 405)],
)
def test_answers_name_no_software_and_forbid_sniffing(
    listener: str, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"http://{listener}{path}")
    assert response.status_code == status
    assert "server" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_request_refused_before_the_application_too(listener: str) -> None:
    """Answered by the HTTP layer itself (`send_error`): too many header lines."""
    lines = b"".join(b"X-%d: y\r\n" % n for n in range(101))
    answer = raw(listener, b"GET /metrics HTTP/1.1\r\n" + lines + b"\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.0 431"), head
    assert b"\r\nserver:" not in head
    assert b"\r\nx-content-type-options: nosniff" in head
    assert answer.split(b"\r\n\r\n", 1)[1] == b"431 Too many headers\n"


def test_a_stalled_request_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(exposition._Quiet, "timeout", 0.5)
    with listening(tmp_path) as address:
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /metr")  # and nothing more
            started = time.monotonic()
            assert conn.recv(65536) == b""  # closed by the listener
            assert time.monotonic() - started < 4
        # The listener still answers, and printed no traceback for the stalled client.
        assert httpx.get(f"http://{address}/metrics").status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_sent_a_byte_at_a_time_is_closed_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each read gets its byte within the timeout: the deadline is the whole request's.
    monkeypatch.setattr(exposition._Quiet, "timeout", 1.0)
    with listening(tmp_path) as address:
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 4:
                try:
                    conn.sendall(b"a")
                except OSError:
                    closed = True
                    break
                conn.settimeout(0.2)
                try:
                    if conn.recv(65536) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
            assert closed, "still open after 4 s"
            assert time.monotonic() - started < 2.5
