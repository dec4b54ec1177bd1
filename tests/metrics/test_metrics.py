"""The metrics of the contract, counted in one process (SQLite and PostgreSQL): names,
types, labels (route templates, `unmatched`, numeric status), what each login and refresh
outcome is counted as, every hash timed, and no label holding a name, address or token."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conductor_api import migrate
from conductor_api.app import create_app
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from tests.conftest import (
    CLIENT_IP,
    PASSWORD,
    Account,
    add_user,
    bearer,
    login,
    make_client,
    make_settings,
    tokens,
)
from tests.dpop.keys import PhoneKey
from tests.e2e.server import free_port
from tests.metrics.scrape import LOGIN_RESULT, REFRESH_RESULT, Scrape
from tests.mfa.helpers import code_at, enable_totp, verify

WRONG = "wrong password, but long enough"
API = "/api/v1/auth"


def scrape(container: Container) -> Scrape:
    """This process's metrics, as the listener would render them."""
    return Scrape(container.metrics.render().decode())


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """A small lockout and per-address limit, to reach both in a few requests."""
    return {"max_failed_login_attempts": 3, "max_failed_logins_per_ip": 8}


class TestFromTheStart:
    async def test_every_metric_is_declared_and_the_label_less_ones_are_zero(
        self, app: FastAPI, container: Container
    ) -> None:
        s = scrape(container)
        assert s.types["conductor_http_requests"] == "counter"
        assert s.types["conductor_logins"] == "counter"
        assert s.types["conductor_refreshes"] == "counter"
        assert s.types["conductor_database_errors"] == "counter"
        assert s.types["conductor_http_request_duration_seconds"] == "histogram"
        assert s.types["conductor_password_hash_seconds"] == "histogram"
        assert s.types["conductor_password_hash_queue"] == "gauge"
        assert s.has("conductor_database_errors_total")
        assert s.value("conductor_database_errors_total") == 0
        assert s.has("conductor_password_hash_queue")
        assert s.value("conductor_password_hash_queue") == 0
        # The dummy hash computed at start is a hash like any other.
        assert s.value("conductor_password_hash_seconds_count") == 1
        for method in ("password", "passkey"):
            for result in ("succeeded", "failed", "locked", "throttled", "disabled",
                           "mfa_required"):  # fmt: skip
                assert s.has("conductor_logins_total", method=method, result=result)
                assert s.value("conductor_logins_total", method=method, result=result) == 0
        for result in ("rotated", "grace", "reused", "invalid"):
            assert s.has("conductor_refreshes_total", result=result)


