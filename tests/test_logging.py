"""Structured logging: one access line per request with its request id (also the
`X-Request-ID` response header), JSON lines with LOG_FORMAT=json, and security events logged
with who, which session and from where, but never a credential."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from conductor_api.logs import ACCESS, SECURITY, JsonFormatter, TextFormatter, configure_logging
from tests.conftest import CLIENT_IP, PASSWORD, Account, bearer, login, tokens

API = "/api/v1/auth"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Everything the application logs at INFO and above."""
    caplog.set_level(logging.INFO)
    return caplog


def records(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> list[dict[str, Any]]:
    """The attributes (fields included) of one logger's records."""
    return [vars(r) for r in caplog.records if r.name == logger.name]


def rendered(caplog: pytest.LogCaptureFixture) -> str:
    """Every record of the application as both formatters would write it."""
    json_fmt, text_fmt = JsonFormatter(), TextFormatter()
    return "\n".join(
        f"{json_fmt.format(r)}\n{text_fmt.format(r)}"
        for r in caplog.records
        if r.name.startswith("conductor_api")
    )


class TestAccessLine:
    async def test_one_line_per_request_with_its_fields(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        response = await client.get("/health/live")

        [line] = records(logs, ACCESS)
        assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])
        assert response.headers["x-request-id"] == line["request_id"]
        assert (line["method"], line["path"], line["status"]) == ("GET", "/health/live", 200)
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0

    async def test_the_duration_is_the_time_spent_on_the_request(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        before = time.perf_counter()
        await client.get("/health/live")
        elapsed_ms = (time.perf_counter() - before) * 1000

        [line] = records(logs, ACCESS)
        assert 0 <= line["duration_ms"] <= elapsed_ms + 1

    async def test_each_request_gets_its_own_id(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        first = await client.get("/health/live")
        second = await client.get("/health/live")

        ids = [r["request_id"] for r in records(logs, ACCESS)]
        assert ids == [first.headers["x-request-id"], second.headers["x-request-id"]]
        assert ids[0] != ids[1]

    async def test_error_statuses_are_logged(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        await client.get(f"{API}/me")
        await client.post(f"{API}/login", content=b"x" * (65 * 1024))
        await client.get("/nowhere")

        lines = [(r["method"], r["path"], r["status"]) for r in records(logs, ACCESS)]
        assert lines == [
            ("GET", f"{API}/me", 401),
            ("POST", f"{API}/login", 413),
            ("GET", "/nowhere", 404),
        ]

    async def test_a_percent_encoded_path_cannot_forge_the_lines_fields(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        """Decoded, `%20200%20` would read as the status of a successful request."""
        await client.get(f"{API}/login%20200%20status=200%20client=203.0.113.9")
        [line] = [r.getMessage() for r in logs.records if r.name == "conductor_api.access"]
        assert line == f"GET {API}/login%20200%20status=200%20client=203.0.113.9 404"

    async def test_the_query_string_is_not_logged(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        # Query strings are where careless clients put tokens.
        await client.get(f"{API}/events", params={"limit": 5, "access_token": "leaked-value"})

        [line] = records(logs, ACCESS)
        assert line["path"] == f"{API}/events"
        assert "leaked-value" not in rendered(logs)


class TestRequestIdHeader:
    @pytest.mark.parametrize("sent", ["trace-123", "A.b_C-9", "x" * 64])
    async def test_a_safe_client_id_is_echoed_and_logged(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture, sent: str
    ) -> None:
        response = await client.get("/health/live", headers={"X-Request-ID": sent})

        assert response.headers["x-request-id"] == sent
        assert records(logs, ACCESS)[0]["request_id"] == sent

    @pytest.mark.parametrize("sent", ["a b\n", "abc\n", "x" * 65, "", "a/b", "a\tb", "é"])
    async def test_an_unsafe_client_id_is_replaced(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture, sent: str
    ) -> None:
        response = await client.get(
            "/health/live", headers=[(b"X-Request-ID", sent.encode("latin-1"))]
        )

        echoed = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)
        assert records(logs, ACCESS)[0]["request_id"] == echoed

    async def test_every_response_carries_one(self, client: httpx.AsyncClient) -> None:
        for response in (
            await client.get("/health/live"),
            await client.get(f"{API}/me"),
            await client.post(f"{API}/login", json={}),
            await client.post(f"{API}/login", content=b"x" * (65 * 1024)),
        ):
            assert len(response.headers.get_list("x-request-id")) == 1, response.status_code


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """The application's loggers written as JSON lines to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    app_logger = logging.getLogger("conductor_api")
    level = app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        app_logger.removeHandler(handler)
        app_logger.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each line parsed; fails if one is not a JSON object."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


class TestJsonFormat:
    async def test_an_access_line_is_a_json_object_with_the_fields(
        self, client: httpx.AsyncClient, json_stream: io.StringIO
    ) -> None:
        response = await client.get(f"{API}/me", headers={"X-Request-ID": "req-1"})

        [line] = json_lines(json_stream)
        assert line["logger"] == "conductor_api.access"
        assert line["level"] == "info"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["time"])
        assert response.headers["x-request-id"] == line["request_id"] == "req-1"
        assert (line["method"], line["path"], line["status"]) == ("GET", f"{API}/me", 401)
        assert isinstance(line["duration_ms"], float)

    async def test_a_security_event_shares_the_request_id_of_its_access_line(
        self, client: httpx.AsyncClient, alice: Account, json_stream: io.StringIO
    ) -> None:
        response = await login(client, password="wrong password, not alice's")

        event, access = json_lines(json_stream)
        assert event["logger"] == "conductor_api.security"
        assert event["level"] == "warning"
        assert event["event"] == "login_failed"
        assert event["user_id"] == str(alice.id)
        assert event["session_id"] is None
        assert event["client"] == CLIENT_IP
        assert event["request_id"] == access["request_id"] == response.headers["x-request-id"]
        assert "wrong password" not in json_stream.getvalue()

    async def test_a_percent_encoded_newline_stays_in_one_line(
        self, client: httpx.AsyncClient, json_stream: io.StringIO
    ) -> None:
        await client.get(f"{API}/sessions/%0A%7B%22forged%22%3A1%7D")

        [line] = json_lines(json_stream)
        # As sent, still percent-encoded.
        assert line["path"] == f"{API}/sessions/%0A%7B%22forged%22%3A1%7D"

    def test_debug_lines_of_the_database_drivers_are_not_logged(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # aiosqlite logs every statement with its parameters at DEBUG: password hashes,
        # refresh- and device-token hashes, usernames that were typed, the encrypted TOTP secret.
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            configure_logging("json", "debug")
            logging.getLogger("aiosqlite").debug("executing %s", SECRET_HASH)
            logging.getLogger("asyncpg").debug("executing %s", SECRET_HASH)
            logging.getLogger("sqlalchemy.engine.Engine").info("parameters %s", SECRET_HASH)
            logging.getLogger("conductor_api").debug("at the level")
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
            logging.getLogger("uvicorn.access").disabled = False
        err = capsys.readouterr().err
        assert "secret-hash" not in err
        assert [json.loads(line)["message"] for line in err.splitlines()] == ["at the level"]

    def test_configure_logging_json_writes_json_lines_to_stderr(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            configure_logging("json", "info")
            assert logging.getLogger("uvicorn.access").disabled
            ACCESS.info("GET / 200", extra={"request_id": "r1", "status": 200})
            logging.getLogger("uvicorn.error").info("Started server process")
            logging.getLogger("conductor_api").debug("below the level")
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
            logging.getLogger("uvicorn.access").disabled = False
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [line["message"] for line in lines] == ["GET / 200", "Started server process"]
        assert lines[0]["request_id"] == "r1" and lines[0]["status"] == 200


SECRET_HASH = "$argon2id$v=19$m=65536$secret-hash"


def _raise_with_secret(secret: str) -> None:
    raise ValueError(f"[parameters: ({secret!r},)]")


class TestFormatters:
    @pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
    def test_an_exception_is_logged_by_type_and_stack_not_message(
        self, formatter: logging.Formatter
    ) -> None:
        # SQLAlchemy puts statement parameters (password or refresh-token hashes) in messages.
        try:
            _raise_with_secret(SECRET_HASH)
        except ValueError:
            record = logging.LogRecord(
                "conductor_api", logging.ERROR, __file__, 1, "unhandled error: %s",
                ("ValueError",), sys.exc_info(),
            )  # fmt: skip
        out = formatter.format(record)

        assert "ValueError" in out and "_raise_with_secret" in out
        assert "argon2id" not in out and "secret-hash" not in out

    def test_text_lines_carry_the_fields_and_escape_newlines(self) -> None:
        record = logging.LogRecord(
            "conductor_api.access", logging.INFO, __file__, 1, "%s %s %d",
            ("GET", "/a\nFAKE b", 404), None,
        )  # fmt: skip
        record.__dict__.update(request_id="r-1", status=404, duration_ms=1.5)

        out = TextFormatter().format(record)

        assert "\n" not in out
        assert out.endswith("INFO conductor_api.access GET /a\\nFAKE b 404 request_id=r-1 "
                            "status=404 duration_ms=1.5")  # fmt: skip

    def test_text_lines_escape_terminal_control_characters(self) -> None:
        # A percent-encoded ESC in a path must not reach a terminal that shows the log: `ESC [2K`
        # erases the line, `\r` and ESC sequences can hide or forge what the operator sees.
        record = logging.LogRecord(
            "conductor_api.access", logging.INFO, __file__, 1, "%s %s %d",
            ("GET", "/a\x1b[2K\x1b[1G\x00\x7f\x9bFAKE", 404), None,
        )  # fmt: skip
        record.__dict__.update(path="/a\x1b[2K\x07")

        out = TextFormatter().format(record)

        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", out)
        assert "GET /a\\x1b[2K\\x1b[1G\\x00\\x7f\\x9bFAKE 404" in out
        assert out.endswith("path=/a\\x1b[2K\\x07")

    def test_text_lines_double_a_backslash_and_keep_printable_text(self) -> None:
        # A typed `\x1b` must not read like an escaped ESC; letters beyond ASCII stay as sent.
        record = logging.LogRecord(
            "conductor_api.access", logging.INFO, __file__, 1, "%s %s %d",
            ("GET", "/a\\x1b/é", 404), None,
        )  # fmt: skip
        record.__dict__.update(path="/a\\x1b/é", request_id="r-2")

        out = TextFormatter().format(record)

        assert "GET /a\\\\x1b/é 404" in out
        assert out.endswith("request_id=r-2 path=/a\\\\x1b/é")


class TestSecurityEvents:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        """A lockout after two failures."""
        return {"max_failed_login_attempts": 2}

    @staticmethod
    def events(logs: pytest.LogCaptureFixture) -> list[tuple[str, Any, Any, Any]]:
        """(event, user_id, session_id, client) of each security line."""
        return [
            (r["event"], r["user_id"], r["session_id"], r["client"])
            for r in records(logs, SECURITY)
        ]

    async def test_a_login_and_a_logout(
        self, client: httpx.AsyncClient, alice: Account, logs: pytest.LogCaptureFixture
    ) -> None:
        pair = await tokens(client)
        response = await client.post(f"{API}/logout", headers=bearer(pair["access_token"]))
        assert response.status_code == 204

        uid, sid = str(alice.id), pair["session_id"]
        assert self.events(logs) == [
            ("login_succeeded", uid, sid, CLIENT_IP),
            ("session_revoked", uid, sid, CLIENT_IP),
        ]
        assert all(r["levelno"] == logging.INFO for r in records(logs, SECURITY))

    async def test_failures_and_the_lockout_are_warnings(
        self, client: httpx.AsyncClient, alice: Account, logs: pytest.LogCaptureFixture
    ) -> None:
        for _ in range(2):
            await login(client, password="not the password at all")

        uid = str(alice.id)
        assert self.events(logs) == [
            ("login_failed", uid, None, CLIENT_IP),
            ("login_failed", uid, None, CLIENT_IP),
            ("account_locked", uid, None, CLIENT_IP),
        ]
        assert all(r["levelno"] == logging.WARNING for r in records(logs, SECURITY))
        assert "not the password at all" not in rendered(logs)

    async def test_an_unknown_username_is_not_logged(
        self, client: httpx.AsyncClient, logs: pytest.LogCaptureFixture
    ) -> None:
        # People type their password into the username field.
        await login(client, username="my-Secret-Passphrase-99")

        assert self.events(logs) == [("login_failed", None, None, CLIENT_IP)]
        assert "Secret-Passphrase" not in rendered(logs)

    async def test_refresh_token_reuse_and_a_password_change(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        clock: FrozenClock,
        logs: pytest.LogCaptureFixture,
    ) -> None:
        phone = await tokens(client, fingerprint="phone")
        laptop = await tokens(client, fingerprint="laptop")
        assert (await client.post(f"{API}/refresh", json=phone)).status_code == 200
        clock.advance(seconds=11)
        reused = await client.post(f"{API}/refresh", json=phone)
        assert reused.json()["code"] == "refresh_token_reused"
        new_password = "an entirely new passphrase"
        changed = await client.post(
            f"{API}/password",
            json={"current_password": PASSWORD, "new_password": new_password},
            headers=bearer(laptop["access_token"]),
        )
        assert changed.status_code == 204

        uid = str(alice.id)
        events = self.events(logs)
        assert ("refresh_token_reused", uid, phone["session_id"], CLIENT_IP) in events
        assert ("session_revoked", uid, phone["session_id"], CLIENT_IP) in events
        assert ("password_changed", uid, laptop["session_id"], CLIENT_IP) in events
        reuse = next(r for r in records(logs, SECURITY) if r["event"] == "refresh_token_reused")
        assert reuse["levelno"] == logging.WARNING
        assert reuse["request_id"] == reused.headers["x-request-id"]
        out = rendered(logs)
        for secret in (PASSWORD, new_password, phone["refresh_token"], laptop["access_token"]):
            assert secret not in out

    async def test_every_recorded_event_is_logged(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        logs: pytest.LogCaptureFixture,
    ) -> None:
        pair = await tokens(client)
        await login(client, password="wrong one")
        await client.post(f"{API}/sessions/revoke-others", headers=bearer(pair["access_token"]))
        await tokens(client, fingerprint="x")
        own = f"{API}/sessions/{pair['session_id']}"
        await client.delete(own, headers=bearer(pair["access_token"]))

        async with container.sessionmaker() as db:
            rows = (
                await db.scalars(select(SecurityEvent).order_by(SecurityEvent.created_at))
            ).all()
        stored = sorted((e.type, str(e.user_id), str(e.session_id) if e.session_id else None)
                        for e in rows)  # fmt: skip
        logged = sorted((e, u, s) for e, u, s, _ in self.events(logs))
        assert stored == logged
        assert len(stored) == 4
