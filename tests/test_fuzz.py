"""Schemathesis over the app's own OpenAPI document: every operation, without a token and with
a valid bearer token, on SQLite and on PostgreSQL.

Every response must be a non-5xx, with a status code, content type, headers and body that the
document describes. Generation is bounded and derandomized so the run is repeatable and fast.

Schemathesis and Hypothesis are synchronous and the app lives on the test session's event
loop (its engine, its clock), so each test runs Hypothesis in a worker thread and hands every
request back to that loop. This is `case.call_and_validate()` with the sending done by an
`httpx.ASGITransport` client instead of Schemathesis' own (which would need a second loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.schemas import APIOperation

from conductor_api.app import create_app
from conductor_api.container import Container
from tests.conftest import PASSWORD, add_user, bearer, make_client, make_settings, tokens

MAX_EXAMPLES = 15
API = "/api/v1/auth"
NEW_PASSWORD = "a different long passphrase"
BASE_URL = "http://testserver"
# The app's own document (building it touches no database), loaded once for collection.
DOCUMENT = create_app(make_settings(Path("unused"), None)).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = sorted(
    (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
)
# Operations that need a bearer token.
BEARER = {
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if op.get("security")
}
# Only checks that judge the response at hand: the others re-send requests through
# Schemathesis' own transport, which cannot reach an app living on another event loop.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]
Case = schemathesis.Case[APIOperation[Any, Any, Any, Any]]
# requests.Request keywords (Schemathesis serializes a case for `requests`).
_REQUEST_KEYS = {"method", "url", "headers", "params", "json", "data", "files", "cookies"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Registration and passkeys on (so their paths are fuzzed past their 404), and limits
    out of reach: the fuzzer fails many logins from one address, and a lockout would hide
    every other answer."""
    return {
        "allow_registration": True,
        "webauthn_rp_id": "conductor.example",
        "webauthn_origins": "https://conductor.example",
        "max_failed_login_attempts": 100_000,
        "max_failed_logins_per_ip": 100_000,
        "max_registrations_per_ip": 100_000,
    }


class Sender:
    """Sends Schemathesis cases to the app from a worker thread, through the app's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient) -> None:
        self.loop = loop
        self.client = client

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the app's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def send(self, case: Case, headers: dict[str, str] | None) -> httpx.Response:
        """The request Schemathesis would send, sent with httpx."""
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=headers)
        request_kwargs = {k: v for k, v in kwargs.items() if k in _REQUEST_KEYS}
        prepared = requests.Request(**request_kwargs).prepare()
        assert prepared.method is not None and prepared.url is not None
        body = prepared.body
        assert body is None or isinstance(body, str | bytes)
        request = self.client.build_request(
            prepared.method,
            prepared.url,
            headers={
                k: v.decode("latin-1") if isinstance(v, bytes) else v
                for k, v in prepared.headers.items()
            },
            content=body,
        )
        response: httpx.Response = self.run(self.client.send(request))
        return response


@dataclass
class Explicit:
    """A hand-picked case and the status it must get with a token (401 without, when the
    operation needs one)."""

    case: Case
    status: int


def fuzz(
    method: str,
    path: str,
    sender: Sender,
    headers: Callable[[], dict[str, str] | None],
    explicit: list[Explicit],
    after: Callable[[httpx.Response], None] = lambda _: None,
) -> None:
    """Hand-picked cases, then positive and negative generated ones, for one operation;
    raise on the first failed check."""
    operation = SCHEMA[path][method]

    def check(case: Case) -> httpx.Response:
        sent = headers()
        response = sender.send(case, sent)
        case.validate_response(response, checks=CHECKS, headers=sent)
        after(response)
        return response

    for item in explicit:
        expected = 401 if headers() is None and (method, path) in BEARER else item.status
        response = check(item.case)
        assert response.status_code == expected, response.text

    modes = [schemathesis.GenerationMode.POSITIVE]
    if operation.body or any(True for _ in operation.iter_parameters()):
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES * len(modes),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def generated(case: Case) -> None:
        check(case)

    generated()


def explicit_cases(
    method: str, path: str, pair: dict[str, Any], other: dict[str, Any]
) -> list[Explicit]:
    """Cases random data would hardly find: the successes (200, 201, 204) and a 409, so
    their documented bodies are checked too. `other` is a second session of alice's."""
    operation = SCHEMA[path][method]
    form = "application/x-www-form-urlencoded"
    login = {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}
    cases: dict[tuple[str, str], list[tuple[dict[str, Any], int]]] = {
        ("POST", f"{API}/login"): [({"body": {**login, "device_fingerprint": "fuzz"}}, 200)],
        ("POST", f"{API}/token"): [
            ({"body": {"grant_type": "password", **login}, "media_type": form}, 200),
            (
                {
                    "body": {
                        "grant_type": "refresh_token",
                        "refresh_token": other["refresh_token"],
                    },
                    "media_type": form,
                },
                200,
            ),
        ],
        ("POST", f"{API}/refresh"): [
            ({"body": {"refresh_token": pair["refresh_token"]}}, 200),
            ({"body": {"refresh_token": pair["refresh_token"]}}, 200),  # within the grace window
        ],
        ("POST", f"{API}/register"): [
            ({"body": {"username": "fuzz_user", "password": PASSWORD}}, 201),
            ({"body": {"username": "FUZZ_user", "password": PASSWORD}}, 409),
        ],
        ("DELETE", f"{API}/sessions/{{session_id}}"): [
            ({"path_parameters": {"session_id": other["session_id"]}}, 204),
        ],
        ("POST", f"{API}/password"): [
            ({"body": {"current_password": PASSWORD, "new_password": NEW_PASSWORD}}, 204),
        ],
        ("GET", f"{API}/events"): [({"query": {"limit": 200}}, 200)],
    }
    return [
        Explicit(operation.Case(**kwargs), status)
        for kwargs, status in cases.get((method, path), [])
    ]


async def _sender(client: httpx.AsyncClient) -> Sender:
    return Sender(asyncio.get_running_loop(), client)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
class TestFuzz:
    async def test_without_a_token(
        self, app: FastAPI, container: Container, method: str, path: str
    ) -> None:
        await add_user(container)
        async with make_client(app) as client:
            sender = await _sender(client)
            pair, other = await tokens(client), await tokens(client, fingerprint="other")
            explicit = explicit_cases(method, path, pair, other)
            await asyncio.to_thread(fuzz, method, path, sender, lambda: None, explicit)

    async def test_with_a_valid_token(
        self, app: FastAPI, container: Container, method: str, path: str
    ) -> None:
        await add_user(container)
        async with make_client(app) as client:
            sender = await _sender(client)
            pair, other = await tokens(client), await tokens(client, fingerprint="other")
            explicit = explicit_cases(method, path, pair, other)
            token = [pair["access_token"]]

            def relogin(response: httpx.Response) -> None:
                # Logout (or a revoke) ends the session; keep fuzzing with a live one.
                if response.status_code == 401 and "invalid_token" in response.text:
                    token[0] = sender.run(tokens(client))["access_token"]

            await asyncio.to_thread(
                fuzz, method, path, sender, lambda: bearer(token[0]), explicit, relogin
            )
