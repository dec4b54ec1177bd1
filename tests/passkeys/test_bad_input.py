"""Every bad passkey response, each changing one field of an otherwise valid one: a 4xx
with the contract's code, nothing half-stored, and the failure counted against the
address."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.errors import AccountDisabled
from conductor_api.events.models import SecurityEvent
from conductor_api.passkeys.models import WebAuthnChallenge
from conductor_api.users import service as users_service
from conductor_api.values import ClientInfo
from tests.conftest import Account, add_user, bearer, tokens
from tests.mfa.helpers import event_types
from tests.passkeys.authenticator import AT, BE, BS, UP, UV, Authenticator, b64url
from tests.passkeys.helpers import (
    ON,
    PASSKEYS,
    address_failures,
    login_options,
    passkey_login,
    passkeys_of,
    register,
    register_options,
    session_count,
    with_passkey,
)

JSON = {"Content-Type": "application/json"}
INVALID = {"detail": "The passkey could not be verified", "code": "invalid_passkey"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Passkeys on."""
    return dict(ON)


def _other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# name -> the one field an otherwise valid assertion gets wrong
ASSERTION_TWEAKS: dict[str, Callable[[], dict[str, Any]]] = {
    "credential for another challenge": lambda: {"challenge": b64url(os.urandom(32))},
    "wrong origin": lambda: {"origin": "https://evil.example"},
    "registration ceremony type": lambda: {"type": "webauthn.create"},
    "wrong RP ID hash": lambda: {"rp_id": "evil.example"},
    "user verification missing": lambda: {"flags": UP | BE | BS},
    "user presence missing": lambda: {"flags": UV | BE | BS},
    "bad signature": lambda: {"signer": _other_key()},
    "signature not DER": lambda: {"signature": b"\x30\x02\x00\x00"},
    "unknown credential id": lambda: {"credential_id": os.urandom(32)},
    "user handle of someone else": lambda: {"user_handle": uuid.uuid4().bytes},
    "user handle missing": lambda: {"user_handle": None},
    "in a frame of another origin": lambda: {
        "cross_origin": True,
        "top_origin": "https://evil.example",
    },
    "malformed clientDataJSON": lambda: {"client_data": b"{not json"},
    "clientDataJSON not an object": lambda: {"client_data": b"[1, 2]"},
    "malformed authenticatorData": lambda: {"auth_data": b"\x00" * 10},
    "oversized signature": lambda: {"signature": os.urandom(20_000)},
    "oversized credential id": lambda: {"credential_id": os.urandom(1500)},
    # WebAuthn L3 7.2: backup eligibility is fixed when a credential is made.
    "backup eligibility lost": lambda: {"flags": UP | UV},
}


async def _state(container: Container) -> tuple[int, int, list[tuple[int, Any]]]:
    """Sessions, the address's failures, and each passkey's counter and last use."""
    keys = [(p.sign_count, p.last_used_at) for p in await passkeys_of(container)]
    return await session_count(container), await address_failures(container), keys


