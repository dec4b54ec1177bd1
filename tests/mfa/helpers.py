"""Helpers of the second-factor tests: codes computed by pyotp from the returned secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pyotp
from sqlalchemy import select

from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from tests.conftest import PASSWORD, bearer

MFA = "/api/v1/auth/mfa"
VERIFY = f"{MFA}/verify"
WRONG = "wrong password, but long enough"


def code_at(secret: str, moment: datetime) -> str:
    """The TOTP code of `secret` at `moment`, as an authenticator app shows it."""
    return pyotp.TOTP(secret).at(moment)


async def set_up_totp(client: httpx.AsyncClient, access_token: str) -> str:
    """Set up TOTP, not confirmed yet; its secret."""
    setup = await client.post(
        f"{MFA}/totp/setup", json={"current_password": PASSWORD}, headers=bearer(access_token)
    )
    assert setup.status_code == 200, setup.text
    secret: str = setup.json()["secret"]
    return secret


async def enable_totp(
    client: httpx.AsyncClient, access_token: str, moment: datetime
) -> tuple[str, list[str]]:
    """Set up and confirm TOTP; (secret, recovery codes)."""
    secret = await set_up_totp(client, access_token)
    confirm = await client.post(
        f"{MFA}/totp/confirm", json={"code": code_at(secret, moment)}, headers=bearer(access_token)
    )
    assert confirm.status_code == 200, confirm.text
    codes: list[str] = confirm.json()["recovery_codes"]
    return secret, codes


async def mfa_status(client: httpx.AsyncClient, access_token: str) -> dict[str, Any]:
    """GET /auth/mfa."""
    response = await client.get(MFA, headers=bearer(access_token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def verify(client: httpx.AsyncClient, mfa_token: str, **code: str) -> httpx.Response:
    """POST /auth/mfa/verify with `code=` or `recovery_code=`."""
    return await client.post(VERIFY, json={"mfa_token": mfa_token, **code})


async def event_types(container: Container) -> list[str]:
    """Every recorded event type, oldest first.

    The tests' clock is frozen, so events share a time; their ids are time-ordered and break
    the tie (the events API orders the same way).
    """
    async with container.sessionmaker() as db:
        rows = await db.scalars(
            select(SecurityEvent).order_by(SecurityEvent.created_at, SecurityEvent.id)
        )
        return [e.type for e in rows.all()]
