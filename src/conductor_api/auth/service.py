"""The sign-in service: drives a `SignIn` through its steps for each way of signing in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.auth import throttle
from conductor_api.auth.limits import AddressLimit, UsernameLimit
from conductor_api.auth.principal import Principal
from conductor_api.auth.signin import SignIn, Steps
from conductor_api.auth.turns import Turns
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.events.models import EventType
from conductor_api.security.passwords import PasswordHasher
from conductor_api.security.tokens import TokenService
from conductor_api.sessions import service as sessions
from conductor_api.users import service as users
from conductor_api.values import ClientInfo, TokenPair

# How long an attempt beyond a limit waits for a slot before it is refused.
WAIT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Device:
    """The device a sign-in starts a session for."""

    name: str
    fingerprint: str | None


class SignInService:
    """Signing in, and the other checks of a password under the same limits."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        sessionmaker: async_sessionmaker[AsyncSession],
        autocommit: async_sessionmaker[AsyncSession],
        hasher: PasswordHasher,
        tokens: TokenService,
    ) -> None:
        self.settings = settings
        self.steps = Steps(clock, sessionmaker, autocommit, hasher, Turns(WAIT_SECONDS))
        self.address = AddressLimit(settings, clock)
        self.username = UsernameLimit(settings, clock)
        self.tokens = tokens

    async def login(
        self, username: str, password: str, device: Device, client: ClientInfo
    ) -> TokenPair:
        """Sign a device in with a password: a session and its token pair."""
        async with SignIn(self.steps, username, client) as attempt:
            await attempt.limits(
                (self.address, client.ip_address),  # 1. the client address's limit
                (self.username, attempt.key),  # 2. the name's (later: or a device token's)
            )
            verified = await attempt.password(password)  # 3. the credential
            # 4. The second factor goes here, when the account has one (see `auth.signin`).
            async with attempt.finish(verified) as db:  # 5. the session and its token pair
                pair = await sessions.start_session(
                    db, self.tokens, self.settings, verified.user, device_name=device.name,
                    fingerprint=device.fingerprint, client=client, now=self.steps.clock.now(),
                )  # fmt: skip
                attempt.record(db, EventType.LOGIN_SUCCEEDED, verified.user, pair.session_id)
        return pair

    async def change_password(
        self, principal: Principal, current: str, new: str, client: ClientInfo
    ) -> None:
        """Check the current password under the same limits as a sign-in (a wrong one is a
        failed login), then set the new one and revoke every other session."""
        # A rejected new password costs no hash and counts nothing: refused first. A locked
        # name is refused next, before any hash (of the current password or the new one).
        users.check_new_password(new, self.settings.min_password_length, principal.username)
        async with SignIn(self.steps, principal.username, client) as attempt:
            await attempt.limits((self.address, client.ip_address), (self.username, attempt.key))
            verified = await attempt.password(current)
            # Hashed outside any transaction (on SQLite a transaction holds the write lock).
            new_hash = await self.steps.hasher.hash(new)
            async with attempt.finish(verified) as db:
                await users.set_password(
                    db, verified.user, new_hash, now=self.steps.clock.now(),
                    keep_session=principal.session_id, client=client,
                )  # fmt: skip

    async def count_refresh_failure(self, client: ClientInfo) -> None:
        """A refresh token that did not verify: counted against the address, and refused
        once the address is over its limit."""
        async with self.steps.sessionmaker.begin() as db:
            refusal = await self.address.count_failure(
                db, client.ip_address, self.steps.clock.now()
            )
        if refusal is not None:
            raise refusal


async def locked_names(db: AsyncSession, now: datetime) -> dict[str, datetime]:
    """Username keys locked at `now`, with the end of each lock (the operator's list)."""
    return await throttle.locks(db, now)


async def unlock(db: AsyncSession, username: str) -> bool:
    """Clear a name's lockout and count; whether there was a counter."""
    return await throttle.unlock_user(db, users.normalize_username(username))
