"""Fixtures of the DPoP tests: a user, and the phone's key."""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from conductor_api.container import Container
from conductor_api.sessions.models import DeviceSession
from tests.conftest import Account, add_user
from tests.dpop.keys import API, PhoneKey


@pytest.fixture
async def alice(container: Container) -> Account:
    return await add_user(container)


@pytest.fixture
def phone() -> PhoneKey:
    return PhoneKey()


def now(container: Container) -> float:
    """The app's (frozen) time, which proofs' `iat` follow."""
    return container.clock.now().timestamp()


def login_body(account: Account, device: str = "Pixel 8") -> dict[str, str]:
    return {"username": account.username, "password": account.password, "device_name": device}


async def bound_login(
    client: httpx.AsyncClient, container: Container, account: Account, key: PhoneKey
) -> dict[str, Any]:
    """Log in with a proof by `key`: the (bound) token pair."""
    proof = key.proof("POST", API + "/login", now(container))
    response = await client.post(API + "/login", json=login_body(account), headers={"DPoP": proof})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["token_type"] == "DPoP"
    return body


def dpop_headers(
    container: Container, key: PhoneKey, method: str, path: str, token: str, **kw: Any
) -> dict[str, str]:
    """`Authorization: DPoP` and a proof with `ath`, for a resource request."""
    proof = key.proof(method, path, now(container), token=token, **kw)
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


async def session_jkt(container: Container, session_id: str) -> str | None:
    """The thumbprint stored with a session."""
    async with container.sessionmaker() as db:
        row = await db.scalar(select(DeviceSession).where(DeviceSession.id == _uuid(session_id)))
    assert row is not None
    return row.dpop_jkt


def _uuid(value: str) -> Any:
    import uuid

    return uuid.UUID(value)


def claims_of(token: str) -> dict[str, Any]:
    """A token's claims, unverified (the tests only read them)."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded
