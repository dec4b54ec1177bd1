"""Trusted devices: a valid device token moves a login's failures from the username to the
token, so a name locked by someone else still signs in on its owner's phone, and a stolen
token without the password locks only itself."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.devices.models import DeviceToken
from conductor_api.sessions.models import DeviceSession
from conductor_api.users import service as users
from tests.conftest import PASSWORD, Account, add_user, bearer, make_client, tokens
from tests.mfa.helpers import WRONG, code_at, enable_totp, verify

LOGIN = "/api/v1/auth/login"
ATTACKER_IP = "198.51.100.66"


async def login_with(
    client: httpx.AsyncClient,
    device_token: str | None,
    password: str = PASSWORD,
    username: str = "alice",
) -> httpx.Response:
    """A login that presents a device token."""
    body: dict[str, Any] = {"username": username, "password": password, "device_name": "Pixel 8"}
    if device_token is not None:
        body["device_token"] = device_token
    return await client.post(LOGIN, json=body)


async def lock_alice(app: Any) -> None:
    """Five wrong passwords for alice from another address: her name is locked."""
    async with make_client(app, ATTACKER_IP) as attacker:
        for _ in range(5):
            assert (await login_with(attacker, None, WRONG)).status_code == 401
        assert (await login_with(attacker, None)).status_code == 429


async def name_row(container: Container, key: str = "alice") -> LoginThrottle | None:
    """The username's counter."""
    async with container.sessionmaker() as db:
        return await db.get(LoginThrottle, ("user", key))


async def name_state(container: Container) -> tuple[int, object]:
    """alice's (failures, locked_until); (0, None) when she has no counter."""
    row = await name_row(container)
    return (0, None) if row is None else (row.failures, row.locked_until)


async def device_rows(container: Container) -> list[DeviceToken]:
    """Every stored device token."""
    async with container.sessionmaker() as db:
        return list((await db.scalars(select(DeviceToken))).all())


def assert_locked(response: httpx.Response) -> None:
    """429 account_locked with Retry-After."""
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "account_locked"
    assert 0 < int(response.headers["retry-after"]) <= 900


