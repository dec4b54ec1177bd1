"""Server nonces (DPOP_REQUIRE_NONCE) and REQUIRE_DPOP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from tests.conftest import Account
from tests.dpop.conftest import dpop_headers, login_body, now
from tests.dpop.keys import API, PhoneKey


@pytest.mark.parametrize("settings_overrides", [{"dpop_require_nonce": True}])
class TestRequiredNonce:
    async def _login(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> dict[str, Any]:
        url = API + "/login"
        first = await client.post(
            url, json=login_body(alice), headers={"DPoP": phone.proof("POST", url, now(container))}
        )
        assert first.status_code == 400
        assert first.json()["code"] == "use_dpop_nonce"
        nonce = first.headers["DPoP-Nonce"]
        proof = phone.proof("POST", url, now(container), nonce=nonce)
        second = await client.post(url, json=login_body(alice), headers={"DPoP": proof})
        assert second.status_code == 200, second.text
        assert second.headers["DPoP-Nonce"]
        body: dict[str, Any] = second.json()
        return body

    async def test_login_asks_for_a_nonce_then_accepts_it(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        await self._login(client, container, alice, phone)

    async def test_resource_without_nonce_is_401_with_challenge(
        self,
        client: httpx.AsyncClient,
        container: Container,
        alice: Account,
        phone: PhoneKey,
        clock: FrozenClock,
    ) -> None:
        pair = await self._login(client, container, alice, phone)
        token = pair["access_token"]
        response = await client.get(
            API + "/me", headers=dpop_headers(container, phone, "GET", API + "/me", token)
        )
        assert response.status_code == 401
        assert response.json()["code"] == "use_dpop_nonce"
        assert response.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
        nonce = response.headers["DPoP-Nonce"]
        ok = await client.get(
            API + "/me",
            headers=dpop_headers(container, phone, "GET", API + "/me", token, nonce=nonce),
        )
        assert ok.status_code == 200, ok.text

        # Still good a minute later; unknown once it is three windows old.
        clock.advance(seconds=60)
        later = dpop_headers(container, phone, "GET", API + "/me", token, nonce=nonce)
        assert (await client.get(API + "/me", headers=later)).status_code == 200
        clock.advance(seconds=150)
        stale = dpop_headers(container, phone, "GET", API + "/me", token, nonce=nonce)
        response = await client.get(API + "/me", headers=stale)
        assert response.status_code == 401
        assert response.json()["code"] == "use_dpop_nonce"

    async def test_a_dpop_token_sent_without_a_proof_gets_a_nonce_to_make_one_with(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        # `Authorization: DPoP` makes it a DPoP request: its answer carries the nonce the
        # client's next proof needs, sparing a round trip.
        token = (await self._login(client, container, alice, phone))["access_token"]
        response = await client.get(API + "/me", headers={"Authorization": f"DPoP {token}"})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_dpop_proof"
        nonce = response.headers["DPoP-Nonce"]
        ok = await client.get(
            API + "/me",
            headers=dpop_headers(container, phone, "GET", API + "/me", token, nonce=nonce),
        )
        assert ok.status_code == 200, ok.text

    async def test_wrong_nonce_at_the_token_endpoint(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        form = {"grant_type": "password", "username": "alice", "password": alice.password}
        proof = phone.proof("POST", API + "/token", now(container), nonce="1.forged")
        response = await client.post(API + "/token", data=form, headers={"DPoP": proof})
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == body["code"] == "use_dpop_nonce"
        assert response.headers["DPoP-Nonce"]


@pytest.mark.parametrize("settings_overrides", [{"require_dpop": True}])
class TestRequireDPoP:
    async def test_sign_in_and_refresh_need_a_proof(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        bare = await client.post(API + "/login", json=login_body(alice))
        assert bare.status_code == 400
        assert bare.json()["code"] == "invalid_dpop_proof"
        form = {"grant_type": "password", "username": "alice", "password": alice.password}
        token = await client.post(API + "/token", data=form)
        assert token.status_code == 400
        assert token.json()["error"] == "invalid_dpop_proof"

        proof = phone.proof("POST", API + "/login", now(container))
        pair = await client.post(API + "/login", json=login_body(alice), headers={"DPoP": proof})
        assert pair.status_code == 200
        refused = await client.post(
            API + "/refresh", json={"refresh_token": pair.json()["refresh_token"]}
        )
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalid_dpop_proof"

    async def test_a_refresh_token_that_does_not_verify_is_refused_for_its_proof(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        # "every refresh without a proof" is refused, whatever its token; the token that
        # does not verify still counts against the address.
        response = await client.post(API + "/refresh", json={"refresh_token": "not.a.token"})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_dpop_proof"
        form = {"grant_type": "refresh_token", "refresh_token": "not.a.token"}
        token = await client.post(API + "/token", data=form)
        assert token.status_code == 400
        assert token.json()["error"] == token.json()["code"] == "invalid_dpop_proof"
        async with container.sessionmaker() as db:
            rows = (await db.execute(select(LoginThrottle.scope, LoginThrottle.failures))).all()
        assert [(scope, failures) for scope, failures in rows] == [("ip", 2)]
