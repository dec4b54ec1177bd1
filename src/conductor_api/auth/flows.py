"""What each auth endpoint does, between the HTTP layer and the repositories."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.principal import Principal
from conductor_api.container import Container
from conductor_api.errors import InvalidRefreshToken, NotFound
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.sessions import service as sessions
from conductor_api.users import repository as users_repo
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
) -> TokenPair:
    """Check the password under the brute-force rules and start a device session."""

    async def start(db: AsyncSession, user: User, now: datetime) -> TokenPair:
        pair = await sessions.start_session(
            db, c.tokens, c.settings, user, device_name=device_name, fingerprint=fingerprint,
            client=client, now=now,
        )  # fmt: skip
        events.record(
            db, EventType.LOGIN_SUCCEEDED, now=now, username_key=user.username_key,
            user_id=user.id, ip_address=client.ip_address, user_agent=client.user_agent,
            session_id=pair.session_id,
        )  # fmt: skip
        return pair

    return await c.authenticator.authenticate(username, password, client, start)


async def refresh(c: Container, token: str, client: ClientInfo) -> TokenPair:
    """Rotate a refresh token; one that does not verify counts against the address."""
    now = c.clock.now()
    try:
        claims = c.tokens.decode_refresh(token, now)
    except InvalidRefreshToken:
        await c.authenticator.count_ip_failure(client)
        raise
    return await sessions.refresh(
        c.sessionmaker, c.autocommit, c.tokens, c.settings, token, claims, client, now
    )


async def change_password(
    c: Container, principal: Principal, current: str, new: str, client: ClientInfo
) -> None:
    """Check the current password (a failure counts as a failed login), set the new one and
    revoke every other session."""

    async def apply(db: AsyncSession, user: User, now: datetime) -> None:
        await users.set_password(
            db, user, new_hash, now=now, keep_session=principal.session_id, client=client
        )

    # The new password is checked and hashed first: a rejected one costs no attempt, and
    # no hash runs while a transaction (on SQLite, the write lock) is open.
    new_hash = await users.hash_new_password(
        c.hasher, new, c.settings.min_password_length, principal.username
    )
    await c.authenticator.authenticate(principal.username, current, client, apply)


async def logout(db: AsyncSession, c: Container, principal: Principal, client: ClientInfo) -> None:
    """Revoke the caller's own session."""
    user = await _user(db, principal)
    await sessions.revoke_session(
        db, user, principal.session_id, c.clock.now(), client, reason="logout"
    )


async def _user(db: AsyncSession, principal: Principal) -> User:
    user = await users_repo.get(db, principal.user_id)
    if user is None:
        raise NotFound("No such user")
    return user


async def current_user(db: AsyncSession, principal: Principal) -> User:
    """The caller's user row."""
    return await _user(db, principal)
