"""What each auth endpoint does, between the HTTP layer and the repositories."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.principal import Principal
from conductor_api.auth.service import Device
from conductor_api.container import Container
from conductor_api.errors import InvalidRefreshToken, NotFound
from conductor_api.sessions import service as sessions
from conductor_api.users import service as users
from conductor_api.users.models import User
from conductor_api.values import ClientInfo, TokenPair


async def login(
    c: Container,
    *,
    username: str,
    password: str,
    device_name: str,
    fingerprint: str | None,
    client: ClientInfo,
    device_token: str | None = None,
) -> TokenPair:
    """Check the password under the brute-force rules and start a device session (or, with
    a second factor on, a pending sign-in: `MfaRequired`)."""
    device = Device(device_name, fingerprint)
    return await c.signin.login(username, password, device, client, device_token)


async def refresh(c: Container, token: str, client: ClientInfo) -> TokenPair:
    """Rotate a refresh token; one that does not verify counts against the address."""
    now = c.clock.now()
    try:
        claims = c.tokens.decode_refresh(token, now)
    except InvalidRefreshToken:
        await c.signin.count_refresh_failure(client)
        raise
    return await sessions.refresh(
        c.sessionmaker, c.autocommit, c.tokens, c.settings, token, claims, client, now
    )


async def change_password(
    c: Container,
    principal: Principal,
    current: str,
    new: str,
    client: ClientInfo,
    code: str | None = None,
) -> None:
    """Check the current password (a failure counts as a failed login) and, with TOTP on, a
    code; set the new one, revoke every other session and the device tokens."""
    await c.signin.change_password(principal, current, new, client, code)


async def logout(db: AsyncSession, c: Container, principal: Principal, client: ClientInfo) -> None:
    """Revoke the caller's own session."""
    user = await _user(db, principal)
    await sessions.revoke_session(
        db, user, principal.session_id, c.clock.now(), client, reason="logout"
    )


async def _user(db: AsyncSession, principal: Principal) -> User:
    user = await users.get(db, principal.user_id)
    if user is None:
        raise NotFound("No such user")
    return user


async def current_user(db: AsyncSession, principal: Principal) -> User:
    """The caller's user row."""
    return await _user(db, principal)
