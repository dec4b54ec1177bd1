"""Helpers of the passkey tests: settings with passkeys on, and the two ceremonies
through the API with the software authenticator."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
from sqlalchemy import func, select

from conductor_api.auth.models import LoginThrottle
from conductor_api.container import Container
from conductor_api.passkeys.models import Passkey, WebAuthnChallenge
from conductor_api.sessions.models import DeviceSession
from tests.conftest import CLIENT_IP, bearer, tokens
from tests.passkeys.authenticator import ORIGIN, RP_ID, Authenticator, b64url

PASSKEYS = "/api/v1/auth/passkeys"
# The app's signing certificate, and the origin Credential Manager gives its requests.
APP_CERT = b"the Conductor app's signing certificate"
APK_HASH = hashlib.sha256(APP_CERT).digest()
ANDROID_ORIGIN = "android:apk-key-hash:" + b64url(APK_HASH)
FINGERPRINT = ":".join(f"{b:02x}" for b in APK_HASH)
PACKAGE = "com.example.conductor"

ON: dict[str, Any] = {
    "webauthn_rp_id": RP_ID,
    "webauthn_origins": f"{ORIGIN},{ANDROID_ORIGIN}",
    "android_package_name": PACKAGE,
    "android_cert_fingerprints": FINGERPRINT,
}


async def register_options(client: httpx.AsyncClient, access_token: str) -> dict[str, Any]:
    """POST /register/options: {"challenge_id", "options"}."""
    response = await client.post(
        f"{PASSKEYS}/register/options", json={}, headers=bearer(access_token)
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(
    client: httpx.AsyncClient,
    access_token: str,
    authenticator: Authenticator,
    name: str = "Pixel 8",
    **tweaks: Any,
) -> httpx.Response:
    """Both steps of a registration; `tweaks` change one field of the response."""
    started = await register_options(client, access_token)
    credential = authenticator.register(started["options"], **tweaks)
    return await client.post(
        f"{PASSKEYS}/register",
        json={"challenge_id": started["challenge_id"], "credential": credential, "name": name},
        headers=bearer(access_token),
    )


async def add_passkey(
    client: httpx.AsyncClient, access_token: str, authenticator: Authenticator
) -> dict[str, Any]:
    """A registered passkey, asserting the 201."""
    response = await register(client, access_token, authenticator)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def with_passkey(
    client: httpx.AsyncClient, **login: Any
) -> tuple[dict[str, Any], Authenticator]:
    """Sign in with the password (alice unless `login` says) and register a new passkey: the
    token pair, and the authenticator that holds the passkey."""
    pair = await tokens(client, **login)
    phone = Authenticator()
    await add_passkey(client, pair["access_token"], phone)
    return pair, phone


async def login_options(client: httpx.AsyncClient) -> dict[str, Any]:
    """POST /login/options."""
    response = await client.post(f"{PASSKEYS}/login/options", json={})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def passkey_login(
    client: httpx.AsyncClient,
    authenticator: Authenticator,
    *,
    device: str = "Pixel 8",
    extra: dict[str, Any] | None = None,
    **tweaks: Any,
) -> httpx.Response:
    """Both steps of a passkey sign-in."""
    started = await login_options(client)
    credential = authenticator.sign_in(started["options"], **tweaks)
    body = {"challenge_id": started["challenge_id"], "credential": credential,
            "device_name": device, **(extra or {})}  # fmt: skip
    return await client.post(f"{PASSKEYS}/login", json=body)


async def passkeys_of(container: Container) -> list[Passkey]:
    """Every stored passkey."""
    async with container.sessionmaker() as db:
        return list((await db.scalars(select(Passkey))).all())


async def challenge_count(container: Container) -> int:
    """How many WebAuthn challenges are stored."""
    async with container.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(WebAuthnChallenge)) or 0)


async def session_count(container: Container) -> int:
    """How many sessions exist."""
    async with container.sessionmaker() as db:
        return int(await db.scalar(select(func.count()).select_from(DeviceSession)) or 0)


async def address_failures(container: Container, ip: str = CLIENT_IP) -> int:
    """The address's failure count."""
    async with container.sessionmaker() as db:
        row = await db.get(LoginThrottle, ("ip", ip))
        return 0 if row is None else row.failures
