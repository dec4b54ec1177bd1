"""Checking a password under the brute-force rules, and what a right one leads to."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.auth import throttle
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.errors import (
    AccountDisabled,
    AccountLocked,
    AppError,
    InvalidCredentials,
    TooManyAttempts,
)
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.security.passwords import PasswordHasher
from conductor_api.users import repository as users
from conductor_api.users.models import User
from conductor_api.users.service import normalize_username
from conductor_api.values import ClientInfo

T = TypeVar("T")


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `moment`, at least 1 (for `Retry-After`)."""
    return max(1, math.ceil((moment - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Everything a credential check needs."""

    settings: Settings
    clock: Clock
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher

    @property
    def lockout(self) -> timedelta:
        """How long a lock lasts, and the per-address window."""
        return timedelta(minutes=self.settings.lockout_minutes)

    def _retry_after(self, moment: datetime) -> int:
        """Seconds until `moment` from the clock as it reads now, not at the request's start:
        the lock or window may have been set by a request that read the clock later (it held
        the row first), and Retry-After must never exceed LOCKOUT_MINUTES."""
        lockout = math.ceil(self.lockout.total_seconds())
        return min(seconds_until(moment, self.clock.now()), lockout)

    async def count_ip_failure(self, client: ClientInfo) -> None:
        """A credential that did not verify outside a login (a forged refresh token):
        counted against the address, and refused once the address is over its limit."""
        now = self.clock.now()
        async with self.sessionmaker.begin() as db:
            counter = await throttle.add_ip_failure(db, client.ip_address, now, window=self.lockout)
        if counter.failures > self.settings.max_failed_logins_per_ip:
            raise TooManyAttempts(self._retry_after(counter.window_started_at + self.lockout))

    async def authenticate(
        self,
        username: str,
        password: str,
        client: ClientInfo,
        on_success: Callable[[AsyncSession, User, datetime], Awaitable[T]],
    ) -> T:
        """Reserve an attempt, verify the password off the event loop, then either reset
        the count and run `on_success` in the same transaction, or keep the failure."""
        settings = self.settings
        key = normalize_username(username)
        now = self.clock.now()
        refused: AppError | None = None
        user: User | None = None
        reserved = 0
        async with self.sessionmaker.begin() as db:
            ip = await throttle.ip_failures(db, client.ip_address, now, window=self.lockout)
            if ip is not None and ip.failures >= settings.max_failed_logins_per_ip:
                refused = TooManyAttempts(self._retry_after(ip.window_started_at + self.lockout))
            else:
                counter = await throttle.reserve_user(
                    db, key, now, max_failures=settings.max_failed_login_attempts,
                    lockout=self.lockout,
                )  # fmt: skip
                reserved = counter.failures
                user = await users.get_by_key(db, key)
                if counter.locked_until is not None:
                    # A locked name is not a credential check: the address is not charged.
                    if counter.locked_until == now + self.lockout:
                        self._record(db, EventType.ACCOUNT_LOCKED, key, user, client, now)
                    refused = AccountLocked(self._retry_after(counter.locked_until))
        if refused is not None:
            raise refused

        if user is None:
            await self.hasher.verify_dummy(password)
            valid, new_hash = False, None
        else:
            valid, new_hash = await self.hasher.verify(password, user.password_hash)

        now = self.clock.now()
        async with self.sessionmaker.begin() as db:
            if not valid:
                counter_after = await throttle.fail_user(
                    db, key, now, max_failures=settings.max_failed_login_attempts,
                    lockout=self.lockout,
                )  # fmt: skip
                await throttle.add_ip_failure(db, client.ip_address, now, window=self.lockout)
                self._record(db, EventType.LOGIN_FAILED, key, user, client, now)
                if counter_after is not None and counter_after.locked_until == now + self.lockout:
                    self._record(db, EventType.ACCOUNT_LOCKED, key, user, client, now)
            else:
                assert user is not None
                await throttle.reset_user(
                    db, key, reserved, max_failures=settings.max_failed_login_attempts
                )
                if new_hash is not None:
                    # An old bcrypt (or weaker Argon2) hash is replaced at the first login.
                    await users.set_password_hash(db, user.id, new_hash)
                    user.password_hash = new_hash
                if user.is_active:
                    result = await on_success(db, user, now)
        if not valid:
            raise InvalidCredentials()
        assert user is not None
        if not user.is_active:
            raise AccountDisabled()
        return result

    @staticmethod
    def _record(
        db: AsyncSession,
        type_: EventType,
        key: str,
        user: User | None,
        client: ClientInfo,
        now: datetime,
    ) -> None:
        events.record(
            db, type_, now=now, username_key=key, user_id=user.id if user else None,
            ip_address=client.ip_address, user_agent=client.user_agent,
        )  # fmt: skip
