"""Passkeys through the real API with a software authenticator: register, list, rename,
sign in (a credential step of the sign-in, with the same limits, tokens and events),
delete; the options Credential Manager gets; the asset-links statement."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.passkeys import repository as passkeys_repository
from conductor_api.users import service as users_service
from tests.conftest import Account, add_user, bearer, login, make_client, tokens
from tests.dpop.conftest import claims_of, dpop_headers, session_jkt
from tests.dpop.keys import PhoneKey
from tests.mfa.helpers import code_at, enable_totp, mfa_status, verify
from tests.passkeys.authenticator import Authenticator, unb64url
from tests.passkeys.helpers import (
    ANDROID_ORIGIN,
    FINGERPRINT,
    ON,
    PACKAGE,
    PASSKEYS,
    add_passkey,
    challenge_count,
    login_options,
    passkey_login,
    passkeys_of,
    register,
    register_options,
    session_count,
    with_passkey,
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Passkeys on."""
    return dict(ON)


class TestLife:
    async def test_register_list_sign_in_delete_and_the_deleted_one_is_refused(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        phone = Authenticator()
        added = await add_passkey(client, pair["access_token"], phone)
        assert set(added) == {"id", "name", "created_at", "last_used_at"}
        assert added["name"] == "Pixel 8" and added["last_used_at"] is None
        (row,) = await passkeys_of(container)
        assert str(row.id) == added["id"] and row.credential_id == phone.credential_id
        assert row.user_id == alice.id and row.sign_count == 0
        assert row.backup_eligible and row.backup_state
        assert row.transports == "internal,hybrid"
        assert row.aaguid == "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"
        assert phone.user_handle == alice.id.bytes

        listed = await client.get(PASSKEYS, headers=bearer(pair["access_token"]))
        assert listed.status_code == 200 and listed.json() == [added]
        assert (await mfa_status(client, pair["access_token"]))["passkeys"] == 1

        signed_in = await passkey_login(client, phone, device="Pixel 9")
        assert signed_in.status_code == 200, signed_in.text
        body = signed_in.json()
        assert body["token_type"] == "bearer" and body["device_token"]
        assert {"access_token", "refresh_token", "session_id", "expires_in"} <= set(body)
        assert signed_in.headers["cache-control"] == "no-store"
        me = await client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
        assert me.json()["username"] == "alice"
        sessions = await client.get("/api/v1/auth/sessions", headers=bearer(body["access_token"]))
        assert "Pixel 9" in [s["device_name"] for s in sessions.json()]
        (row,) = await passkeys_of(container)
        assert row.sign_count == 1 and row.last_used_at is not None
        # The refresh token works like any other.
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}
        )
        assert refreshed.status_code == 200

        events = await client.get("/api/v1/auth/events", headers=bearer(body["access_token"]))
        logins = [e for e in events.json() if e["type"] == "login_succeeded"]
        # One frozen clock: both at the same time, so compared as a set.
        assert {(e["method"], e["mfa"]) for e in logins} == {("passkey", True), ("password", False)}
        added_event = [e for e in events.json() if e["type"] == "passkey_added"]
        assert len(added_event) == 1 and "method" not in added_event[0]
        # Done with pair's session: the event names it (as every signed-in change does).
        assert added_event[0]["session_id"] == pair["session_id"]

        deleted = await client.delete(
            f"{PASSKEYS}/{added['id']}", headers=bearer(pair["access_token"])
        )
        assert deleted.status_code == 204
        assert await passkeys_of(container) == []
        events = await client.get("/api/v1/auth/events", headers=bearer(body["access_token"]))
        [removed] = [e for e in events.json() if e["type"] == "passkey_removed"]
        assert removed["session_id"] == pair["session_id"]
        refused = await passkey_login(client, phone)
        assert refused.status_code == 401
        assert refused.json() == {
            "detail": "The passkey could not be verified", "code": "invalid_passkey",
        }  # fmt: skip

    async def test_a_sign_in_records_its_counter_only_over_the_one_it_checked(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # The sign-in's last transaction (a direct one) updates the passkey guarded by the
        # counter its assertion was checked against: of two assertions with one counter,
        # the second finds it changed and is refused (InvalidPasskey), changing nothing.
        pair = await tokens(client)
        await add_passkey(client, pair["access_token"], Authenticator())
        (row,) = await passkeys_of(container)
        now = container.clock.now()
        async with container.autocommit.transaction() as tx:
            assert await passkeys_repository.used(
                tx, row.id, old_count=0, new_count=5, backup_state=False, now=now
            )
            assert not await passkeys_repository.used(
                tx, row.id, old_count=0, new_count=6, backup_state=True, now=now
            )
        (row,) = await passkeys_of(container)
        assert (row.sign_count, row.backup_state, row.last_used_at) == (5, False, now)

    async def test_rename(self, client: httpx.AsyncClient, alice: Account) -> None:
        pair = await tokens(client)
        added = await add_passkey(client, pair["access_token"], Authenticator())
        renamed = await client.patch(
            f"{PASSKEYS}/{added['id']}", json={"name": "Work phone"},
            headers=bearer(pair["access_token"]),
        )  # fmt: skip
        assert renamed.status_code == 200 and renamed.json()["name"] == "Work phone"
        listed = await client.get(PASSKEYS, headers=bearer(pair["access_token"]))
        assert listed.json()[0]["name"] == "Work phone"

    async def test_anyone_elses_or_an_unknown_passkey_is_not_found(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await add_user(container, "bob")
        alices = await tokens(client)
        added = await add_passkey(client, alices["access_token"], Authenticator())
        bobs = await tokens(client, username="bob")
        for path in (added["id"], "00000000-0000-4000-8000-000000000000"):
            gone = await client.delete(f"{PASSKEYS}/{path}", headers=bearer(bobs["access_token"]))
            assert gone.status_code == 404 and gone.json()["code"] == "not_found"
        assert len(await passkeys_of(container)) == 1
        assert (await client.get(PASSKEYS, headers=bearer(bobs["access_token"]))).json() == []

    async def test_an_id_that_is_not_a_uuid_is_not_found(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        auth = bearer((await tokens(client))["access_token"])
        for path in ("not-a-uuid", "1", "%00", "..%2F..%2Fetc"):
            gone = await client.delete(f"{PASSKEYS}/{path}", headers=auth)
            assert gone.status_code == 404, (path, gone.text)
            assert gone.json()["code"] == "not_found"
            renamed = await client.patch(f"{PASSKEYS}/{path}", json={"name": "x"}, headers=auth)
            assert renamed.status_code == 404, (path, renamed.text)
            assert renamed.json()["code"] == "not_found"

    async def test_a_synced_passkey_signs_in_on_a_new_phone_without_a_device_token(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair, old_phone = await with_passkey(client)
        first = await passkey_login(client, old_phone, device="Old phone")
        # The same key, synced by the provider: the counter of a synced passkey stays 0.
        new_phone = Authenticator(key=old_phone.key, credential_id=old_phone.credential_id,
                                  user_handle=old_phone.user_handle)  # fmt: skip
        second = await passkey_login(client, new_phone, device="New phone", counter=0)
        assert first.status_code == 200
        # The stored counter is 1 now, so a 0 would be a counter that went backwards.
        assert second.status_code == 401
        zero = Authenticator()
        await add_passkey(client, pair["access_token"], zero)
        synced = Authenticator(key=zero.key, credential_id=zero.credential_id,
                               user_handle=zero.user_handle)  # fmt: skip
        for phone in (zero, synced, zero):
            response = await passkey_login(client, phone, counter=0)
            assert response.status_code == 200, response.text

    async def test_a_device_token_is_answered_again(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair, phone = await with_passkey(client)
        again = await passkey_login(client, phone, extra={"device_token": pair["device_token"]})
        assert again.status_code == 200
        assert again.json()["device_token"] == pair["device_token"]

    @pytest.mark.parametrize("token", ["\\ud800", "x\\udfff\\ud800", "\\u00e9t\\u00e9"])
    async def test_a_device_token_that_was_not_made_here_counts_as_none(
        self, client: httpx.AsyncClient, alice: Account, token: str
    ) -> None:
        # JSON escapes: a lone surrogate cannot even be hashed; no token made here has one.
        _, phone = await with_passkey(client)
        started = await login_options(client)
        credential = json.dumps(phone.sign_in(started["options"]))
        body = (f'{{"challenge_id": "{started["challenge_id"]}", "credential": {credential}, '
                f'"device_name": "Pixel 8", "device_token": "{token}"}}')  # fmt: skip
        response = await client.post(
            f"{PASSKEYS}/login", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["device_token"]

    async def test_a_wrong_method_names_both_of_a_passkeys(self, client: httpx.AsyncClient) -> None:
        # Two routes share the path; a 405's Allow names the methods of both (RFC 9110).
        response = await client.put(f"{PASSKEYS}/{uuid.uuid4()}")
        assert response.status_code == 405
        assert response.headers["allow"] == "PATCH, DELETE"


class TestOptions:
    async def test_creation_options(self, client: httpx.AsyncClient, alice: Account) -> None:
        pair = await tokens(client)
        first = await register_options(client, pair["access_token"])
        options = first["options"]
        assert options["rp"] == {"id": "conductor.example", "name": "Conductor"}
        assert options["user"]["name"] == "alice"
        assert unb64url(options["user"]["id"]) == alice.id.bytes
        assert len(unb64url(options["challenge"])) >= 16
        assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -257, -8]
        selection = options["authenticatorSelection"]
        assert selection["residentKey"] == "required"
        assert selection["userVerification"] == "required"
        assert options["attestation"] == "none"
        assert options["excludeCredentials"] == []
        phone = Authenticator()
        await add_passkey(client, pair["access_token"], phone)
        second = (await register_options(client, pair["access_token"]))["options"]
        assert [c["id"] for c in second["excludeCredentials"]] == [
            base64.urlsafe_b64encode(phone.credential_id).rstrip(b"=").decode()
        ]
        assert second["challenge"] != options["challenge"]

    async def test_request_options_ask_for_discoverable_credentials(
        self, client: httpx.AsyncClient
    ) -> None:
        started = await login_options(client)
        assert set(started) == {"challenge_id", "options"}
        options = started["options"]
        assert options["allowCredentials"] == []
        assert options["userVerification"] == "required"
        assert options["rpId"] == "conductor.example"
        assert options["timeout"] == 300000
        assert len(unb64url(options["challenge"])) >= 16

    async def test_registration_needs_a_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post(f"{PASSKEYS}/register/options", json={})
        assert response.status_code == 401


class TestChallengesPerAddress:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {**ON, "max_passkey_challenges_per_ip": 3}

    async def test_past_the_limit_is_429_and_stores_nothing(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        phone = Authenticator()
        async with make_client(app, "198.51.100.9") as other:
            await add_passkey(other, (await tokens(other))["access_token"], phone)
        stored = await challenge_count(container)
        at = (await tokens(client))["access_token"]
        # Registrations count with sign-ins: a signed-in client cannot add rows either.
        await register_options(client, at)
        started = [await login_options(client) for _ in range(2)]
        refused = await client.post(f"{PASSKEYS}/login/options", json={})
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_attempts"
        assert "passkey" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 15 * 60
        assert await challenge_count(container) == stored + 3
        refused = await client.post(f"{PASSKEYS}/register/options", json={}, headers=bearer(at))
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_attempts"
        assert await challenge_count(container) == stored + 3
        # A challenge asked for before the refusal still signs in.
        body = {"challenge_id": started[-1]["challenge_id"], "device_name": "Pixel 8",
                "credential": phone.sign_in(started[-1]["options"])}  # fmt: skip
        assert (await client.post(f"{PASSKEYS}/login", json=body)).status_code == 200

        # Another address is not affected, and the window ends after LOCKOUT_MINUTES.
        async with make_client(app, "198.51.100.9") as other:
            assert (await passkey_login(other, phone)).status_code == 200
        clock.advance(minutes=16)
        assert (await passkey_login(client, phone)).status_code == 200


class TestSignInSteps:
    async def test_a_passkey_satisfies_the_second_factor(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair, phone = await with_passkey(client)
        await enable_totp(client, pair["access_token"], container.clock.now())
        assert (await login(client)).status_code == 403  # the password needs the code
        signed_in = await passkey_login(client, phone)
        assert signed_in.status_code == 200, signed_in.text
        assert "mfa_token" not in signed_in.json()

    async def test_a_disabled_user_is_refused_only_after_a_valid_assertion(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        _pair, phone = await with_passkey(client)
        async with container.sessionmaker.begin() as db:
            user = await users_service.require_user(db, "alice")
            await users_service.set_active(db, user, False, container.clock.now())
        before = await session_count(container)
        invalid = await passkey_login(client, phone, signer=Authenticator().key)
        assert invalid.status_code == 401 and invalid.json()["code"] == "invalid_passkey"
        valid = await passkey_login(client, phone)
        assert valid.status_code == 403 and valid.json()["code"] == "account_disabled"
        assert await session_count(container) == before

    async def test_password_events_say_whether_a_second_factor_was_used(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        secret, _ = await enable_totp(client, pair["access_token"], container.clock.now())
        pending = (await login(client)).json()["mfa_token"]
        clock.advance(seconds=30)
        done = await verify(client, pending, code=code_at(secret, container.clock.now()))
        assert done.status_code == 200, done.text
        events = await client.get(
            "/api/v1/auth/events", headers=bearer(done.json()["access_token"])
        )
        logins = [e for e in events.json() if e["type"] == "login_succeeded"]
        assert [(e["method"], e["mfa"]) for e in logins] == [
            ("password", True),
            ("password", False),
        ]

    async def test_reset_mfa_keeps_the_passkeys(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair, phone = await with_passkey(client)
        await enable_totp(client, pair["access_token"], container.clock.now())
        async with container.sessionmaker.begin() as db:
            user = await users_service.require_user(db, "alice")
            was_on, _ = await users_service.reset_mfa(
                db, user, container.mfa, container.clock.now()
            )
        assert was_on
        assert len(await passkeys_of(container)) == 1
        assert (await passkey_login(client, phone)).status_code == 200


class TestAndroid:
    async def test_an_android_app_origin_is_accepted(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        app = Authenticator(origin=ANDROID_ORIGIN)
        assert (await register(client, pair["access_token"], app)).status_code == 201
        assert (await passkey_login(client, app)).status_code == 200

    async def test_assetlinks(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/.well-known/assetlinks.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        statements = response.json()
        # Google's Digital Asset Links format: a list of statements, each a relation list
        # and an android_app target with the package name and upper-case fingerprints.
        assert statements == [
            {
                "relation": [
                    "delegate_permission/common.handle_all_urls",
                    "delegate_permission/common.get_login_creds",
                ],
                "target": {
                    "namespace": "android_app",
                    "package_name": PACKAGE,
                    "sha256_cert_fingerprints": [FINGERPRINT.upper()],
                },
            }
        ]
        fingerprint = statements[0]["target"]["sha256_cert_fingerprints"][0]
        assert len(fingerprint.split(":")) == 32
        assert all(len(b) == 2 and b == b.upper() for b in fingerprint.split(":"))


class TestMetrics:
    async def test_passkey_sign_ins_are_counted_by_result(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        from tests.metrics.test_metrics import scrape

        _pair, phone = await with_passkey(client)
        assert (await passkey_login(client, phone)).status_code == 200
        assert (await passkey_login(client, phone, signer=Authenticator().key)).status_code == 401
        s = scrape(container)
        assert s.value("conductor_logins_total", method="passkey", result="succeeded") == 1
        assert s.value("conductor_logins_total", method="passkey", result="failed") == 1


class TestDPoP:
    """A passkey sign-in binds its session to the key of a DPoP proof, as a password one."""

    async def _signed_in(
        self, client: httpx.AsyncClient, container: Container, key: PhoneKey, method: str
    ) -> httpx.Response:
        started = await login_options(client)
        credential = self.phone.sign_in(started["options"])
        body = {"challenge_id": started["challenge_id"], "credential": credential,
                "device_name": "Pixel 8"}  # fmt: skip
        proof = key.proof(method, f"{PASSKEYS}/login", container.clock.now().timestamp())
        return await client.post(f"{PASSKEYS}/login", json=body, headers={"DPoP": proof})

    async def test_a_proof_binds_the_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        self.phone = Authenticator()
        await add_passkey(client, (await tokens(client))["access_token"], self.phone)
        key = PhoneKey()
        response = await self._signed_in(client, container, key, "POST")
        assert response.status_code == 200, response.text
        pair = response.json()
        assert pair["token_type"] == "DPoP" and pair["device_token"]
        assert claims_of(pair["access_token"])["cnf"] == {"jkt": key.jkt}
        assert await session_jkt(container, claims_of(pair["access_token"])["sid"]) == key.jkt
        # The bound access token works with a proof by that key, and not as a bearer token.
        me = await client.get(
            "/api/v1/auth/me",
            headers=dpop_headers(container, key, "GET", "/api/v1/auth/me", pair["access_token"]),
        )
        assert me.status_code == 200, me.text
        as_bearer = await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        assert as_bearer.status_code == 401

    async def test_a_bad_proof_starts_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        self.phone = Authenticator()
        await add_passkey(client, (await tokens(client))["access_token"], self.phone)
        before = await session_count(container)
        response = await self._signed_in(client, container, PhoneKey(), "GET")  # wrong htm
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_dpop_proof"
        assert await session_count(container) == before
