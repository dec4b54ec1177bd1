"""Access tokens under the key set, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import event

from conductor_api.app import create_app
from conductor_api.clock import FrozenClock
from conductor_api.config import ConfigError, Settings
from conductor_api.container import Container
from conductor_api.keys import crypto, service
from tests.conftest import Account, bearer, make_client, make_settings, tokens
from tests.keys.conftest import sessionmaker_for, stored_keys

JWKS = "/.well-known/jwks.json"
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    """The payload, unverified."""
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def kid_of(token: str) -> str:
    """The header's kid."""
    return str(jwt.get_unverified_header(token)["kid"])


@asynccontextmanager
async def instance(settings: Settings, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    """Another server on the same database, with its tables left as they are."""
    application = create_app(settings, clock)
    async with application.router.lifespan_context(application):
        yield application


def keys_of(container: Container) -> Any:
    """The container's key manager (asymmetric modes)."""
    assert container.keys is not None
    return container.keys


async def rotate_elsewhere(settings: Settings, clock: FrozenClock, *, at_once: bool) -> str:
    """`keys rotate` as another process runs it on the same database; the new kid."""
    engine, sessions = sessionmaker_for(settings)
    try:
        async with sessions.begin() as db:
            key = await service.rotate(
                db, crypto.KeyCipher(settings.kek), service.KeyPolicy.of(settings),
                clock.now(), at_once=at_once,
            )  # fmt: skip
            return key.kid
    finally:
        await engine.dispose()


async def revoke_elsewhere(settings: Settings, clock: FrozenClock, kid: str) -> None:
    """`keys revoke KID` as another process runs it."""
    engine, sessions = sessionmaker_for(settings)
    try:
        async with sessions.begin() as db:
            await service.revoke(
                db, crypto.KeyCipher(settings.kek), service.KeyPolicy.of(settings), kid,
                clock.now(),
            )  # fmt: skip
    finally:
        await engine.dispose()


class TestJwks:
    async def test_publishes_the_key_that_signs_and_it_verifies(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        response = await client.get(JWKS)
        assert response.status_code == 200
        cache = response.headers["cache-control"]
        assert cache.startswith("public, max-age=")
        assert 0 <= int(cache.rsplit("=", 1)[1]) <= 300
        keys = response.json()["keys"]
        assert len(keys) == 1
        jwk = keys[0]
        assert jwk["kid"] == kid_of(pair["access_token"])
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
        assert "d" not in jwk  # never the private half
        header = jwt.get_unverified_header(pair["access_token"])
        assert header["alg"] == "EdDSA"
        # What another service does: verify with the published key alone.
        claims = jwt.decode(
            pair["access_token"], jwt.PyJWK(jwk).key, algorithms=["EdDSA"],
            audience="conductor-android", issuer="conductor-api", options={"verify_exp": False},
        )  # fmt: skip
        assert claims["typ"] == "access" and claims["sub"] == str(alice.id)

    async def test_needs_no_token_and_is_in_the_openapi_document(
        self, client: httpx.AsyncClient
    ) -> None:
        assert (await client.get(JWKS, headers=bearer("garbage"))).status_code == 200
        document = (await client.get("/openapi.json")).json()
        assert "/.well-known/jwks.json" in document["paths"]


class TestForgeries:
    """Each is 401 invalid_token on an EdDSA server."""

    async def _genuine(self, client: httpx.AsyncClient) -> str:
        token: str = (await tokens(client))["access_token"]
        assert (await client.get(ME, headers=bearer(token))).status_code == 200
        return token

    async def _refused(self, client: httpx.AsyncClient, token: str) -> None:
        response = await client.get(ME, headers=bearer(token))
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    async def test_hs256_signed_with_jwt_secret_key(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        token = await self._genuine(client)
        forged = jwt.encode(
            claims_of(token), container.settings.access_secret, algorithm="HS256",
            headers={"kid": kid_of(token)},
        )  # fmt: skip
        await self._refused(client, forged)

    async def test_hs256_with_the_public_key_as_hmac_secret(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        token = await self._genuine(client)
        jwk = (await client.get(JWKS)).json()["keys"][0]
        public = jwt.PyJWK(jwk).key
        assert isinstance(public, ed25519.Ed25519PublicKey)
        for secret in (
            public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
            json.dumps(jwk).encode(),
        ):
            header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": jwk["kid"]}).encode())
            body = token.split(".")[1]
            mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
            await self._refused(client, f"{header}.{body}.{b64url(mac)}")

    async def test_key_of_another_install(self, client: httpx.AsyncClient, alice: Account) -> None:
        token = await self._genuine(client)
        foreign = ed25519.Ed25519PrivateKey.generate()
        for kid in (kid_of(token), "20261125_0123456789ab"):
            forged = jwt.encode(claims_of(token), foreign, algorithm="EdDSA", headers={"kid": kid})
            await self._refused(client, forged)

    @pytest.mark.parametrize("kid", [None, "", "-leading-dash", "a/b", "a" * 65, 7])
    async def test_missing_or_malformed_kid(
        self, kid: Any, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        token = await self._genuine(client)
        _header, body, signature = token.split(".")
        fields = {"alg": "EdDSA", "typ": "JWT"} | ({} if kid is None else {"kid": kid})
        await self._refused(client, f"{b64url(json.dumps(fields).encode())}.{body}.{signature}")

    async def test_changed_payload_and_alg_none(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        token = await self._genuine(client)
        header, _, signature = token.split(".")
        other = {**claims_of(token), "sub": str(uuid.uuid4())}
        await self._refused(client, f"{header}.{b64url(json.dumps(other).encode())}.{signature}")
        none = b64url(json.dumps({"alg": "none", "kid": kid_of(token)}).encode())
        await self._refused(client, f"{none}.{token.split('.')[1]}.")


class TestRotation:
    async def test_publish_before_sign_and_old_tokens_keep_working(
        self, client: httpx.AsyncClient, alice: Account, container: Container,
        clock: FrozenClock, settings: Settings,
    ) -> None:  # fmt: skip
        old = (await tokens(client))["access_token"]
        new_kid = await rotate_elsewhere(settings, clock, at_once=False)
        await keys_of(container).refresh()
        published = [k["kid"] for k in (await client.get(JWKS)).json()["keys"]]
        assert sorted(published) == sorted([kid_of(old), new_kid])
        # Still signing with the old key during the publish delay.
        assert kid_of((await tokens(client))["access_token"]) == kid_of(old)
        clock.advance(seconds=settings.key_publish_seconds)
        fresh = (await tokens(client))["access_token"]
        assert kid_of(fresh) == new_kid
        for token in (old, fresh):
            assert (await client.get(ME, headers=bearer(token))).status_code == 200

    async def test_revoked_key_is_refused_and_sessions_survive(
        self, client: httpx.AsyncClient, alice: Account, container: Container,
        clock: FrozenClock, settings: Settings,
    ) -> None:  # fmt: skip
        pair = await tokens(client)
        kid = kid_of(pair["access_token"])
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        await revoke_elsewhere(settings, clock, kid)
        await keys_of(container).refresh()
        # Refused although the token verified (and was remembered) before.
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 401
        assert kid not in [k["kid"] for k in (await client.get(JWKS)).json()["keys"]]
        rows = {r.kid: r for r in await stored_keys(settings)}
        assert rows[kid].state == "revoked" and rows[kid].private_key is None
        refreshed = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        token = refreshed.json()["access_token"]
        assert kid_of(token) != kid
        assert (await client.get(ME, headers=bearer(token))).status_code == 200

    async def test_a_key_made_current_by_another_instance_verifies_at_once(
        self, client: httpx.AsyncClient, alice: Account, container: Container,
        clock: FrozenClock, settings: Settings,
    ) -> None:  # fmt: skip
        slow = settings.model_copy(update={"key_refresh_seconds": 60.0})
        async with instance(slow, clock) as other, make_client(other) as other_client:
            new_kid = await rotate_elsewhere(settings, clock, at_once=True)
            await keys_of(other.state.container).refresh()
            token = (await tokens(other_client))["access_token"]
            assert kid_of(token) == new_kid
        # This instance has not re-read the set: the unknown kid makes it do so.
        assert (await client.get(ME, headers=bearer(token))).status_code == 200


class TestJwksMaxAge:
    @pytest.mark.parametrize(
        ("publish", "refresh", "max_age"), [(300, 30.0, 270), (5, 0.5, 4), (5, 1.2, 3)]
    )
    async def test_max_age_leaves_the_whole_re_read_interval(
        self, app: FastAPI, settings: Settings, clock: FrozenClock,
        publish: int, refresh: float, max_age: int,
    ) -> None:  # fmt: skip
        # A copy of the set that is up to KEY_REFRESH_SECONDS old, cached for max-age, must
        # still be read again before a key published now signs: a fraction counts whole.
        timed = settings.model_copy(
            update={"key_publish_seconds": publish, "key_refresh_seconds": refresh}
        )
        async with instance(timed, clock) as other, make_client(other) as c:
            response = await c.get(JWKS)
        assert response.headers["cache-control"] == f"public, max-age={max_age}"


class TestNoQueryPerRequest:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        """No periodic re-read during the test: only unknown kids cause one."""
        return {"key_refresh_seconds": 60}

    async def test_no_database_query_per_request(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(container.engine.sync_engine, "before_cursor_execute", count)
        try:
            for _ in range(10):
                assert (
                    await client.get(ME, headers=bearer(pair["access_token"]))
                ).status_code == 200
                assert (await client.get(JWKS)).status_code == 200
        finally:
            event.remove(container.engine.sync_engine, "before_cursor_execute", count)
        assert not [s for s in statements if "signing_keys" in s]

    async def test_unknown_kids_reread_the_set_at_most_once_a_second(
        self, client: httpx.AsyncClient, alice: Account, container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        manager = keys_of(container)
        calls: list[int] = []
        real = manager.refresh

        async def counted() -> None:
            calls.append(1)
            await real()

        monkeypatch.setattr(manager, "refresh", counted)
        monkeypatch.setattr(manager, "_last_unknown_read", 0.0)
        token = (await tokens(client))["access_token"]
        foreign = ed25519.Ed25519PrivateKey.generate()
        for n in range(5):
            kid = f"unknown_{n}"
            forged = jwt.encode(claims_of(token), foreign, algorithm="EdDSA", headers={"kid": kid})
            assert (await client.get(ME, headers=bearer(forged))).status_code == 401
        assert len(calls) == 1
        # Concurrent requests with unknown kids share one read too.
        monkeypatch.setattr(manager, "_last_unknown_read", 0.0)
        many = [
            jwt.encode(claims_of(token), foreign, algorithm="EdDSA", headers={"kid": f"other_{n}"})
            for n in range(5)
        ]
        answers = await asyncio.gather(*(client.get(ME, headers=bearer(f)) for f in many))
        assert [a.status_code for a in answers] == [401] * 5
        assert len(calls) == 2


class TestAlgorithmChange:
    async def test_old_access_tokens_refused_refresh_still_works(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, settings: Settings
    ) -> None:
        pair = await tokens(client)
        es256 = settings.model_copy(update={"jwt_algorithm": "ES256"})
        async with instance(es256, clock) as other, make_client(other) as other_client:
            me = await other_client.get(ME, headers=bearer(pair["access_token"]))
            assert me.status_code == 401
            refreshed = await other_client.post(
                REFRESH, json={"refresh_token": pair["refresh_token"]}
            )
            assert refreshed.status_code == 200, refreshed.text
            token = refreshed.json()["access_token"]
            assert jwt.get_unverified_header(token)["alg"] == "ES256"
            assert (await other_client.get(ME, headers=bearer(token))).status_code == 200
            jwks = (await other_client.get(JWKS)).json()["keys"]
            assert {k["kid"]: k["kty"] for k in jwks}[kid_of(token)] == "EC"
        states = {(r.algorithm, r.state) for r in await stored_keys(settings)}
        assert ("ES256", "current") in states and ("EdDSA", "previous") in states


class TestKeyEncryptionKey:
    async def test_a_wrong_key_stops_the_start_and_generates_nothing(
        self, app: FastAPI, clock: FrozenClock, settings: Settings
    ) -> None:
        before = {r.kid for r in await stored_keys(settings)}
        wrong = settings.model_copy(
            update={"key_encryption_key": SecretStr(b64url(b"w" * 32)), "key_rotation_days": 0}
        )
        with pytest.raises(ConfigError, match=r"^KEY_ENCRYPTION_KEY: ") as info:
            async with instance(wrong, clock):
                pass
        assert "\n" not in str(info.value)
        assert {r.kid for r in await stored_keys(settings)} == before


class TestHs256Mode:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        """The shared-secret mode."""
        return {"jwt_algorithm": "HS256"}

    async def test_jwks_is_empty_and_tokens_have_no_kid(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        response = await client.get(JWKS)
        assert response.status_code == 200
        assert response.json() == {"keys": []}
        assert response.headers["cache-control"].startswith("public, max-age=")
        token = (await tokens(client))["access_token"]
        assert "kid" not in jwt.get_unverified_header(token)
        assert jwt.get_unverified_header(token)["alg"] == "HS256"
        assert container.keys is None


class TestDatabaseDownAtStart:
    async def test_a_worker_still_starts_and_answers(self, tmp_path: Path) -> None:
        # uvicorn restarts a worker whenever it likes, also during an outage: the worker
        # must come up and answer (503 where the database is needed), not exit.
        down = make_settings(
            tmp_path, "postgresql://postgres@127.0.0.1:9/none", database_timeout_seconds=0.5
        )
        application = create_app(down, FrozenClock())
        async with application.router.lifespan_context(application), make_client(application) as c:
            assert (await c.get("/health/live")).status_code == 200
            # Not an empty set that verifiers would cache for max-age and refuse every
            # token with: the keys exist, this worker just cannot read them yet.
            jwks = await c.get(JWKS)
            assert jwks.status_code == 503, jwks.text
            assert jwks.json()["code"] == "service_unavailable"
            assert jwks.headers["Retry-After"]
            assert "max-age" not in jwks.headers.get("Cache-Control", "")
            login = await c.post(
                "/api/v1/auth/login",
                json={"username": "alice", "password": "x" * 20, "device_name": "P"},
            )
            assert login.status_code == 503
            # A token it cannot check yet is "try again", not "invalid", also when asked
            # again within the re-read rate limit.
            foreign = ed25519.Ed25519PrivateKey.generate()
            claims = {"sub": str(uuid.uuid4()), "sid": str(uuid.uuid4()), "typ": "access"}
            token = jwt.encode(claims, foreign, algorithm="EdDSA", headers={"kid": "k_1"})
            for _ in range(2):
                me = await c.get(ME, headers=bearer(token))
                assert me.status_code == 503, me.text
                assert me.json()["code"] == "service_unavailable"
