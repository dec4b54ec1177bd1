"""`serve --workers N`: a supervisor with one SO_REUSEPORT socket per worker. Connections
spread over the workers; SIGTERM stops everything cleanly; a worker never outlives its
supervisor; a busy port or a clash with METRICS_PORT is one line."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conductor_api.security.passwords import HASH_THREAD_NAME
from tests.conftest import PASSWORD
from tests.dpop.keys import PhoneKey
from tests.e2e.server import Server, clean_env, cli_path, create_user, free_port

pytestmark = pytest.mark.e2e

SECRETS = {
    "JWT_SECRET_KEY": secrets.token_urlsafe(48),
    "JWT_REFRESH_SECRET_KEY": secrets.token_urlsafe(48),
}


def children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_of(server: Server) -> list[int]:
    """The worker processes under the supervisor."""
    assert server.proc is not None
    return [p for p in children(server.proc.pid) if "serving.worker" in _cmdline(p)]


def started_workers(server: Server, count: int = 2) -> list[int]:
    """The workers of a server just launched, as soon as `count` exist (still importing)."""
    deadline = time.monotonic() + 15
    while len(pids := workers_of(server)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pids) == count
    return pids


def assert_all_die(pids: list[int], timeout: float = 15) -> None:
    """Every process of `pids` is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


class TestSpread:
    def test_new_connections_reach_every_worker(self, tmp_path: Path) -> None:
        with Server(tmp_path, SECRETS, workers=2) as server:
            pids = workers_of(server)
            assert len(pids) == 2
            before = {p: cpu_seconds(p) for p in pids}
            # Fresh connections from ever-changing source ports: the kernel picks a socket
            # (and so a worker) per connection.
            for _ in range(300):
                assert httpx.get(server.url + "/health/live").status_code == 200
            used = {p: cpu_seconds(p) - before[p] for p in pids}
        total = sum(used.values())
        assert total > 0
        assert min(used.values()) > 0.15 * total, used


class TestShutdown:
    def test_sigterm_stops_every_process_and_exits_0(self, tmp_path: Path) -> None:
        server = Server(tmp_path, SECRETS, workers=2).start()
        assert server.proc is not None
        pids = workers_of(server)
        server.proc.send_signal(signal.SIGTERM)  # the supervisor only: it stops the workers
        assert server.proc.wait(timeout=30) == 0
        assert_all_die(pids, timeout=10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health/live")
        assert "Traceback" not in server.log()

    def test_workers_die_with_a_killed_supervisor(self, tmp_path: Path) -> None:
        server = Server(tmp_path, SECRETS, workers=2).start()
        assert server.proc is not None
        pids = workers_of(server)
        server.proc.kill()
        server.proc.wait(timeout=10)
        assert_all_die(pids)

    def test_workers_die_with_a_supervisor_killed_while_they_start(self, tmp_path: Path) -> None:
        # Killed while the workers still import, before they have asked the kernel for a
        # signal on their parent's death.
        server = Server(tmp_path, SECRETS, workers=2)
        server.launch()
        assert server.proc is not None
        pids: list[int] = []
        try:
            pids = started_workers(server)
            server.proc.kill()
            server.proc.wait(timeout=10)
            assert_all_die(pids)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def test_ctrl_c_while_starting_prints_no_traceback(self, tmp_path: Path) -> None:
        # Ctrl-C reaches the whole process group: the command and its workers, all still
        # importing.
        server = Server(tmp_path, SECRETS, workers=2)
        server.launch()
        assert server.proc is not None
        pids = started_workers(server)
        os.killpg(server.proc.pid, signal.SIGINT)
        server.proc.wait(timeout=30)
        assert_all_die(pids)
        assert "Traceback" not in server.log(), server.log()

    @pytest.mark.parametrize("after", [0.1, 0.4, 0.8])
    def test_sigterm_before_the_supervisor_runs_is_a_clean_stop(
        self, tmp_path: Path, after: float
    ) -> None:
        # systemd's stop while `serve` still imports or migrates a fresh database: status 0,
        # as for a stop while serving, nothing on standard error, and a database that the
        # next start migrates and serves.
        server = Server(tmp_path, SECRETS)
        server.launch()
        assert server.proc is not None
        time.sleep(after)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
        assert "Traceback" not in server.log() and "error" not in server.log(), server.log()
        with Server(tmp_path, SECRETS) as again:
            assert httpx.get(again.url + "/health/ready", timeout=60).status_code == 200

    def test_a_dead_worker_is_replaced(self, tmp_path: Path) -> None:
        with Server(tmp_path, SECRETS, workers=2) as server:
            first = workers_of(server)
            os.kill(first[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = workers_of(server)
                if len(now) == 2 and first[0] not in now:
                    break
                time.sleep(0.2)
            assert len(workers_of(server)) == 2
            # The dead worker's socket stays open in the supervisor: connections the kernel
            # hands it wait in its backlog until the replacement has started (seconds on a
            # busy machine), and none is refused.
            for _ in range(20):
                assert httpx.get(server.url + "/health/live", timeout=60).status_code == 200


def hashing_threads(pid: int) -> int:
    """How many of a worker's threads carry the password-hashing threads' name."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            count += (task / "comm").read_text().strip() == HASH_THREAD_NAME
    return count


class TestHashingThreads:
    """The hash pool's default size, the core count, is the machine's: `serve --workers N`
    shares it among the workers, and an explicit PASSWORD_HASH_CONCURRENCY is each one's."""

    PASSWORD = secrets.token_urlsafe(18)

    def burst(self, server: Server) -> list[int]:
        """Sign-ins at once, each on a connection of its own (the kernel spreads them over
        the workers); then each worker's hashing threads (its pool grows a thread per hash
        waiting, up to its size, and keeps them)."""
        names = [f"hasher{i}" for i in range(8)]
        for name in names:
            body = {"username": name, "password": self.PASSWORD}
            response = httpx.post(f"{server.url}/api/v1/auth/register", json=body, timeout=60)
            assert response.status_code == 201, response.text

        def login(i: int) -> int:
            body = {"username": names[i % 8], "password": self.PASSWORD, "device_name": "t"}
            return httpx.post(f"{server.url}/api/v1/auth/login", json=body, timeout=60).status_code

        with ThreadPoolExecutor(24) as pool:
            assert set(pool.map(login, range(48))) == {200}
        return [hashing_threads(pid) for pid in workers_of(server)]

    def env(self, **extra: str) -> dict[str, str]:
        return {**SECRETS, "ALLOW_REGISTRATION": "true", "MAX_REGISTRATIONS_PER_IP": "100", **extra}

    def test_two_workers_share_the_cores(self, tmp_path: Path) -> None:
        share = max(1, (os.cpu_count() or 1) // 2)
        with Server(tmp_path, self.env(), workers=2) as server:
            threads = self.burst(server)
        assert len(threads) == 2
        assert max(threads) == share, threads
        assert min(threads) >= 1, threads

    def test_an_explicit_size_is_each_workers(self, tmp_path: Path) -> None:
        with Server(tmp_path, self.env(PASSWORD_HASH_CONCURRENCY="3"), workers=2) as server:
            threads = self.burst(server)
        assert max(threads) == 3, threads


def serve_fails(tmp_path: Path, port: int | None, **env: str) -> str:
    """Run `serve` that must fail at once (on `--port`, unless None); its one line of
    stderr."""
    option = ["--port", str(port)] if port is not None else []
    result = subprocess.run(
        [cli_path(), "serve", *option, "--workers", "2"],
        env=clean_env(CONDUCTOR_DATA_DIR=str(tmp_path / "data"), **SECRETS, **env),
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


class TestUnparsableRequests:
    @pytest.mark.parametrize(
        "request_bytes",
        [
            b"GARBAGE\r\n\r\n",
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"GET /health/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        ],
    )
    def test_are_a_json_400_with_nosniff(self, tmp_path: Path, request_bytes: bytes) -> None:
        # Answered by the HTTP server before the application sees a request.
        with (
            Server(tmp_path, SECRETS) as server,
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
        ):
            sock.sendall(request_bytes)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert lines[0] == "HTTP/1.1 400 Bad Request"
        assert headers["content-type"] == "application/json"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-request-id"]
        assert "server" not in headers
        assert json.loads(body) == {"detail": "Invalid HTTP request", "code": "bad_request"}


def exchange(port: int, request_bytes: bytes) -> tuple[str, dict[str, str], bytes]:
    """One raw request on its own connection: (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Refused before it was all sent: the answer is already there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request_bytes)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], dict(line.lower().split(": ", 1) for line in lines[1:]), body


class TestRequestHeads:
    def test_oversized_heads_and_bad_hosts_are_json_4xx(self, tmp_path: Path) -> None:
        big = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 2048) for i in range(40))  # 80 KiB
        cases = {
            "many headers": (b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", 431),
            "one huge line": (
                b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
                431,
            ),
            "a line that never ends": (
                b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"d" * 100_000,
                431,
            ),
            "no Host": (b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
            "two Hosts": (b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            "junk Host": (b"GET /health/live HTTP/1.1\r\nHost: a b/c@d\r\n\r\n", 400),
            # Served as HTTP/1.1 by the parser, and without the Host 1.1 requires.
            "no version (HTTP/0.9)": (b"GET /health/live\r\n\r\n", 400),
            "HTTP/0.9": (b"GET /health/live HTTP/0.9\r\n\r\n", 400),
            "HTTP/2.0 in HTTP/1 syntax": (
                b"POST /api/v1/auth/refresh HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}",
                400,
            ),
            # RFC 9112 6.1: a transfer coding the server does not know is a 501 (the parser
            # would read the body as plain chunked).
            "gzip, chunked": (
                b"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                501,
            ),
            "identity, chunked": (
                b"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: identity, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                501,
            ),
        }
        codes = {431: "headers_too_large", 501: "not_implemented", 400: "bad_request"}
        fine = {
            "10 KiB of headers": b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: "
            + b"c" * 10_000
            + b"\r\nConnection: close\r\n\r\n",
            "HTTP/1.0 without Host": b"GET /health/live HTTP/1.0\r\n\r\n",
            "IPv6 literal and port": b"GET /health/live HTTP/1.1\r\nHost: [::1]:8000\r\n"
            b"Connection: close\r\n\r\n",
            # RFC 9110 5.5: whitespace around a field value is not part of it.
            "Host with trailing whitespace": b"GET /health/live HTTP/1.1\r\nHost: x:80 \t\r\n"
            b"Connection: close\r\n\r\n",
        }
        with Server(tmp_path, SECRETS) as server:
            for name, (request_bytes, status) in cases.items():
                line, headers, body = exchange(server.port, request_bytes)
                assert line.startswith(f"HTTP/1.1 {status} "), (name, line)
                assert headers["content-type"] == "application/json", name
                assert headers["x-content-type-options"] == "nosniff", name
                assert json.loads(body)["code"] == codes[status], name
            for name, request_bytes in fine.items():
                line, _, body = exchange(server.port, request_bytes)
                assert " 200 " in line, (name, line)
                assert json.loads(body) == {"status": "ok"}, name
            # Chunked alone, in any case, is read as before.
            chunk = b'{"refresh_token": "x"}'
            for coding in (b"chunked", b"Chunked"):
                line, _, body = exchange(
                    server.port,
                    b"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: " + coding
                    + b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk),
                )  # fmt: skip
                assert line.startswith("HTTP/1.1 401 "), (coding, line)
                assert json.loads(body)["code"] == "invalid_refresh_token"


class TestTrailingWhitespace:
    def test_is_not_part_of_a_header_value(self, tmp_path: Path) -> None:
        """RFC 9110 5.5: spaces and tabs after a value are not part of it, and httptools
        hands them over. A Host, a DPoP proof and an X-Request-ID followed by them are read
        without them, at sign-in and at a resource."""
        create_user(tmp_path, SECRETS, "alice", PASSWORD)
        phone = PhoneKey()
        with Server(tmp_path, SECRETS) as server:
            host = f"127.0.0.1:{server.port}"
            login = f"http://{host}/api/v1/auth/login"
            body = json.dumps({"username": "alice", "password": PASSWORD, "device_name": "d"})
            line, headers, answer = exchange(
                server.port,
                (
                    f"POST /api/v1/auth/login HTTP/1.1\r\nHost: {host} \t\r\n"
                    f"DPoP: {phone.proof('POST', login, time.time())} \t\r\n"
                    "X-Request-ID: trace-7 \t\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
                ).encode(),
            )
            assert " 200 " in line, (line, answer)
            assert headers["x-request-id"] == "trace-7"
            token = json.loads(answer)["access_token"]
            me = f"http://{host}/api/v1/auth/me"
            line, _, answer = exchange(
                server.port,
                (
                    f"GET /api/v1/auth/me HTTP/1.1\r\nHost: {host}  \r\n"
                    f"Authorization: DPoP {token}\r\n"
                    f"DPoP: {phone.proof('GET', me, time.time(), token=token)}\t\r\n"
                    "Connection: close\r\n\r\n"
                ).encode(),
            )
            assert " 200 " in line, (line, answer)
            assert json.loads(answer)["username"] == "alice"


class TestUnfinishedBodies:
    def test_a_chunked_body_that_never_ends_runs_nothing(self, tmp_path: Path) -> None:
        """RFC 9112 section 8: without its last chunk a chunked message is incomplete. A
        password change whose body broke off (bad chunk framing, or the connection closed or
        reset before the last chunk) is not run, although its first chunk held it whole."""
        password, new = "correct horse battery staple", "a different horse battery staple"
        metrics_port = free_port()
        env = {**SECRETS, "ALLOW_REGISTRATION": "true", "METRICS_PORT": str(metrics_port)}
        with Server(tmp_path, env) as server, httpx.Client(base_url=server.url) as client:
            assert client.post(
                "/api/v1/auth/register", json={"username": "alice", "password": password}
            ).status_code == 201  # fmt: skip
            login = {"username": "alice", "device_name": "Pixel"}
            token = client.post("/api/v1/auth/login", json={**login, "password": password})
            body = json.dumps({"current_password": password, "new_password": new}).encode()
            head = (
                b"POST /api/v1/auth/password HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + token.json()["access_token"].encode() + b"\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % len(body)
                + body
                + b"\r\n"
            )

            def password_posts() -> float:
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
                return sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("conductor_http_requests_total{")
                    and 'route="/api/v1/auth/password"' in line
                )

            line, _, _ = exchange(server.port, head + b"zz\r\n")  # not a chunk size
            assert line.startswith("HTTP/1.1 400 "), line
            for reset in (False, True):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(head)
                    time.sleep(0.3)
                    if reset:  # RST instead of FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                time.sleep(0.3)
            old = client.post("/api/v1/auth/login", json={**login, "password": password})
            assert old.status_code == 200, old.text
            changed = client.post("/api/v1/auth/login", json={**login, "password": new})
            assert changed.status_code == 401, changed.text
            # Nothing was answered for them, so nothing is counted; the log says 499.
            assert password_posts() == 0
        assert server.log().count("POST /api/v1/auth/password 499") == 3


class TestStalledRequests:
    def test_a_request_that_does_not_arrive_in_time_is_dropped(self, tmp_path: Path) -> None:
        """REQUEST_TIMEOUT_SECONDS: a connection that sends nothing, half a head or half a
        body is closed (a 408 for the half head), so stalled clients cannot hold every
        connection; a request that arrives in time, slowly or on a kept-alive connection, is
        served as ever."""
        env = {**SECRETS, "REQUEST_TIMEOUT_SECONDS": "1"}
        with Server(tmp_path, env) as server:

            def connect() -> socket.socket:
                return socket.create_connection(("127.0.0.1", server.port), timeout=10)

            def read_all(sock: socket.socket) -> bytes:
                answer = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := sock.recv(65536):
                        answer += chunk
                return answer

            silent, half_head, half_body = connect(), connect(), connect()
            half_head.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            half_body.sendall(
                b"POST /api/v1/auth/refresh HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            began = time.monotonic()
            with silent, half_head, half_body:
                assert read_all(silent) == b""
                answer = read_all(half_head)
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "request_timeout"
                assert b"x-content-type-options: nosniff" in answer.lower()
                request_id = answer.lower().split(b"x-request-id: ")[1].split(b"\r\n")[0]
                assert read_all(half_body) == b""
            assert time.monotonic() - began < 8
            # Slow but in time, then a second request on the same kept-alive connection.
            with connect() as slow:
                for piece in (b"GET /health/live HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
                    slow.sendall(piece)
                    time.sleep(0.25)
                first = slow.recv(65536)
                assert first.startswith(b"HTTP/1.1 200 "), first
                time.sleep(0.5)
                slow.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_all(slow).startswith(b"HTTP/1.1 200 ")
            # A blank line after an answer begins no request, yet stops uvicorn's keep-alive
            # timeout: the connection must not stay open for ever.
            with connect() as idle:
                idle.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
                idle.sendall(b"\r\n")
                began = time.monotonic()
                read_all(idle)  # closed (with a 408), not left open
                assert time.monotonic() - began < 5
        # The stalled body reached the application and ran nothing: no answer was counted.
        assert "POST /api/v1/auth/refresh 499" in server.log()
        # The 408's id is in its line of the access log.
        assert any(
            request_id.decode() in line and " 408" in line for line in server.log().splitlines()
        ), server.log()

    def test_a_client_that_stops_reading_is_dropped(self, tmp_path: Path) -> None:
        """A client that asks for more than the buffers hold and reads none of it is
        dropped after REQUEST_TIMEOUT_SECONDS; it no longer holds the connection, the
        answer's memory and its request for ever."""
        env = {**SECRETS, "REQUEST_TIMEOUT_SECONDS": "1"}
        one = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        asked = 200  # about 20 MB of answers, pipelined
        with Server(tmp_path, env) as server:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(20)
            sock.connect(("127.0.0.1", server.port))
            with sock:
                sock.sendall(one * asked)
                time.sleep(3)  # reading nothing
                received = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := sock.recv(1 << 20):
                        received += chunk
            # Dropped: far from every answer came, and the server lives on.
            assert received.count(b"HTTP/1.1 200 ") < asked / 2
            assert httpx.get(f"{server.url}/health/live").status_code == 200


class TestOneLineErrors:
    def test_busy_port(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            line = serve_fails(tmp_path, port)
            by_setting = serve_fails(tmp_path, None, ANDROID_API_PORT=str(port))
        # Named as the operator gave it: the option, or the setting.
        assert line.startswith(f"conductor-api: error: --port: cannot listen on 127.0.0.1:{port}")
        assert by_setting.startswith("conductor-api: error: ANDROID_API_PORT: cannot listen")

    def test_a_host_that_is_not_this_machines(self, tmp_path: Path) -> None:
        line = serve_fails(tmp_path, free_port(), ANDROID_API_HOST="192.0.2.1")
        assert line.startswith("conductor-api: error: ANDROID_API_HOST: cannot listen"), line

    def test_busy_metrics_port(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            mport = taken.getsockname()[1]
            line = serve_fails(tmp_path, free_port(), METRICS_PORT=str(mport))
        assert line.startswith("conductor-api: error: METRICS_PORT: cannot listen"), line

    @pytest.mark.parametrize(
        ("host", "why"),
        [
            # Neither an address nor a host name: refused as a setting, before anything starts.
            ("not a host", "not an IP address or a host name"),
            ("999.1.1.1", "not an IP address or a host name"),
            # 192.0.2.1 (TEST-NET-1) is an address, but none of this machine's.
            ("192.0.2.1", "cannot listen on 192.0.2.1:"),
        ],
    )
    def test_a_metrics_host_it_cannot_listen_on(self, tmp_path: Path, host: str, why: str) -> None:
        line = serve_fails(tmp_path, free_port(), METRICS_PORT=str(free_port()), METRICS_HOST=host)
        assert line.startswith(f"conductor-api: error: METRICS_HOST: {why}"), line

    def test_metrics_port_equal_to_the_api_port_given_by_option(self, tmp_path: Path) -> None:
        port = free_port()
        line = serve_fails(tmp_path, port, METRICS_PORT=str(port))
        assert "METRICS_PORT" in line


def test_the_command_line_imports_no_metrics_library() -> None:
    """prometheus-client chooses file-backed values when first imported: `serve` must set
    its directory first, so nothing the command line loads may import it earlier."""
    code = "import sys, conductor_api.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"