class TestIssue:
    async def test_every_sign_in_answers_one_stored_only_as_a_hash(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        first = (await tokens(client))["device_token"]
        assert isinstance(first, str) and len(first) >= 40
        [row] = await device_rows(container)
        assert row.token_hash == hashlib.sha256(first.encode()).hexdigest()
        assert row.user_id == alice.id
        assert row.expires_at == clock.now() + timedelta(days=180)
        # Presented again, the same token comes back; not presented, a new one.
        clock.advance(minutes=1)
        again = await login_with(client, first)
        assert again.json()["device_token"] == first
        [row] = await device_rows(container)
        assert row.last_used_at == clock.now()
        other = (await tokens(client))["device_token"]
        assert other != first
        assert len(await device_rows(container)) == 2

    async def test_refresh_answers_none_and_the_token_endpoint_takes_it_as_a_form_field(
        self, client: httpx.AsyncClient, alice: Account, app: Any
    ) -> None:
        pair = await tokens(client)
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert "device_token" not in refreshed.json()
        await lock_alice(app)
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        locked = await client.post("/api/v1/auth/token", data=form)
        assert locked.status_code == 429
        ok = await client.post(
            "/api/v1/auth/token", data={**form, "device_token": pair["device_token"]}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["device_token"] == pair["device_token"]


class TestLockoutBypass:
    async def test_a_name_locked_by_someone_else_signs_in_on_its_own_phone(
        self, client: httpx.AsyncClient, alice: Account, app: Any, container: Container
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        await lock_alice(app)
        locked_before = await name_row(container)
        assert_locked(await login_with(client, None))
        ok = await login_with(client, device_token)
        assert ok.status_code == 200, ok.text
        # Neither cleared nor reset: the name stays locked for everyone else.
        after = await name_row(container)
        assert locked_before is not None and after is not None
        assert (after.failures, after.locked_until) == (
            locked_before.failures,
            locked_before.locked_until,
        )
        assert_locked(await login_with(client, None))

    async def test_a_stolen_token_without_the_password_locks_only_itself(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        app: Any,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        async with make_client(app, ATTACKER_IP) as thief:
            for _ in range(5):
                response = await login_with(thief, device_token, WRONG)
                assert (
                    response.status_code == 401 and response.json()["code"] == "invalid_credentials"
                )
            assert_locked(await login_with(thief, device_token, WRONG))
        # Even the right password with that token waits out the lock...
        assert_locked(await login_with(client, device_token))
        # ...but the name was never charged: alice signs in without it.
        assert await name_state(container) == (0, None)
        assert (await login_with(client, None)).status_code == 200
        [row, _] = sorted(await device_rows(container), key=lambda r: r.created_at)
        async with container.sessionmaker() as db:
            counter = await db.get(LoginThrottle, ("device", str(row.id)))
        assert counter is not None and counter.failures == 5 and counter.locked_until is not None
        clock.advance(minutes=15)
        assert (await login_with(client, device_token)).status_code == 200

    async def test_invalid_tokens_count_as_none(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        app: Any,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        await add_user(container, "bob")
        bobs = (await tokens(client, username="bob"))["device_token"]
        mine = (await tokens(client))["device_token"]
        expiring = (await tokens(client))["device_token"]
        await lock_alice(app)
        for token in ("forged", "", "x" * 5000, bobs):
            assert_locked(await login_with(client, token))
        assert (await login_with(client, mine)).status_code == 200
        # Expired: lock the name again once the token is past DEVICE_TOKEN_DAYS.
        clock.advance(days=181)
        await lock_alice(app)
        assert_locked(await login_with(client, expiring))

    async def test_a_token_with_a_lone_surrogate_counts_as_none(
        self, client: httpx.AsyncClient, alice: Account, app: Any
    ) -> None:
        # JSON may escape a lone surrogate, which no hash or database accepts: not a 500.
        body = '{"username": "alice", "password": "%s", "device_name": "P", "device_token": "%s"}'
        json_type = {"Content-Type": "application/json"}

        async def login(token: str) -> httpx.Response:
            return await client.post(LOGIN, content=body % (PASSWORD, token), headers=json_type)

        for token in ("\\ud800", "ok\\udfff"):
            signed_in = await login(token)
            assert signed_in.status_code == 200, signed_in.text
        await lock_alice(app)
        assert_locked(await login("\\ud800"))

    async def test_revoked_by_a_password_change(
        self, client: httpx.AsyncClient, alice: Account, app: Any
    ) -> None:
        pair = await tokens(client)
        new = "a brand new passphrase here"
        changed = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": new},
            headers=bearer(pair["access_token"]),
        )
        assert changed.status_code == 204
        await lock_alice(app)
        assert_locked(await login_with(client, pair["device_token"], new))

    async def test_revoked_by_set_password_and_disable(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        app: Any,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        first = (await tokens(client))["device_token"]
        async with container.sessionmaker.begin() as db:
            user = await users.require_user(db, "alice")
            new_hash = await users.hash_new_password(
                container.hasher, "another long passphrase", 15, "alice"
            )
            await users.set_password(db, user, new_hash, now=clock.now())
        assert all(r.revoked_at is not None for r in await device_rows(container))
        second = (await tokens(client, password="another long passphrase"))["device_token"]
        assert second != first
        async with container.sessionmaker.begin() as db:
            user = await users.require_user(db, "alice")
            await users.set_active(db, user, False, clock.now())
        assert all(r.revoked_at is not None for r in await device_rows(container))

    async def test_the_address_limit_applies_either_way(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        async with container.sessionmaker.begin() as db:
            db.add(
                LoginThrottle(
                    scope="ip", key="203.0.113.7", failures=50,
                    window_started_at=container.clock.now(), locked_until=None,
                )
            )  # fmt: skip
        response = await login_with(client, device_token)
        assert response.status_code == 429 and response.json()["code"] == "too_many_attempts"


class TestConcurrency:
    async def test_forty_wrong_logins_with_one_token_at_most_five_checked(
        self, app: Any, alice: Account, container: Container
    ) -> None:
        async with make_client(app) as c:
            device_token = (await tokens(c))["device_token"]

        async def one() -> httpx.Response:
            async with make_client(app, ATTACKER_IP) as c:
                return await login_with(c, device_token, WRONG)

        responses = await asyncio.gather(*(one() for _ in range(40)))
        codes = Counter((r.status_code, r.json()["code"]) for r in responses)
        assert codes == {(401, "invalid_credentials"): 5, (429, "account_locked"): 35}, codes
        assert await name_state(container) == (0, None)


class TestSecondStep:
    async def test_wrong_codes_count_against_the_device_token_not_the_name(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        app: Any,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        pair = await tokens(client)
        secret, _ = await enable_totp(client, pair["access_token"], clock.now())
        clock.advance(seconds=30)
        response = await login_with(client, pair["device_token"])
        token = response.json()["mfa_token"]
        for _ in range(5):
            assert (await verify(client, token, code="000000")).status_code == 401
        assert await name_state(container) == (0, None)
        assert (await login_with(client, None)).status_code == 403  # the name is not locked
        assert_locked(await login_with(client, pair["device_token"]))
        # A second step started without the token charges the name.
        token = (await login_with(client, None)).json()["mfa_token"]
        ok = await verify(client, token, code=code_at(secret, clock.now()))
        assert ok.status_code == 200 and ok.json()["device_token"]

    async def test_a_right_password_does_not_forgive_the_tokens_wrong_codes(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        await enable_totp(client, pair["access_token"], clock.now())
        clock.advance(seconds=30)
        token = (await login_with(client, pair["device_token"])).json()["mfa_token"]
        for _ in range(4):
            assert (await verify(client, token, code="000000")).status_code == 401
        again = await login_with(client, pair["device_token"])
        assert again.status_code == 403, again.text
        assert (await verify(client, again.json()["mfa_token"], code="000000")).status_code == 401
        assert_locked(await login_with(client, pair["device_token"]))


PASSWORD_CHANGE = "/api/v1/auth/password"
NEW_PASSWORD = "a brand new passphrase for alice"


async def change_password(
    client: httpx.AsyncClient, access_token: str, current: str = PASSWORD
) -> httpx.Response:
    """POST /auth/password from the session of `access_token`."""
    body = {"current_password": current, "new_password": NEW_PASSWORD}
    return await client.post(PASSWORD_CHANGE, json=body, headers=bearer(access_token))


async def session_device(container: Container, session_id: str) -> uuid.UUID | None:
    """The device token a session remembers from its sign-in."""
    async with container.sessionmaker() as db:
        row = await db.get(DeviceSession, uuid.UUID(session_id))
    assert row is not None
    return row.device_token_id


class TestSignedInChecks:
    """A signed-in user's own password and code checks (password change, TOTP) take the
    device token her session's sign-in presented in place of the name, while it is valid."""

    async def test_a_locked_name_changes_its_password_on_its_own_phone(
        self, client: httpx.AsyncClient, alice: Account, app: Any, container: Container
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        await lock_alice(app)
        plain = (await login_with(client, device_token)).json()
        [row] = await device_rows(container)
        assert await session_device(container, plain["session_id"]) == row.id
        locked_before = await name_state(container)
        # TOTP setup checks the password too: not refused for the name's lock.
        setup = await client.post(
            "/api/v1/auth/mfa/totp/setup",
            json={"current_password": PASSWORD},
            headers=bearer(plain["access_token"]),
        )
        assert setup.status_code == 200, setup.text
        changed = await change_password(client, plain["access_token"])
        assert changed.status_code == 204, changed.text
        # The name's lock is neither cleared nor reset by it.
        assert await name_state(container) == locked_before
        assert_locked(await login_with(client, None, NEW_PASSWORD))

    async def test_wrong_current_passwords_lock_only_that_device_token(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        pair = (await login_with(client, device_token)).json()
        for _ in range(5):
            wrong = await change_password(client, pair["access_token"], WRONG)
            assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_credentials"
        assert_locked(await change_password(client, pair["access_token"]))
        assert_locked(await login_with(client, device_token))
        assert await name_state(container) == (0, None)
        assert (await login_with(client, None)).status_code == 200

    async def test_a_session_whose_sign_in_presented_none_charges_the_name(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)  # a device token is issued, but none was presented
        assert await session_device(container, pair["session_id"]) is None
        wrong = await change_password(client, pair["access_token"], WRONG)
        assert wrong.status_code == 401
        assert (await name_state(container))[0] == 1

    async def test_a_revoked_device_token_charges_the_name_again(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        device_token = (await tokens(client))["device_token"]
        pair = (await login_with(client, device_token)).json()
        # The change revokes every device token; the session it was made from stays.
        assert (await change_password(client, pair["access_token"])).status_code == 204
        wrong = await change_password(client, pair["access_token"], WRONG)
        assert wrong.status_code == 401
        assert (await name_state(container))[0] == 1

    async def test_a_second_step_session_remembers_the_device_token(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        app: Any,
        container: Container,
        clock: FrozenClock,
    ) -> None:
        pair = await tokens(client)
        secret, _ = await enable_totp(client, pair["access_token"], clock.now())
        clock.advance(seconds=30)
        token = (await login_with(client, pair["device_token"])).json()["mfa_token"]
        done = await verify(client, token, code=code_at(secret, clock.now()))
        assert done.status_code == 200, done.text
        digest = hashlib.sha256(pair["device_token"].encode()).hexdigest()
        [row] = [r for r in await device_rows(container) if r.token_hash == digest]
        assert await session_device(container, done.json()["session_id"]) == row.id
        await lock_alice(app)
        # Disabling TOTP checks the password and a code: the device token's counter, not
        # the locked name's.
        clock.advance(seconds=30)
        off = await client.post(
            "/api/v1/auth/mfa/totp/disable",
            json={"current_password": PASSWORD, "code": code_at(secret, clock.now())},
            headers=bearer(done.json()["access_token"]),
        )
        assert off.status_code == 204, off.text
