"""Binding through the second step, the operator's view, and the URL behind a proxy."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conductor_api.container import Container
from conductor_api.dpop.replay import sqlite_cache_path
from conductor_api.mfa.models import MfaToken
from conductor_api.users.models import User
from tests.conftest import TEST_KEK, Account, make_client
from tests.dpop.conftest import bound_login, claims_of, login_body, now, session_jkt
from tests.dpop.keys import API, PhoneKey
from tests.e2e.server import clean_env, cli_path


async def with_totp(
    client: httpx.AsyncClient, container: Container, account: Account, phone: PhoneKey
) -> pyotp.TOTP:
    """TOTP turned on for `account` (from a session bound to `phone`), the clock then moved
    on a step so that the next code is a new one."""
    pair = await bound_login(client, container, account, phone)
    token = pair["access_token"]

    def headers(method: str, path: str) -> dict[str, str]:
        proof = phone.proof(method, path, now(container), token=token)
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    setup = await client.post(
        API + "/mfa/totp/setup", json={"current_password": account.password},
        headers=headers("POST", API + "/mfa/totp/setup"),
    )  # fmt: skip
    assert setup.status_code == 200, setup.text
    totp = pyotp.TOTP(setup.json()["secret"])
    confirm = await client.post(
        API + "/mfa/totp/confirm", json={"code": totp.at(container.clock.now())},
        headers=headers("POST", API + "/mfa/totp/confirm"),
    )  # fmt: skip
    assert confirm.status_code == 200, confirm.text
    container.clock.advance(seconds=60)  # type: ignore[attr-defined]
    return totp


async def pending_jkt(container: Container, account: Account) -> list[str | None]:
    """The DPoP thumbprints kept with `account`'s pending sign-ins."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(MfaToken.dpop_jkt).join(User, User.id == MfaToken.user_id)
            .where(User.username == account.username)
        )  # fmt: skip
        return list(rows)


class TestSecondStep:
    async def test_mfa_verify_binds_to_its_proof(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        """A login without a proof: the second step's proof decides the binding."""
        totp = await with_totp(client, container, alice, phone)
        pending = await client.post(API + "/login", json=login_body(alice, "Pixel 9"))
        assert pending.status_code == 403
        key = PhoneKey()
        proof = key.proof("POST", API + "/mfa/verify", now(container))
        verified = await client.post(
            API + "/mfa/verify",
            json={"mfa_token": pending.json()["mfa_token"], "code": totp.at(container.clock.now())},
            headers={"DPoP": proof},
        )
        assert verified.status_code == 200, verified.text
        assert verified.json()["token_type"] == "DPoP"
        assert await session_jkt(container, verified.json()["session_id"]) == key.jkt
        assert await pending_jkt(container, alice) == [None]

    async def test_a_sign_in_begun_with_a_proof_ends_with_the_same_key(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        """The mfa_token alone, or with another key's proof, finishes nothing and spends
        nothing; the key of the login's proof finishes it, bound to that key."""
        totp = await with_totp(client, container, alice, phone)
        key = PhoneKey()
        login = await client.post(
            API + "/login", json=login_body(alice, "Pixel 9"),
            headers={"DPoP": key.proof("POST", API + "/login", now(container))},
        )  # fmt: skip
        assert login.status_code == 403, login.text
        mfa_token = login.json()["mfa_token"]
        assert await pending_jkt(container, alice) == [key.jkt]

        def verify_body() -> dict[str, str]:
            return {"mfa_token": mfa_token, "code": totp.at(container.clock.now())}

        for proof in (None, PhoneKey().proof("POST", API + "/mfa/verify", now(container))):
            refused = await client.post(
                API + "/mfa/verify", json=verify_body(), headers={"DPoP": proof} if proof else {}
            )
            assert refused.status_code == 400, refused.text
            assert refused.json()["code"] == "invalid_dpop_proof"
        verified = await client.post(
            API + "/mfa/verify", json=verify_body(),
            headers={"DPoP": key.proof("POST", API + "/mfa/verify", now(container))},
        )  # fmt: skip
        assert verified.status_code == 200, verified.text
        body = verified.json()
        assert body["token_type"] == "DPoP"
        assert claims_of(body["access_token"])["cnf"] == {"jkt": key.jkt}
        assert await session_jkt(container, body["session_id"]) == key.jkt


class TestReplayFile:
    async def test_the_sqlite_cache_is_owner_only(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        await bound_login(client, container, alice, phone)
        if not container.settings.is_sqlite:
            pytest.skip("PostgreSQL keeps the cache in a table")
        path = sqlite_cache_path(container.settings.sqlite_path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent == Path(container.settings.sqlite_path).parent


class TestReplayCache:
    async def test_one_key_at_once_is_accepted_once(self, container: Container) -> None:
        replay = container.dpop.replay
        now = container.clock.now().timestamp()
        keys = [secrets.token_hex(32) for _ in range(5)]
        answers = await asyncio.gather(
            *(replay.first_use(k, now + 60, now) for k in [*keys, keys[0], keys[3]])
        )
        assert answers == [True] * 5 + [False, False]
        assert await replay.first_use(keys[1], now + 60, now) is False


class TestOperatorView:
    async def test_sessions_list_says_bound_or_unbound(
        self, client: httpx.AsyncClient, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        await bound_login(client, container, alice, phone)
        await client.post(API + "/login", json=login_body(alice, "Old phone"))
        env = clean_env(
            DATABASE_URL=container.settings.database_url or "",
            CONDUCTOR_DATA_DIR=str(container.settings.conductor_data_dir),
            JWT_SECRET_KEY=container.settings.access_secret,
            JWT_REFRESH_SECRET_KEY=container.settings.refresh_secret,
            KEY_ENCRYPTION_KEY=TEST_KEK,
        )
        result = await asyncio.to_thread(
            subprocess.run, [cli_path(), "sessions", "list", "alice"], env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        ends = sorted(line.rsplit("\t", 1)[1] for line in result.stdout.splitlines())
        assert ends == ["bound", "unbound"]


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": "127.0.0.1"}])
class TestBehindAProxy:
    async def test_forwarded_scheme_and_host_from_a_trusted_proxy_only(
        self, app: FastAPI, container: Container, alice: Account, phone: PhoneKey
    ) -> None:
        public = "https://api.example.com" + API + "/login"
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
        async with make_client(app, ip="127.0.0.1") as proxy:
            proof = phone.proof("POST", public, now(container))
            ok = await proxy.post(
                API + "/login", json=login_body(alice), headers={**forwarded, "DPoP": proof}
            )
            assert ok.status_code == 200, ok.text
        async with make_client(app, ip="198.51.100.9") as direct:
            proof = phone.proof("POST", public, now(container))
            refused = await direct.post(
                API + "/login", json=login_body(alice), headers={**forwarded, "DPoP": proof}
            )
            assert refused.status_code == 400
            assert refused.json()["code"] == "invalid_dpop_proof"
