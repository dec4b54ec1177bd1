"""The whole mobile flow with a bound session: login, resources with `DPoP`, refresh,
logout; and the refusals around it, with their status, code, challenge and database state."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import jwt
from fastapi import FastAPI
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from tests.conftest import CLIENT_IP, Account, make_client
from tests.dpop.conftest import (
    bound_login,
    claims_of,
    dpop_headers,
    login_body,
    now,
    session_jkt,
)
from tests.dpop.keys import API, BASE, PhoneKey

CHALLENGE = 'DPoP algs="ES256 EdDSA"'


def assert_dpop_401(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == code
    assert response.headers["WWW-Authenticate"] == f'{CHALLENGE}, error="{code}"'


SYMMETRIC = {"kty": "oct", "k": base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(key: PhoneKey, path: str, t: float) -> str:
    """`alg: none` with the real key in the header and no signature."""
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}
    claims = {"jti": "n1", "htm": "POST", "htu": BASE + path, "iat": int(t)}
    return f"{_b64(header)}.{_b64(claims)}.{_b64({'x': 1})}"


def hmac_proof(path: str, t: float) -> str:
    """HS256 under a key the client chose, given in the header."""
    claims = {"jti": "h1", "htm": "POST", "htu": BASE + path, "iat": int(t)}
    return jwt.encode(
        claims, b"k" * 32, algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": SYMMETRIC}
    )


class TestBoundSession:
    async def test_login_me_refresh_logout(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        assert claims_of(pair["access_token"])["cnf"] == {"jkt": phone.jkt}
        assert await session_jkt(container, pair["session_id"]) == phone.jkt

        token = pair["access_token"]
        me = await client.get(
            API + "/me", headers=dpop_headers(container, phone, "GET", API + "/me", token)
        )
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "alice"
        assert me.headers["DPoP-Nonce"]

        sessions = await client.get(
            API + "/sessions",
            headers=dpop_headers(container, phone, "GET", API + "/sessions", token),
        )
        assert sessions.status_code == 200
        assert [s["bound"] for s in sessions.json()] == [True]

        proof = phone.proof("POST", API + "/refresh", now(container))
        refreshed = await client.post(
            API + "/refresh", json={"refresh_token": pair["refresh_token"]}, headers={"DPoP": proof}
        )
        assert refreshed.status_code == 200, refreshed.text
        new = refreshed.json()
        assert new["token_type"] == "DPoP"
        assert claims_of(new["access_token"])["cnf"] == {"jkt": phone.jkt}
        assert claims_of(new["refresh_token"])["cnf"] == {"jkt": phone.jkt}

        out = await client.post(
            API + "/logout",
            headers=dpop_headers(container, phone, "POST", API + "/logout", new["access_token"]),
        )
        assert out.status_code == 204
        # Its session ended, the token is refused in the scheme it was sent with (RFC 9449
        # section 7.1): a DPoP challenge, not a Bearer one.
        after = await client.get(
            API + "/me",
            headers=dpop_headers(container, phone, "GET", API + "/me", new["access_token"]),
        )
        assert_dpop_401(after, "invalid_token")

    async def test_eddsa_key(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        key = PhoneKey("EdDSA")
        pair = await bound_login(client, container, alice, key)
        headers = dpop_headers(container, key, "GET", API + "/me", pair["access_token"])
        assert (await client.get(API + "/me", headers=headers)).status_code == 200

    async def test_token_endpoint_binds_both_grants(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        form = {"grant_type": "password", "username": "alice", "password": alice.password}
        proof = phone.proof("POST", API + "/token", now(container))
        response = await client.post(API + "/token", data=form, headers={"DPoP": proof})
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "DPoP"
        refresh = {"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"]}
        proof = phone.proof("POST", API + "/token", now(container))
        again = await client.post(API + "/token", data=refresh, headers={"DPoP": proof})
        assert again.status_code == 200, again.text
        assert again.json()["token_type"] == "DPoP"

        # Without a proof: RFC 9449's error, with the contract's code beside it.
        refused = await client.post(
            API + "/token", data={**refresh, "refresh_token": again.json()["refresh_token"]}
        )
        assert refused.status_code == 400
        assert refused.json()["error"] == refused.json()["code"] == "invalid_dpop_proof"


class TestStolenRefreshToken:
    async def test_without_the_key_it_is_useless_and_visible(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        body = {"refresh_token": pair["refresh_token"]}

        bare = await client.post(API + "/refresh", json=body)
        assert bare.status_code == 400
        assert bare.json()["code"] == "invalid_dpop_proof"

        thief = PhoneKey()
        other = thief.proof("POST", API + "/refresh", now(container))
        stolen = await client.post(API + "/refresh", json=body, headers={"DPoP": other})
        assert stolen.status_code == 400
        assert stolen.json()["code"] == "invalid_dpop_proof"

        async with container.sessionmaker() as db:
            types = (await db.scalars(select(SecurityEvent.type))).all()
            addresses = (await db.scalars(select(SecurityEvent.ip_address))).all()
        # Recorded once for the two: once a minute per session and address.
        assert types.count("dpop_proof_invalid") == 1
        assert "203.0.113.7" in addresses
        events = await client.get(
            API + "/events",
            headers=dpop_headers(container, phone, "GET", API + "/events", pair["access_token"]),
        )
        assert "dpop_proof_invalid" in [e["type"] for e in events.json()]

        # Nothing was spent: the phone's refresh token still works, with its key.
        assert await session_jkt(container, pair["session_id"]) == phone.jkt
        proof = phone.proof("POST", API + "/refresh", now(container))
        ok = await client.post(API + "/refresh", json=body, headers={"DPoP": proof})
        assert ok.status_code == 200, ok.text


class TestResourceRefusals:
    async def test_bound_token_as_bearer(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        response = await client.get(
            API + "/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
        )
        assert_dpop_401(response, "invalid_token")
        # Perhaps a copied token: visible to the user, like every other refusal of a bound one.
        async with container.sessionmaker() as db:
            events = (await db.scalars(select(SecurityEvent))).all()
        assert [(e.type, e.ip_address) for e in events if e.type != "login_succeeded"] == [
            ("dpop_proof_invalid", CLIENT_IP)
        ]

    async def test_unbound_token_as_dpop(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        response = await client.post(API + "/login", json=login_body(alice))
        token = response.json()["access_token"]
        assert response.json()["token_type"] == "bearer"
        refused = await client.get(
            API + "/me", headers=dpop_headers(container, phone, "GET", API + "/me", token)
        )
        assert_dpop_401(refused, "invalid_token")
        # Bearer stays exactly as it was for an unbound token.
        ok = await client.get(API + "/me", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200

    async def test_the_dpop_scheme_without_a_token_gets_the_dpop_challenge(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        token = pair["access_token"]
        proof = phone.proof("GET", API + "/me", now(container), token=token)
        for authorization in ("DPoP", "dpop ", f"DPoP\t{token}"):
            refused = await client.get(
                API + "/me", headers={"Authorization": authorization, "DPoP": proof}
            )
            assert_dpop_401(refused, "invalid_token")
        # Another scheme that merely starts with the letters is no DPoP credential at all.
        other = await client.get(API + "/me", headers={"Authorization": f"DPoPx {token}"})
        assert other.status_code == 401
        assert other.headers["WWW-Authenticate"] == "Bearer"

    async def test_proof_by_another_key(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        headers = dpop_headers(container, PhoneKey(), "GET", API + "/me", pair["access_token"])
        assert_dpop_401(await client.get(API + "/me", headers=headers), "invalid_token")

    async def test_faulty_proofs(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        token = pair["access_token"]
        t = now(container)
        auth = {"Authorization": f"DPoP {token}"}
        cases = {
            "no proof": {},
            "missing ath": {"DPoP": phone.proof("GET", API + "/me", t)},
            "wrong ath": {"DPoP": phone.proof("GET", API + "/me", t, token="x.y.z")},
            "wrong htm": {"DPoP": phone.proof("POST", API + "/me", t, token=token)},
            "wrong htu": {"DPoP": phone.proof("GET", API + "/sessions", t, token=token)},
            "stale iat": {"DPoP": phone.proof("GET", API + "/me", t - 120, token=token)},
            "future iat": {"DPoP": phone.proof("GET", API + "/me", t + 120, token=token)},
            "ath lone surrogate": {
                "DPoP": phone.proof("GET", API + "/me", t, claims={"ath": "\ud800"})
            },
            "wrong typ": {
                "DPoP": phone.proof("GET", API + "/me", t, token=token, header={"typ": "JWT"})
            },
        }
        for name, extra in cases.items():
            response = await client.get(API + "/me", headers={**auth, **extra})
            assert response.status_code == 401, name
            assert response.json()["code"] == "invalid_dpop_proof", name
            if name == "no proof":
                assert "proof is required" in response.json()["detail"]
            assert (
                response.headers["WWW-Authenticate"] == f'{CHALLENGE}, error="invalid_dpop_proof"'
            )
        # The attempts with the bound token but without its key's valid proof are visible:
        # once a minute per session and address.
        async with container.sessionmaker() as db:
            types = (await db.scalars(select(SecurityEvent.type))).all()
        assert types.count("dpop_proof_invalid") == 1

    async def test_a_copy_used_in_a_loop_is_recorded_once_a_minute_per_address(
        self,
        app: FastAPI,
        container: Container,
        alice: Account,
        phone: PhoneKey,
        clock: FrozenClock,
    ) -> None:
        async with make_client(app) as client:
            pair = await bound_login(client, container, alice, phone)
        copied = {"Authorization": f"Bearer {pair['access_token']}"}

        async def refusals(ip: str, times: int) -> None:
            async with make_client(app, ip) as client:
                for _ in range(times):
                    assert (await client.get(API + "/me", headers=copied)).status_code == 401

        async def recorded() -> list[str]:
            async with container.sessionmaker() as db:
                rows = await db.scalars(
                    select(SecurityEvent.ip_address).where(
                        SecurityEvent.type == "dpop_proof_invalid"
                    )
                )
                return sorted(ip or "" for ip in rows.all())

        await refusals("198.51.100.1", 20)
        await refusals("198.51.100.2", 3)
        assert await recorded() == ["198.51.100.1", "198.51.100.2"]
        clock.advance(seconds=61)
        await refusals("198.51.100.1", 5)
        assert await recorded() == ["198.51.100.1", "198.51.100.1", "198.51.100.2"]

        # An IPv6 client is its /64, and however many clients, ten a minute per session.
        clock.advance(seconds=61)
        for host in ("2001:db8:7:7::1", "2001:db8:7:7::2", "2001:db8:7:7:ffff::3"):
            await refusals(host, 2)
        assert (await recorded()).count("2001:db8:7:7::1") == 1
        assert len(await recorded()) == 4
        for n in range(20):
            await refusals(f"2001:db8:8:{n:x}::1", 1)
        assert len(await recorded()) == 3 + 10

    async def test_replayed_proof(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        headers = dpop_headers(container, phone, "GET", API + "/me", pair["access_token"])
        assert (await client.get(API + "/me", headers=headers)).status_code == 200
        assert_dpop_401(await client.get(API + "/me", headers=headers), "invalid_dpop_proof")

    async def test_two_dpop_headers(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = await bound_login(client, container, alice, phone)
        token = pair["access_token"]
        proofs = [phone.proof("GET", API + "/me", now(container), token=token) for _ in range(2)]
        headers = [("Authorization", f"DPoP {token}"), ("DPoP", proofs[0]), ("DPoP", proofs[1])]
        assert_dpop_401(await client.get(API + "/me", headers=headers), "invalid_dpop_proof")


class TestSignInRefusals:
    async def test_faulty_proofs_at_login_start_nothing(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        t = now(container)
        url = API + "/login"
        cases = {
            "not a jwt": "garbage",
            "wrong typ": phone.proof("POST", url, t, header={"typ": "JWT"}),
            "private jwk": phone.proof("POST", url, t, header={"jwk": {**phone.jwk, "d": "AAAA"}}),
            "signature by another key": phone.proof("POST", url, t, header={"jwk": PhoneKey().jwk}),
            "wrong htm": phone.proof("GET", url, t),
            "wrong htu": phone.proof("POST", API + "/token", t),
            "stale iat": phone.proof("POST", url, t - 61),
            "too large": phone.proof("POST", url, t, claims={"pad": "x" * 5000}),
            "future iat": phone.proof("POST", url, t + 61),
            "missing jti": phone.proof("POST", url, t, drop=("jti",)),
            "iat NaN": phone.proof("POST", url, t, claims={"iat": float("nan")}),
            "iat too large": phone.proof("POST", url, t, claims={"iat": 10**400}),
            "jti lone surrogate": phone.proof("POST", url, t, jti="\ud800"),
            "alg none": unsigned(phone, url, t),
            "HS256": hmac_proof(url, t),
            "symmetric jwk": phone.proof("POST", url, t, header={"jwk": SYMMETRIC}),
        }
        for name, proof in cases.items():
            response = await client.post(url, json=login_body(alice), headers={"DPoP": proof})
            assert response.status_code == 400, name
            assert response.json()["code"] == "invalid_dpop_proof", name
        async with container.sessionmaker() as db:
            types = (await db.scalars(select(SecurityEvent.type))).all()
        assert "login_succeeded" not in types

    async def test_a_faulty_proof_counts_against_the_address_only(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        proof = phone.proof("POST", API + "/login", now(container) - 3600)
        response = await client.post(
            API + "/login", json=login_body(alice), headers={"DPoP": proof}
        )
        assert response.status_code == 400
        async with container.sessionmaker() as db:
            rows = (await db.execute(select(LoginThrottle.scope, LoginThrottle.failures))).all()
        assert [(scope, failures) for scope, failures in rows] == [("ip", 1)]

    async def test_replayed_login_proof(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        proof = phone.proof("POST", API + "/login", now(container))
        first = await client.post(API + "/login", json=login_body(alice), headers={"DPoP": proof})
        assert first.status_code == 200
        again = await client.post(API + "/login", json=login_body(alice), headers={"DPoP": proof})
        assert again.status_code == 400
        assert again.json()["code"] == "invalid_dpop_proof"

    async def test_unbound_session_stays_unbound(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        pair = (await client.post(API + "/login", json=login_body(alice))).json()
        proof = phone.proof("POST", API + "/refresh", now(container))
        response = await client.post(
            API + "/refresh", json={"refresh_token": pair["refresh_token"]}, headers={"DPoP": proof}
        )
        assert response.status_code == 200
        assert response.json()["token_type"] == "bearer"
        assert "cnf" not in claims_of(response.json()["access_token"])
        assert await session_jkt(container, pair["session_id"]) is None