class TestSignIn:
    @pytest.fixture
    async def phone(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> Authenticator:
        """Alice's registered passkey, used once (its counter is 1)."""
        _pair, phone = await with_passkey(client)
        assert (await passkey_login(client, phone)).status_code == 200
        return phone

    async def _refused(
        self, container: Container, response: httpx.Response, before: tuple[int, int, Any]
    ) -> None:
        assert response.status_code == 401, response.text
        assert response.json() == INVALID
        sessions, failures, keys = await _state(container)
        assert sessions == before[0], "no session started"
        assert failures == before[1] + 1, "counted against the address"
        assert keys == before[2], "the passkey's counter and last use unchanged"

    @pytest.mark.parametrize("case", list(ASSERTION_TWEAKS))
    async def test_one_wrong_field(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator, case: str
    ) -> None:
        before = await _state(container)
        response = await passkey_login(client, phone, **ASSERTION_TWEAKS[case]())
        await self._refused(container, response, before)
        assert (await event_types(container))[-1] == "login_failed"

    async def test_a_spent_challenge(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        started = await login_options(client)
        body = {"challenge_id": started["challenge_id"], "device_name": "Pixel 8"}
        first = await client.post(
            f"{PASSKEYS}/login", json={**body, "credential": phone.sign_in(started["options"])}
        )
        assert first.status_code == 200
        before = await _state(container)
        again = await client.post(
            f"{PASSKEYS}/login", json={**body, "credential": phone.sign_in(started["options"])}
        )
        await self._refused(container, again, before)

    async def test_a_failed_answer_spends_the_challenge(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        started = await login_options(client)
        body = {"challenge_id": started["challenge_id"], "device_name": "Pixel 8"}
        wrong = phone.sign_in(started["options"], signer=_other_key())
        assert (
            await client.post(f"{PASSKEYS}/login", json={**body, "credential": wrong})
        ).status_code == 401
        before = await _state(container)
        right = phone.sign_in(started["options"])
        again = await client.post(f"{PASSKEYS}/login", json={**body, "credential": right})
        await self._refused(container, again, before)

    async def test_an_expired_challenge(
        self,
        client: httpx.AsyncClient,
        container: Container,
        phone: Authenticator,
        clock: FrozenClock,
    ) -> None:
        started = await login_options(client)
        clock.advance(seconds=301)
        before = await _state(container)
        response = await client.post(
            f"{PASSKEYS}/login",
            json={"challenge_id": started["challenge_id"], "device_name": "Pixel 8",
                  "credential": phone.sign_in(started["options"])},
        )  # fmt: skip
        await self._refused(container, response, before)

    async def test_a_registration_challenge_used_for_sign_in(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        pair = await tokens(client)
        started = await register_options(client, pair["access_token"])
        before = await _state(container)
        response = await client.post(
            f"{PASSKEYS}/login",
            json={"challenge_id": started["challenge_id"], "device_name": "Pixel 8",
                  "credential": phone.sign_in(started["options"])},
        )  # fmt: skip
        await self._refused(container, response, before)
        async with container.sessionmaker() as db:
            row = await db.get(WebAuthnChallenge, uuid.UUID(started["challenge_id"]))
        assert row is not None and row.spent_at is None, "still good for its registration"

    @pytest.mark.parametrize(
        "body",
        [
            {"challenge_id": "not-a-uuid"},
            {"credential": {"id": "x"}},
            {"credential": {"id": 1, "rawId": [], "response": "x", "type": "public-key"}},
        ],
        ids=["challenge id not a uuid", "credential without fields", "fields of wrong types"],
    )
    async def test_malformed_bodies(
        self,
        client: httpx.AsyncClient,
        container: Container,
        phone: Authenticator,
        body: dict[str, Any],
    ) -> None:
        started = await login_options(client)
        valid = {"challenge_id": started["challenge_id"], "device_name": "Pixel 8",
                 "credential": phone.sign_in(started["options"])}  # fmt: skip
        before = await _state(container)
        response = await client.post(f"{PASSKEYS}/login", json={**valid, **body})
        await self._refused(container, response, before)

    async def test_the_credential_of_a_deleted_passkey(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        pair = await tokens(client)
        listed = await client.get(PASSKEYS, headers=bearer(pair["access_token"]))
        deleted = await client.delete(
            f"{PASSKEYS}/{listed.json()[0]['id']}", headers=bearer(pair["access_token"])
        )
        assert deleted.status_code == 204
        before = await _state(container)
        await self._refused(container, await passkey_login(client, phone), before)

    async def test_backup_eligibility_gained(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # A device-bound passkey (BE clear when made) that later says it may be backed up.
        pair = await tokens(client)
        bound = Authenticator()
        response = await register(client, pair["access_token"], bound, flags=UP | UV | AT)
        assert response.status_code == 201, response.text
        assert (await passkey_login(client, bound, flags=UP | UV)).status_code == 200
        before = await _state(container)
        response = await passkey_login(client, bound, flags=UP | UV | BE)
        await self._refused(container, response, before)

    @pytest.mark.parametrize("counter", [1, 0], ids=["the same", "back to zero"])
    async def test_a_counter_that_does_not_grow_is_a_suspected_clone(
        self,
        client: httpx.AsyncClient,
        container: Container,
        phone: Authenticator,
        alice: Account,
        counter: int,
    ) -> None:
        before = await _state(container)
        response = await passkey_login(client, phone, counter=counter)
        await self._refused(container, response, before)
        async with container.sessionmaker() as db:
            clone = await db.scalar(
                select(SecurityEvent).where(SecurityEvent.type == "passkey_clone_suspected")
            )
        assert clone is not None and clone.user_id == alice.id
        # The passkey stays, for its owner to judge; a later, higher counter signs in.
        assert len(await passkeys_of(container)) == 1
        assert (await passkey_login(client, phone, counter=5)).status_code == 200

    async def test_copies_used_at_once_are_each_a_suspected_clone(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        # Sent together, several pass the counter check before any is stored: the last
        # transaction refuses all but one, and each of those is a failure like the others.
        started = [await login_options(client) for _ in range(6)]
        counter = phone.counter + 1
        bodies = [
            {"challenge_id": s["challenge_id"], "device_name": "Pixel 8",
             "credential": phone.sign_in(s["options"], counter=counter)}
            for s in started
        ]  # fmt: skip
        before = await _state(container)
        types_before = await event_types(container)
        responses = await asyncio.gather(
            *(client.post(f"{PASSKEYS}/login", json=body) for body in bodies)
        )
        assert sorted(r.status_code for r in responses) == [200] + [401] * 5
        assert all(r.json() == INVALID for r in responses if r.status_code == 401)
        new = (await event_types(container))[len(types_before) :]
        assert new.count("passkey_clone_suspected") == 5
        assert new.count("login_failed") == 5
        assert new.count("login_succeeded") == 1
        assert await session_count(container) == before[0] + 1
        assert await address_failures(container) == before[1] + 5
        assert [count for count, _ in (await _state(container))[2]] == [counter]

    @pytest.mark.parametrize("settings_overrides", [{**ON, "max_failed_logins_per_ip": 3}])
    async def test_an_address_over_its_limit_is_refused_even_with_a_good_passkey(
        self, client: httpx.AsyncClient, container: Container, phone: Authenticator
    ) -> None:
        for _ in range(3):
            wrong = await passkey_login(client, phone, signer=_other_key())
            assert wrong.status_code == 401
        refused = await passkey_login(client, phone)
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_attempts"
        assert "retry-after" in refused.headers


def _cose(key: dict[int, Any]) -> dict[str, Any]:
    return {"public_key": cbor2.dumps(key)}


def _p256_xy() -> dict[int, bytes]:
    numbers = _other_key().public_key().public_numbers()
    return {-2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}


def _rsa_n(bits: int) -> bytes:
    n = rsa.generate_private_key(65537, bits).public_key().public_numbers().n
    return n.to_bytes(bits // 8, "big")


# name -> the one field an otherwise valid registration gets wrong
REGISTRATION_TWEAKS: dict[str, Callable[[], dict[str, Any]]] = {
    "credential for another challenge": lambda: {"challenge": b64url(os.urandom(32))},
    "wrong origin": lambda: {"origin": "https://evil.example"},
    "sign-in ceremony type": lambda: {"type": "webauthn.get"},
    "wrong RP ID hash": lambda: {"rp_id": "evil.example"},
    "user verification missing": lambda: {"flags": UP | BE | BS | 0x40},
    "user presence missing": lambda: {"flags": UV | BE | BS | 0x40},
    "in a frame of another origin": lambda: {
        "cross_origin": True,
        "top_origin": "https://evil.example",
    },
    "malformed clientDataJSON": lambda: {"client_data": b"\xff\xfe"},
    "malformed attestationObject": lambda: {"attestation_object": b"\xa3junk"},
    "malformed authenticatorData": lambda: {"auth_data": b"\x00" * 40},
    "packed attestation without a statement": lambda: {"fmt": "packed"},
    "none attestation with a statement": lambda: {"att_stmt": {"sig": b"x"}},
    "public key not COSE": lambda: {"public_key": b"\x01\x02"},
    # Keys that no signature could ever verify with, of an offered algorithm all the same.
    "public key off its curve": lambda: _cose({1: 2, 3: -7, -1: 1, -2: b"\x01" * 32, -3: b"\x01"}),
    "EC2 key that says EdDSA": lambda: _cose({1: 2, 3: -8, -1: 1, **_p256_xy()}),
    "OKP key on another curve": lambda: _cose({1: 1, 3: -8, -1: 99, -2: b"\x00" * 32}),
    "EC2 coordinates not bytes": lambda: _cose({1: 2, 3: -7, -1: 1, -2: 5, -3: "y"}),
    "RSA key of 24 bits": lambda: _cose({1: 3, 3: -257, -1: b"\xff\xff\xfb", -2: b"\x03"}),
    "RSA key of 1024 bits": lambda: _cose({1: 3, 3: -257, -1: _rsa_n(1024), -2: b"\x01\x00\x01"}),
    "oversized credential id": lambda: {"credential_id": os.urandom(1500)},
    "rawId not the attested credential id": lambda: {"raw_id": os.urandom(32)},
}


class TestNesting:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**ON, "max_failed_logins_per_ip": 10_000, "max_passkey_challenges_per_ip": 10_000}

    async def test_a_credential_nested_as_deep_as_the_parser_goes(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # Nested past what the encoder that measures a credential can recurse from where it
        # runs, but not past what the request's parser took: each depth is a 4xx, never 500.
        pair = await tokens(client)
        failures = await address_failures(container)
        answers: list[int] = []
        for depth in range(700, 1000, 3):
            nested = "[" * depth + "]" * depth
            credential = f'{{"id":"AA","x":{nested}}}'
            started = await login_options(client)
            cid = started["challenge_id"]
            body = f'{{"challenge_id":"{cid}","device_name":"x","credential":{credential}}}'
            login = await client.post(f"{PASSKEYS}/login", content=body, headers=JSON)
            cid = (await register_options(client, pair["access_token"]))["challenge_id"]
            body = f'{{"challenge_id":"{cid}","name":"x","credential":{credential}}}'
            added = await client.post(
                f"{PASSKEYS}/register",
                content=body,
                headers={**JSON, **bearer(pair["access_token"])},
            )
            for response in (login, added):
                assert response.status_code in (400, 401), (depth, response.text)
                answers.append(response.status_code)
        assert set(answers) == {400, 401}
        # Each 401 counted against the address, as every failed passkey answer is.
        assert await address_failures(container) == failures + answers.count(401)
        assert await passkeys_of(container) == []


class TestRegistration:
    async def _refused(
        self, container: Container, response: httpx.Response, failures: int, code: int = 401
    ) -> None:
        assert response.status_code == code, response.text
        if code == 401:
            assert response.json() == INVALID
            assert await address_failures(container) == failures + 1
        assert await passkeys_of(container) == []
        assert "passkey_added" not in await event_types(container)

    @pytest.mark.parametrize("case", list(REGISTRATION_TWEAKS))
    async def test_one_wrong_field(
        self, client: httpx.AsyncClient, alice: Account, container: Container, case: str
    ) -> None:
        pair = await tokens(client)
        failures = await address_failures(container)
        response = await register(
            client, pair["access_token"], Authenticator(), **REGISTRATION_TWEAKS[case]()
        )
        await self._refused(container, response, failures)

    async def test_a_spent_expired_or_sign_in_challenge(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        pair = await tokens(client)
        auth = bearer(pair["access_token"])
        phone = Authenticator()
        spent = await register_options(client, pair["access_token"])
        wrong = phone.register(spent["options"], origin="https://evil.example")
        body = {"challenge_id": spent["challenge_id"], "name": "x"}
        first = await client.post(
            f"{PASSKEYS}/register", json={**body, "credential": wrong}, headers=auth
        )
        assert first.status_code == 401
        sign_in = await login_options(client)
        expired = await register_options(client, pair["access_token"])
        clock.advance(seconds=301)
        pair = await tokens(client)  # a fresh token at the new time
        auth = bearer(pair["access_token"])
        options = {**expired["options"], "user": {"id": b64url(alice.id.bytes)}}
        for started in (
            spent,
            {"challenge_id": sign_in["challenge_id"], "options": {**sign_in["options"], **options}},
            expired,
        ):
            failures = await address_failures(container)
            credential = phone.register(started["options"])
            response = await client.post(
                f"{PASSKEYS}/register",
                json={"challenge_id": started["challenge_id"], "credential": credential},
                headers=auth,
            )
            await self._refused(container, response, failures)

    async def test_someone_elses_challenge(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await add_user(container, "bob")
        bobs = await register_options(
            client, (await tokens(client, username="bob"))["access_token"]
        )
        alices = await tokens(client)
        failures = await address_failures(container)
        response = await client.post(
            f"{PASSKEYS}/register",
            json={"challenge_id": bobs["challenge_id"],
                  "credential": Authenticator().register(bobs["options"])},
            headers=bearer(alices["access_token"]),
        )  # fmt: skip
        await self._refused(container, response, failures)

    async def test_the_same_credential_twice(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await add_user(container, "bob")
        pair, phone = await with_passkey(client)
        bobs = await tokens(client, username="bob")
        for token in (pair["access_token"], bobs["access_token"]):
            again = await register(client, token, phone)
            assert again.status_code == 409, again.text
            assert again.json()["code"] == "passkey_exists"
        assert len(await passkeys_of(container)) == 1
        assert (await event_types(container)).count("passkey_added") == 1

    async def test_a_disabled_user(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        started = await register_options(client, pair["access_token"])
        credential = Authenticator().register(started["options"])
        async with container.sessionmaker.begin() as db:
            user = await users_service.require_user(db, "alice")
            await users_service.set_active(db, user, False, container.clock.now())
        # Over HTTP the token died with the account.
        response = await client.post(
            f"{PASSKEYS}/register",
            json={"challenge_id": started["challenge_id"], "credential": credential},
            headers=bearer(pair["access_token"]),
        )
        assert response.status_code == 401 and response.json()["code"] == "invalid_token"
        # And a registration already past that check is refused when it stores.
        again = await register_options_as(container, alice)
        with pytest.raises(AccountDisabled):
            await container.passkeys.register(
                alice.id, ClientInfo("203.0.113.7", "test"), str(again[0]),
                Authenticator().register(again[1]), "x",
            )  # fmt: skip
        assert await passkeys_of(container) == []


async def register_options_as(container: Container, account: Account) -> tuple[uuid.UUID, Any]:
    """Registration options made straight by the service (the account may be disabled)."""
    client = ClientInfo("203.0.113.7", "test")
    return await container.passkeys.registration_options(account.id, account.username, client)


class TestOff:
    @pytest.mark.parametrize("settings_overrides", [{}])
    async def test_every_path_is_not_found_while_off(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        auth = bearer(pair["access_token"])
        calls = [
            ("POST", f"{PASSKEYS}/register/options", {}),
            ("POST", f"{PASSKEYS}/register", {"challenge_id": "x", "credential": {}}),
            ("GET", PASSKEYS, None),
            ("DELETE", f"{PASSKEYS}/{uuid.uuid4()}", None),
            ("PATCH", f"{PASSKEYS}/{uuid.uuid4()}", {"name": "x"}),
            ("POST", f"{PASSKEYS}/login/options", {}),
            (
                "POST",
                f"{PASSKEYS}/login",
                {"challenge_id": "x", "credential": {}, "device_name": "d"},
            ),
            ("GET", "/.well-known/assetlinks.json", None),
        ]
        absent = await client.request("POST", f"{PASSKEYS}-absent", json={}, headers=auth)
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=auth)
            assert response.status_code == 404, (method, path, response.text)
            # The body and headers of a path that is not there at all (a sign-in path's
            # no-store would tell passkeys apart from a path that does not exist).
            assert response.json() == absent.json() == {"detail": "Not Found", "code": "not_found"}
            assert "cache-control" not in response.headers, (method, path)
            assert "pragma" not in response.headers, (method, path)

    @pytest.mark.parametrize("settings_overrides", [{}])
    @pytest.mark.parametrize("body", [b"{", b"[1]", b'{"challenge_id": 1}'])
    async def test_a_body_that_does_not_parse_is_not_found_while_off(
        self, client: httpx.AsyncClient, alice: Account, body: bytes
    ) -> None:
        # Off means the paths are not there: nothing is read before that is said.
        auth = bearer((await tokens(client))["access_token"])
        for path in ("/register/options", "/register", "/login/options", "/login"):
            response = await client.post(
                f"{PASSKEYS}{path}", content=body,
                headers={**auth, "Content-Type": "application/json"},
            )  # fmt: skip
            assert response.status_code == 404, (path, response.text)
            assert response.json()["code"] == "not_found"

    @pytest.mark.parametrize("settings_overrides", [{}])
    async def test_another_method_is_not_found_while_off(self, client: httpx.AsyncClient) -> None:
        # A 405 would say the path is there.
        for method, path in [("GET", f"{PASSKEYS}/login"), ("PUT", f"{PASSKEYS}/register"),
                             ("POST", PASSKEYS), ("GET", f"{PASSKEYS}/{uuid.uuid4()}"),
                             ("POST", "/.well-known/assetlinks.json")]:  # fmt: skip
            response = await client.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["code"] == "not_found"

    @pytest.mark.parametrize(
        "settings_overrides",
        [{k: v for k, v in ON.items() if not k.startswith("android")}],
    )
    async def test_no_assetlinks_without_the_android_app(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/.well-known/assetlinks.json")).status_code == 404
