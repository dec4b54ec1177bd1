"""The life of a TOTP factor: setup, confirm, the second step of a sign-in, recovery
codes, replay, disable; every bad input answers its contract code and stores nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.auth.signin import SignIn
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.errors import ServiceUnavailable
from conductor_api.events.models import SecurityEvent
from conductor_api.mfa import repository as mfa_repository
from conductor_api.mfa.models import MfaToken, RecoveryCode, TotpFactor
from conductor_api.mfa.service import Owner
from conductor_api.sessions.models import DeviceSession
from conductor_api.users import service as users
from tests.conftest import PASSWORD, Account, add_user, bearer, login, tokens
from tests.mfa.helpers import (
    MFA,
    WRONG,
    code_at,
    enable_totp,
    event_types,
    mfa_status,
    set_up_totp,
    verify,
)


async def factor(container: Container, account: Account) -> TotpFactor | None:
    """The stored factor."""
    async with container.sessionmaker() as db:
        return await db.get(TotpFactor, account.id)


async def failures(container: Container, key: str = "alice") -> int:
    """The username's failure count."""
    async with container.sessionmaker() as db:
        row = await db.get(LoginThrottle, ("user", key))
        return 0 if row is None else row.failures


async def pending_login(client: httpx.AsyncClient, **kwargs: Any) -> str:
    """A login of a user with TOTP on: asserts the 403 and returns the mfa_token."""
    response = await login(client, **kwargs)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == "mfa_required"
    token: str = body["mfa_token"]
    return token