class TestHttp:
    async def test_route_template_method_and_numeric_status(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        pair = await tokens(client)
        sid = pair["session_id"]
        headers = bearer(pair["access_token"])
        r = await client.delete(f"{API}/sessions/{sid}", headers=headers)
        assert r.status_code == 204, r.text
        assert (await client.get("/no/such/path")).status_code == 404
        assert (await client.get(f"{API}/sessions/{sid}/x")).status_code == 404
        assert (await client.get(f"{API}/login")).status_code == 405
        s = scrape(container)
        route = f"{API}/sessions/{{session_id}}"
        assert (
            s.value("conductor_http_requests_total", method="DELETE", route=route, status="204")
            == 1
        )
        assert s.value("conductor_http_requests_total", route="unmatched", status="404") == 2
        assert (
            s.value(
                "conductor_http_requests_total", method="GET", route=f"{API}/login", status="405"
            )
            == 1
        )
        assert (
            s.value(
                "conductor_http_request_duration_seconds_count", method="POST", route=f"{API}/login"
            )
            == 1
        )
        assert sid not in s.text

    async def test_the_documentation_routes_are_routes(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert (await client.get(path)).status_code == 200
        s = scrape(container)
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert s.value("conductor_http_requests_total", route=path, status="200") == 1
        assert not s.has("conductor_http_requests_total", route="unmatched")

    async def test_body_refused_before_routing_is_labelled_with_its_route(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        response = await client.post(f"{API}/login", content=b"x" * (65 * 1024))
        assert response.status_code == 413
        s = scrape(container)
        assert s.value("conductor_http_requests_total", route=f"{API}/login", status="413") == 1

    async def test_a_literal_path_is_not_labelled_with_a_template_that_also_matches_it(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        # `/passkeys/login` also matches `/passkeys/{passkey_id}` (which takes no POST), and
        # `/sessions/revoke-others` matches `/sessions/{session_id}`.
        for path in ("/passkeys/login", "/sessions/revoke-others", "/passkeys/login/options"):
            response = await client.post(API + path, content=b"x" * (65 * 1024))
            assert response.status_code == 413
        s = scrape(container)
        for path in ("/passkeys/login", "/sessions/revoke-others", "/passkeys/login/options"):
            count = s.value("conductor_http_requests_total", route=API + path, status="413")
            assert count == 1, path
        assert not s.has("conductor_http_requests_total", route=API + "/passkeys/{passkey_id}")

    async def test_an_invented_method_is_other(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        await client.request("BREW", "/health/live")
        await client.request("TRACE", "/health/live")  # standard (RFC 9110), if not taken
        s = scrape(container)
        assert s.value("conductor_http_requests_total", method="other") == 1
        assert s.value("conductor_http_requests_total", method="TRACE", status="405") == 1
        assert "BREW" not in s.text

    async def test_each_request_is_counted_before_its_answer_arrives(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        for n in range(1, 4):
            assert (await client.get("/health/live")).status_code == 200
            assert (
                scrape(container).value("conductor_http_requests_total", route="/health/live") == n
            )


class TestLogins:
    async def test_every_outcome_is_counted_as_its_result(
        self, client: httpx.AsyncClient, container: Container, alice: Account, app: FastAPI
    ) -> None:
        await add_user(container, "bob")
        expected: dict[str, int] = {}

        def tally(response: httpx.Response) -> None:
            key = 200 if response.status_code == 200 else response.json()["code"]
            result = LOGIN_RESULT[key]
            expected[result] = expected.get(result, 0) + 1

        tally(await login(client))
        for _ in range(4):  # the lock comes after three failures
            tally(await login(client, "alice", WRONG))
        for _ in range(3):
            tally(await login(client, "carol", WRONG))
        tally(await client.post(f"{API}/token", data={
            "grant_type": "password", "username": "bob", "password": PASSWORD,
        }))  # fmt: skip
        for _ in range(3):  # over the per-address limit now
            tally(await login(client, "dave", WRONG))
        assert {"succeeded", "failed", "locked", "throttled"} <= expected.keys(), expected
        s = scrape(container)
        for result, count in expected.items():
            assert s.value("conductor_logins_total", method="password", result=result) == count
        assert s.value("conductor_logins_total", method="passkey") == 0
        for secret in ("alice", "bob", "carol", "dave", CLIENT_IP, PASSWORD, WRONG):
            assert secret not in s.label_values()
            assert secret not in s.text

    async def test_the_second_step_counts_like_the_first(
        self, client: httpx.AsyncClient, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, _ = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        started = (await login(client)).json()["mfa_token"]
        assert (await verify(client, started, code="000000")).status_code == 401
        assert (await verify(client, "not-a-token", code="000000")).status_code == 401
        right = await verify(client, started, code=code_at(secret, clock.now()))
        assert right.status_code == 200
        s = scrape(container)
        # The first login (before TOTP) and the second step's success; two failed steps.
        assert s.value("conductor_logins_total", method="password", result="succeeded") == 2
        assert s.value("conductor_logins_total", method="password", result="mfa_required") == 1
        assert s.value("conductor_logins_total", method="password", result="failed") == 2

    async def test_disabled_account(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        from sqlalchemy import update

        from conductor_api.users.models import User

        async with container.sessionmaker.begin() as db:
            await db.execute(update(User).where(User.id == alice.id).values(is_active=False))
        response = await login(client)
        assert response.json()["code"] == "account_disabled"
        s = scrape(container)
        assert s.value("conductor_logins_total", method="password", result="disabled") == 1
        assert s.value("conductor_logins_total", result="failed") == 0

    async def test_a_proof_that_does_not_verify_is_a_failed_attempt(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        """A sign-in refused for its DPoP proof counts against the address like a wrong
        password: an operator who sees the address throttled sees the failures too."""
        phone, at = PhoneKey(), container.clock.now().timestamp()
        body = {"username": "alice", "password": PASSWORD, "device_name": "P"}
        for proof in (
            "not a proof",
            phone.proof("POST", f"{API}/refresh", at),  # for another URL
            phone.proof("GET", f"{API}/login", at),  # for another method
        ):
            response = await client.post(f"{API}/login", json=body, headers={"DPoP": proof})
            assert response.json()["code"] == "invalid_dpop_proof", response.text
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        response = await client.post(f"{API}/token", data=form, headers={"DPoP": "x"})
        assert response.json()["code"] == "invalid_dpop_proof", response.text
        s = scrape(container)
        assert s.value("conductor_logins_total", method="password", result="failed") == 4
        assert s.value("conductor_logins_total", result="succeeded") == 0

    async def test_bad_request_is_no_login_attempt(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        await client.post(f"{API}/token", data={"grant_type": "password"})
        await client.post(f"{API}/login", json={"username": "x"})
        assert scrape(container).value("conductor_logins_total") == 0


class TestRefreshes:
    async def test_rotated_grace_reused_invalid(
        self, client: httpx.AsyncClient, container: Container, alice: Account, clock: FrozenClock
    ) -> None:
        first = await tokens(client)
        clock.advance(minutes=1)
        r = await client.post(f"{API}/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200
        clock.advance(seconds=2)  # inside the grace window: the same child again
        r = await client.post(f"{API}/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200
        r = await client.post(f"{API}/refresh", json={"refresh_token": "not.a.token"})
        assert r.json()["code"] == "invalid_refresh_token"
        clock.advance(seconds=30)  # outside it: theft, the session is revoked
        r = await client.post(f"{API}/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.json()["code"] == "refresh_token_reused"
        r = await client.post(
            f"{API}/token", data={"grant_type": "refresh_token", "refresh_token": "nope"}
        )
        assert REFRESH_RESULT[r.json()["code"]] == "invalid"
        s = scrape(container)
        assert s.value("conductor_refreshes_total", result="rotated") == 1
        assert s.value("conductor_refreshes_total", result="grace") == 1
        assert s.value("conductor_refreshes_total", result="reused") == 1
        assert s.value("conductor_refreshes_total", result="invalid") == 2
        assert first["refresh_token"] not in s.text

    async def test_a_proof_that_does_not_verify_is_an_invalid_refresh(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        phone, at = PhoneKey(), container.clock.now().timestamp()
        proof = phone.proof("POST", f"{API}/login", at)
        response = await client.post(
            f"{API}/login",
            json={"username": "alice", "password": PASSWORD, "device_name": "P"},
            headers={"DPoP": proof},
        )
        bound = response.json()["refresh_token"]
        # Without a proof, and with another key's: refused, nothing spent.
        for headers in ({}, {"DPoP": PhoneKey().proof("POST", f"{API}/refresh", at)}):
            r = await client.post(f"{API}/refresh", json={"refresh_token": bound}, headers=headers)
            assert r.json()["code"] == "invalid_dpop_proof", r.text
        s = scrape(container)
        assert s.value("conductor_refreshes_total", result="invalid") == 2
        assert s.value("conductor_refreshes_total", result="rotated") == 0


class TestHashing:
    async def test_every_hash_is_timed_verifications_included(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        before = scrape(container).value("conductor_password_hash_seconds_count")
        await login(client)  # a verification
        await login(client, "nobody", WRONG)  # the dummy verification
        s = scrape(container)
        assert s.value("conductor_password_hash_seconds_count") == before + 2
        assert s.value("conductor_password_hash_seconds_sum") > 0
        assert s.value("conductor_password_hash_queue") == 0


class TestDatabaseErrors:
    async def test_requests_the_database_failed_are_counted(
        self, tmp_path: Path, clock: FrozenClock
    ) -> None:
        # A PostgreSQL that nobody runs: every request that needs the database gets a 503.
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
        app = create_app(make_settings(tmp_path, url, database_timeout_seconds=1), clock)
        async with app.router.lifespan_context(app), make_client(app) as client:
            container: Container = app.state.container
            assert scrape(container).value("conductor_database_errors_total") == 0
            assert (await client.get("/health/ready")).status_code == 503
            assert (await login(client)).status_code == 503
            assert (await client.get("/health/live")).status_code == 200
            s = scrape(container)
            assert s.value("conductor_database_errors_total") == 2
            ready = s.value("conductor_http_requests_total", route="/health/ready", status="503")
            assert ready == 1
            # A login the database failed is no sign-in outcome.
            assert s.value("conductor_logins_total") == 0

    async def test_a_database_error_that_is_a_bug_is_counted_once(
        self, tmp_path: Path, clock: FrozenClock
    ) -> None:
        """A 500 from the database passes two exception handlers on its way (the route's
        and the app's); it is one request the database failed."""
        origin = "https://app.example"
        settings = make_settings(tmp_path, None, cors_origins=[origin])
        await asyncio.to_thread(migrate.upgrade, settings)
        app = create_app(settings, clock)
        async with app.router.lifespan_context(app):
            container: Container = app.state.container
            await add_user(container)
            database = sqlite3.connect(container.settings.sqlite_path)
            with database:
                database.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON sessions "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            database.close()
            transport = httpx.ASGITransport(
                app=app, client=(CLIENT_IP, 40000), raise_app_exceptions=False
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await login(client, Origin=origin)
            assert response.status_code == 500, response.text
            assert response.json()["code"] == "internal_error"
            # Readable by a browser on an allowed origin, like every other answer.
            assert response.headers["access-control-allow-origin"] == origin
            assert response.headers["x-content-type-options"] == "nosniff"
            s = scrape(container)
            assert s.value("conductor_database_errors_total") == 1
            assert s.value("conductor_http_requests_total", status="500") == 1