class TestSetup:
    async def test_setup_gives_a_secret_that_is_not_on_yet_and_stored_encrypted(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        response = await client.post(
            f"{MFA}/totp/setup",
            json={"current_password": PASSWORD},
            headers=bearer(pair["access_token"]),
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"secret", "otpauth_uri"}
        assert body["otpauth_uri"].startswith("otpauth://totp/Conductor:alice?")
        assert f"secret={body['secret']}" in body["otpauth_uri"]
        assert await mfa_status(client, pair["access_token"]) == {
            "totp": False, "recovery_codes_left": 0, "passkeys": 0,
        }  # fmt: skip
        row = await factor(container, alice)
        assert row is not None and not row.confirmed
        assert body["secret"].encode() not in row.secret_encrypted
        assert container.mfa._secret(row) == body["secret"]
        # Not on: a login still gets its tokens at once.
        assert (await login(client)).status_code == 200

    async def test_wrong_password_is_a_failed_login_and_stores_nothing(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        response = await client.post(
            f"{MFA}/totp/setup",
            json={"current_password": WRONG},
            headers=bearer(pair["access_token"]),
        )
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"
        assert await failures(container) == 1
        assert await factor(container, alice) is None

    async def test_setup_again_replaces_an_unconfirmed_secret_but_not_a_confirmed_one(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        body = {"current_password": PASSWORD}
        first = (await client.post(f"{MFA}/totp/setup", json=body, headers=bearer(at))).json()
        second = (await client.post(f"{MFA}/totp/setup", json=body, headers=bearer(at))).json()
        assert first["secret"] != second["secret"]
        stale = await client.post(
            f"{MFA}/totp/confirm",
            json={"code": code_at(first["secret"], clock.now())},
            headers=bearer(at),
        )
        assert stale.status_code == 401
        assert stale.json()["code"] == "invalid_mfa_code"
        confirmed = await client.post(
            f"{MFA}/totp/confirm",
            json={"code": code_at(second["secret"], clock.now())},
            headers=bearer(at),
        )
        assert confirmed.status_code == 200
        again = await client.post(f"{MFA}/totp/setup", json=body, headers=bearer(at))
        assert again.status_code == 409
        assert again.json()["code"] == "mfa_already_enabled"
        row = await factor(container, alice)
        assert row is not None and row.confirmed and container.mfa._secret(row) == second["secret"]

    async def test_confirm_without_setup(self, client: httpx.AsyncClient, alice: Account) -> None:
        at = (await tokens(client))["access_token"]
        response = await client.post(
            f"{MFA}/totp/confirm", json={"code": "123456"}, headers=bearer(at)
        )
        assert response.status_code == 409
        assert response.json()["code"] == "mfa_not_set_up"

    async def test_confirm_turns_it_on_with_ten_hashed_recovery_codes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        pair = await tokens(client)
        at = pair["access_token"]
        secret = await set_up_totp(client, at)
        wrong = await client.post(
            f"{MFA}/totp/confirm", json={"code": "000000"}, headers=bearer(at)
        )
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_mfa_code"
        assert (await mfa_status(client, at))["totp"] is False
        confirm = await client.post(
            f"{MFA}/totp/confirm", json={"code": code_at(secret, clock.now())}, headers=bearer(at)
        )
        assert confirm.status_code == 200
        assert confirm.headers["cache-control"] == "no-store"
        codes = confirm.json()["recovery_codes"]
        assert len(set(codes)) == 10
        assert await mfa_status(client, at) == {
            "totp": True,
            "recovery_codes_left": 10,
            "passkeys": 0,
        }
        async with container.sessionmaker() as db:
            hashes = (await db.scalars(select(RecoveryCode.code_hash))).all()
        assert len(hashes) == 10
        assert not {c.replace("-", "") for c in codes} & set(hashes)
        assert "mfa_enabled" in await event_types(container)
        # The wrong code's event, as the right one's, names the session it came from.
        async with container.sessionmaker() as db:
            failed = await db.scalar(
                select(SecurityEvent).where(SecurityEvent.type == "mfa_failed")
            )
        assert failed is not None and str(failed.session_id) == pair["session_id"]

    async def test_a_confirmation_that_fails_after_its_code_leaves_totp_off(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        clock: FrozenClock,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The right code is spent, then the database stops answering (or the process dies)
        # before the recovery codes are stored: TOTP stays off, and the next code turns it
        # on with its codes, where it was left on with none and every retry refused.
        at = (await tokens(client))["access_token"]
        secret = await set_up_totp(client, at)
        real = container.mfa.new_recovery_codes

        async def down(*args: Any) -> list[str]:
            raise ServiceUnavailable()

        monkeypatch.setattr(container.mfa, "new_recovery_codes", down)
        code = {"code": code_at(secret, clock.now())}
        failed = await client.post(f"{MFA}/totp/confirm", json=code, headers=bearer(at))
        assert failed.status_code == 503, failed.text
        assert (await mfa_status(client, at))["totp"] is False
        assert (await login(client)).status_code == 200  # no second step asked for
        assert "mfa_enabled" not in await event_types(container)

        monkeypatch.setattr(container.mfa, "new_recovery_codes", real)
        again = await client.post(f"{MFA}/totp/confirm", json=code, headers=bearer(at))
        assert again.status_code == 401  # that code is spent
        clock.advance(seconds=30)
        code = {"code": code_at(secret, clock.now())}
        confirm = await client.post(f"{MFA}/totp/confirm", json=code, headers=bearer(at))
        assert confirm.status_code == 200, confirm.text
        assert len(confirm.json()["recovery_codes"]) == 10
        assert (await mfa_status(client, at))["recovery_codes_left"] == 10
        assert (await event_types(container)).count("mfa_enabled") == 1


class TestSignIn:
    async def test_right_password_gives_a_pending_sign_in_then_a_code_gives_the_pair(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        clock.advance(seconds=30)
        response = await login(client, device="Pixel 9", fingerprint="phone-2")
        assert response.status_code == 403, response.text
        body = response.json()
        assert set(body) == {"detail", "code", "mfa_token", "methods", "expires_in"}
        assert response.headers["cache-control"] == "no-store"
        assert body["methods"] == ["totp", "recovery_code"]
        assert body["expires_in"] == 300
        async with container.sessionmaker() as db:
            sessions_before = len((await db.scalars(select(DeviceSession))).all())
            row = await db.scalar(select(MfaToken))
        assert row is not None and body["mfa_token"] not in row.token_hash
        assert (row.device_name, row.device_fingerprint) == ("Pixel 9", "phone-2")

        ok = await verify(client, body["mfa_token"], code=code_at(secret, clock.now()))
        assert ok.status_code == 200, ok.text
        assert ok.headers["cache-control"] == "no-store"
        pair = ok.json()
        assert pair["device_token"] and pair["token_type"] == "bearer"
        assert (
            await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))
        ).status_code == 200
        async with container.sessionmaker() as db:
            sessions = (await db.scalars(select(DeviceSession))).all()
        assert len(sessions) == sessions_before + 1
        new = next(s for s in sessions if str(s.id) == pair["session_id"])
        assert (new.device_name, new.device_fingerprint) == ("Pixel 9", "phone-2")
        # Single use.
        clock.advance(seconds=30)
        again = await verify(client, body["mfa_token"], code=code_at(secret, clock.now()))
        assert again.status_code == 401 and again.json()["code"] == "invalid_mfa_token"
        # Every answer of the second step, a refusal too, is uncacheable.
        assert again.headers["cache-control"] == "no-store"

    async def test_wrong_password_answers_exactly_as_without_a_second_factor(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        await add_user(container, "bob")
        await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        with_totp = await login(client, password=WRONG)
        without = await login(client, "bob", WRONG)
        assert (with_totp.status_code, with_totp.json()) == (without.status_code, without.json())

    async def test_oauth_token_endpoint(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        clock.advance(seconds=30)
        response = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        )
        assert response.status_code == 403, response.text
        body = response.json()
        assert body["error"] == "mfa_required" and body["code"] == "mfa_required"
        assert response.headers["cache-control"] == "no-store"
        assert body["expires_in"] == 300 and body["methods"] == ["totp", "recovery_code"]
        ok = await verify(client, body["mfa_token"], code=code_at(secret, clock.now()))
        assert ok.status_code == 200, ok.text

    async def test_a_code_is_accepted_once_and_one_step_of_drift_at_a_boundary(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        assert clock.now().timestamp() % 30 == 0  # the fixture's clock sits on a boundary
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        # The code that confirmed cannot sign in, in the same step.
        token = await pending_login(client)
        replay = await verify(client, token, code=code_at(secret, clock.now()))
        assert replay.status_code == 401 and replay.json()["code"] == "invalid_mfa_code"
        # The next step's code is accepted now (one step of drift ahead)...
        ahead = code_at(secret, clock.now() + timedelta(seconds=30))
        assert (await verify(client, token, code=ahead)).status_code == 200
        # ...and not again a step later, when it is the current code.
        clock.advance(seconds=30)
        token = await pending_login(client)
        again = await verify(client, token, code=ahead)
        assert again.status_code == 401 and again.json()["code"] == "invalid_mfa_code"
        # Two steps later, the code of one step behind is still accepted (drift behind).
        clock.advance(seconds=60)
        behind = code_at(secret, clock.now() - timedelta(seconds=30))
        assert (await verify(client, token, code=behind)).status_code == 200
        # Two steps away is too far.
        clock.advance(seconds=90)
        token = await pending_login(client)
        far = code_at(secret, clock.now() - timedelta(seconds=60))
        assert (await verify(client, token, code=far)).status_code == 401

    async def test_recovery_codes_are_single_use_in_any_typed_form(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        _, codes = await enable_totp(client, at, clock.now())
        for typed in (codes[0].upper(), codes[1].replace("-", ""), f" {codes[2]} "):
            token = await pending_login(client)
            ok = await verify(client, token, recovery_code=typed)
            assert ok.status_code == 200, (typed, ok.text)
        token = await pending_login(client)
        used = await verify(client, token, recovery_code=codes[0])
        assert used.status_code == 401 and used.json()["code"] == "invalid_mfa_code"
        assert (await mfa_status(client, at))["recovery_codes_left"] == 7
        async with container.sessionmaker() as db:
            of_codes = await db.scalars(
                select(SecurityEvent.session_id).where(SecurityEvent.type == "recovery_code_used")
            )
            used_in = of_codes.all()
            of_logins = await db.scalars(
                select(SecurityEvent.session_id).where(
                    SecurityEvent.type == "login_succeeded", SecurityEvent.mfa.is_(True)
                )
            )
            started = of_logins.all()
        # Each names the session its sign-in started.
        assert len(used_in) == 3 and None not in used_in
        assert set(used_in) == set(started)

    async def test_wrong_codes_lock_the_name_and_kill_the_mfa_token(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        clock.advance(seconds=30)
        token = await pending_login(client)
        for i in range(5):
            wrong = await verify(client, token, code="000000" if i % 2 else "999999")
            assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_mfa_code"
        assert await failures(container) == 5
        # The name is locked: a right password is refused too.
        locked = await login(client)
        assert locked.status_code == 429 and locked.json()["code"] == "account_locked"
        # And the mfa_token is used up, even after the lock ends.
        clock.advance(minutes=15)
        dead = await verify(client, token, code=code_at(secret, clock.now()))
        assert dead.status_code == 401 and dead.json()["code"] == "invalid_mfa_token"
        types = await event_types(container)
        assert types.count("mfa_failed") == 5 and "account_locked" in types

    async def test_a_right_password_does_not_forgive_wrong_codes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        # Whoever knows the password must not get fresh guesses at the code by signing in
        # again: only a finished sign-in resets the count.
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        clock.advance(seconds=30)
        token = await pending_login(client)
        for _ in range(4):
            assert (await verify(client, token, code="000000")).status_code == 401
        token = await pending_login(client)
        assert await failures(container) == 4
        wrong = await verify(client, token, code="000000")
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_mfa_code"
        locked = await login(client)
        assert locked.status_code == 429 and locked.json()["code"] == "account_locked"
        # Once the lock is over, a finished sign-in resets the count.
        clock.advance(minutes=15)
        token = await pending_login(client)
        assert (await verify(client, token, code=code_at(secret, clock.now()))).status_code == 200
        assert await failures(container) == 0

    async def test_mfa_token_expires_after_five_minutes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        token = await pending_login(client)
        clock.advance(seconds=300)
        late = await verify(client, token, code=code_at(secret, clock.now()))
        assert late.status_code == 401 and late.json()["code"] == "invalid_mfa_token"

    async def test_bad_input(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        await add_user(container, "bob")
        secret, _ = await enable_totp(client, (await tokens(client))["access_token"], clock.now())
        bob_secret, _ = await enable_totp(
            client, (await tokens(client, username="bob"))["access_token"], clock.now()
        )
        clock.advance(seconds=30)
        token = await pending_login(client)
        for body in ({}, {"code": "123456", "recovery_code": "abcde-fghjk"}, {"code": "1" * 65}):
            response = await client.post(f"{MFA}/verify", json={"mfa_token": token, **body})
            assert response.status_code == 422, body
            assert response.json()["code"] == "validation_error"
        for forged in ("forged", "x" * 600):
            response = await verify(client, forged, code=code_at(secret, clock.now()))
            assert response.status_code in (401, 422)
        forged_once = await verify(client, "forged", code="123456")
        assert forged_once.json()["code"] == "invalid_mfa_token"
        # Malformed codes are wrong codes: 401, counted.
        for typed in ("12345", "1234567", "12a456"):
            response = await verify(client, token, code=typed)
            assert response.status_code == 401 and response.json()["code"] == "invalid_mfa_code"
        # Bob's code does not finish Alice's sign-in.
        other = await verify(client, token, code=code_at(bob_secret, clock.now()))
        assert other.status_code == 401 and other.json()["code"] == "invalid_mfa_code"
        # A code with spaces, as the app shows it, does.
        spaced = code_at(secret, clock.now())
        ok = await verify(client, token, code=f"{spaced[:3]} {spaced[3:]}")
        assert ok.status_code == 200, ok.text


class TestDisableAndRegenerate:
    async def test_disable_needs_the_password_and_a_code(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, _ = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        url = f"{MFA}/totp/disable"
        code = code_at(secret, clock.now())
        wrong_password = await client.post(
            url, json={"current_password": WRONG, "code": code}, headers=bearer(at)
        )
        assert wrong_password.status_code == 401
        assert wrong_password.json()["code"] == "invalid_credentials"
        wrong_code = await client.post(
            url, json={"current_password": PASSWORD, "code": "000000"}, headers=bearer(at)
        )
        assert wrong_code.status_code == 401 and wrong_code.json()["code"] == "invalid_mfa_code"
        assert (await mfa_status(client, at))["totp"] is True
        ok = await client.post(
            url, json={"current_password": PASSWORD, "code": code}, headers=bearer(at)
        )
        assert ok.status_code == 204, ok.text
        assert await mfa_status(client, at) == {
            "totp": False,
            "recovery_codes_left": 0,
            "passkeys": 0,
        }
        async with container.sessionmaker() as db:
            assert (await db.scalars(select(RecoveryCode))).all() == []
        assert (await login(client)).status_code == 200
        assert "mfa_disabled" in await event_types(container)
        again = await client.post(
            url, json={"current_password": PASSWORD, "code": code}, headers=bearer(at)
        )
        assert again.status_code == 409 and again.json()["code"] == "mfa_not_enabled"

    async def test_a_right_password_at_disable_does_not_forgive_wrong_codes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        body = {"current_password": PASSWORD, "code": "000000"}
        for _ in range(5):
            wrong = await client.post(f"{MFA}/totp/disable", json=body, headers=bearer(at))
            assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_mfa_code"
        assert await failures(container) == 5
        locked = await client.post(f"{MFA}/totp/disable", json=body, headers=bearer(at))
        assert locked.status_code == 429 and locked.json()["code"] == "account_locked"
        assert (await mfa_status(client, at))["totp"] is True

    async def test_regenerate_voids_the_old_codes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        off = await client.post(
            f"{MFA}/recovery-codes", json={"code": "123456"}, headers=bearer(at)
        )
        assert off.status_code == 409 and off.json()["code"] == "mfa_not_enabled"
        secret, old = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        response = await client.post(
            f"{MFA}/recovery-codes", json={"code": code_at(secret, clock.now())}, headers=bearer(at)
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        new = response.json()["recovery_codes"]
        assert len(new) == 10 and not set(new) & set(old)
        token = await pending_login(client)
        assert (await verify(client, token, recovery_code=old[0])).status_code == 401
        assert (await verify(client, token, recovery_code=new[0])).status_code == 200
        # A recovery code also works where a code is asked for while signed in.
        again = await client.post(
            f"{MFA}/recovery-codes", json={"code": new[1]}, headers=bearer(at)
        )
        assert again.status_code == 200
        assert "recovery_codes_regenerated" in await event_types(container)

    async def test_new_codes_asked_for_at_once_leave_one_set(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        _, old = await enable_totp(client, at, clock.now())
        responses = await asyncio.gather(
            *(
                client.post(f"{MFA}/recovery-codes", json={"code": code}, headers=bearer(at))
                for code in old[:4]
            )
        )
        sets = [r.json()["recovery_codes"] for r in responses if r.status_code == 200]
        assert sets, [r.text for r in responses]
        # Ten codes are left, all of one set: the last one given out voided the others.
        assert await unused_codes(container, alice) == 10
        assert (await mfa_status(client, at))["recovery_codes_left"] == 10
        valid = [codes for codes in sets if await _signs_in(client, codes[0])]
        assert len(valid) == 1

    async def test_new_codes_wait_for_new_codes_in_flight(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        # Two renewals whose codes were both right: the second starts while the first is
        # not committed, and must void what the first stores.
        at = (await tokens(client))["access_token"]
        await enable_totp(client, at, clock.now())
        owner = Owner(alice.id, alice.username, "alice")
        async with container.sessionmaker.begin() as first:
            await container.mfa.regenerated(first, owner, clock.now())
            second = asyncio.create_task(_in_transaction(container, owner, clock))
            await asyncio.sleep(0.3)  # the second is waiting (for the lock, or to write)
        await second
        assert await unused_codes(container, alice) == 10

    async def test_setups_at_once_keep_one_secret(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        body = {"current_password": PASSWORD}
        responses = await asyncio.gather(
            *(client.post(f"{MFA}/totp/setup", json=body, headers=bearer(at)) for _ in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        owner = Owner(alice.id, alice.username, "alice")
        # A setup that starts while another is not committed waits for it, then replaces it.
        async with container.sessionmaker.begin() as first:
            mine, _ = await container.mfa.begin_setup(first, owner, clock.now())
            other = asyncio.create_task(_setup_in_transaction(container, owner, clock))
            await asyncio.sleep(0.3)
        later, _ = await other
        row = await factor(container, alice)
        assert row is not None and not row.confirmed
        assert container.mfa._secret(row) == later != mine


async def unused_codes(container: Container, account: Account) -> int:
    """How many of the user's recovery codes are stored unused."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(RecoveryCode.id).where(
                RecoveryCode.user_id == account.id, RecoveryCode.used_at.is_(None)
            )
        )
        return len(rows.all())


async def _in_transaction(container: Container, owner: Owner, clock: FrozenClock) -> list[str]:
    async with container.sessionmaker.begin() as db:
        return await container.mfa.regenerated(db, owner, clock.now())


async def _setup_in_transaction(
    container: Container, owner: Owner, clock: FrozenClock
) -> tuple[str, str]:
    async with container.sessionmaker.begin() as db:
        return await container.mfa.begin_setup(db, owner, clock.now())


async def _signs_in(client: httpx.AsyncClient, recovery_code: str) -> bool:
    """Whether a recovery code finishes a sign-in."""
    token = await pending_login(client)
    return (await verify(client, token, recovery_code=recovery_code)).status_code == 200


class TestPasswordChange:
    async def test_needs_a_code_with_totp_on(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, _ = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        new = "a brand new passphrase here"
        url = "/api/v1/auth/password"
        body = {"current_password": PASSWORD, "new_password": new}
        missing = await client.post(url, json=body, headers=bearer(at))
        assert missing.status_code == 403 and missing.json()["code"] == "mfa_required"
        wrong = await client.post(url, json={**body, "code": "000000"}, headers=bearer(at))
        assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_mfa_code"
        assert (await login(client, password=new)).status_code == 401
        ok = await client.post(
            url, json={**body, "code": code_at(secret, clock.now())}, headers=bearer(at)
        )
        assert ok.status_code == 204, ok.text
        assert (await login(client, password=new)).status_code == 403  # still two steps

    async def test_a_pending_sign_in_dies_with_the_password_it_was_started_with(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, codes = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        started = await pending_login(client)
        new = "a brand new passphrase here"
        changed = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": new, "code": codes[0]},
            headers=bearer(at),
        )
        assert changed.status_code == 204, changed.text
        late = await verify(client, started, code=code_at(secret, clock.now()))
        assert late.status_code == 401 and late.json()["code"] == "invalid_mfa_token"
        # The operator's set-password voids them too.
        started = await pending_login(client, password=new)
        async with container.sessionmaker.begin() as db:
            user = await users.require_user(db, "alice")
            await users.set_password(db, user, user.password_hash, now=clock.now())
        clock.advance(seconds=30)
        late = await verify(client, started, code=code_at(secret, clock.now()))
        assert late.status_code == 401 and late.json()["code"] == "invalid_mfa_token"

    async def test_a_pending_sign_in_dies_when_the_account_is_disabled(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, _ = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        started = await pending_login(client)
        for active in (False, True):  # disabled, then enabled again before the second step
            async with container.sessionmaker.begin() as db:
                user = await users.require_user(db, "alice")
                await users.set_active(db, user, active, clock.now())
        late = await verify(client, started, code=code_at(secret, clock.now()))
        assert late.status_code == 401 and late.json()["code"] == "invalid_mfa_token"
        async with container.sessionmaker() as db:
            assert await db.scalar(select(MfaToken).where(MfaToken.user_id == alice.id)) is None


class TestRacesWithTheSecondStep:
    async def test_turning_totp_off_waits_for_a_second_step_in_flight(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock, container: Container
    ) -> None:
        # The second step locks its pending sign-in, then spends a recovery code; turning
        # TOTP off meanwhile must take them in the same order, not deadlock with it.
        at = (await tokens(client))["access_token"]
        _, codes = await enable_totp(client, at, clock.now())
        await pending_login(client)
        owner = Owner(alice.id, alice.username, "alice")
        now = clock.now()
        async with container.sessionmaker.begin() as step:
            pending = (await step.scalars(select(MfaToken.id))).one()
            assert await mfa_repository.lock_live_pending(step, pending, now, max_failures=5)
            off = asyncio.create_task(_turn_off(container, owner, clock))
            await asyncio.sleep(0.3)  # turning off waits for the pending sign-in's lock
            used = await container.mfa.check(step, owner, now, recovery=codes[0])
            assert used == "recovery_code"
        assert await off is True
        assert await factor(container, alice) is None

    async def test_reset_mfa_voids_a_second_step_whose_code_was_already_right(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        clock: FrozenClock,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        at = (await tokens(client))["access_token"]
        secret, _ = await enable_totp(client, at, clock.now())
        clock.advance(seconds=30)
        started = await pending_login(client)
        finish = SignIn.finish_direct

        def reset_first(attempt: SignIn, *args: Any, **kwargs: Any) -> Any:
            # The operator's reset lands between the right code and the session's start.
            async def go() -> None:
                async with container.sessionmaker.begin() as db:
                    user = await users.require_user(db, "alice")
                    await users.reset_mfa(db, user, container.mfa, clock.now())

            inner = finish(attempt, *args, **kwargs)

            @contextlib.asynccontextmanager
            async def wrapped() -> AsyncIterator[Any]:
                await go()
                async with inner as tx:
                    yield tx

            return wrapped()

        monkeypatch.setattr(SignIn, "finish_direct", reset_first)
        late = await verify(client, started, code=code_at(secret, clock.now()))
        assert late.status_code == 401 and late.json()["code"] == "invalid_mfa_token"
        async with container.sessionmaker() as db:
            live = await db.scalars(
                select(DeviceSession).where(
                    DeviceSession.user_id == alice.id, DeviceSession.revoked_at.is_(None)
                )
            )
            assert live.all() == []


async def _turn_off(container: Container, owner: Owner, clock: FrozenClock) -> bool:
    async with container.sessionmaker.begin() as db:
        return await container.mfa.turn_off(db, owner, clock.now())
