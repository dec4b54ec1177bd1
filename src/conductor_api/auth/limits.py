"""The two limits a sign-in passes, each one counter: per client address, per username.

Both work the same way: a check takes a slot before it starts (refused if the counter is
locked, waits its turn if failures and checks in flight fill the limit), and when it ends
the slot becomes a failure, is given back by a success, or is simply released. So of any
number of simultaneous attempts, at most the limit reach the check, while right ones are
never refused for being many. A later device-token limit takes the username's place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Protocol, cast

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth import throttle
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.db import Executor, Writer
from conductor_api.errors import AccountLocked, AppError, TooManyAttempts

# Slots not given back within this time (the process died during the check) are dropped.
PENDING_TTL = timedelta(seconds=60)
# Retry-After of an attempt that waited its whole turn without getting a slot.
BUSY_RETRY_AFTER = 5
# How much later than this request another may have read the clock before it set a lock.
CLOCK_SLACK_SECONDS = 5


def seconds_until(moment: datetime, now: datetime) -> int:
    """Whole seconds from `now` to `moment`, at least 1 (for `Retry-After`)."""
    return max(1, math.ceil((moment - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class Slot:
    """One check in flight, held against one counter."""

    limit: Limit
    key: str
    # Failures settled before the slot was taken: those a success forgives.
    failures_before: int


class Limit(Protocol):
    """A counter that bounds how many checks run for one key."""

    @property
    def scope(self) -> str:
        """The counter's kind (`throttle.USER`, `throttle.IP`)."""

    async def take(self, db: Executor, key: str, now: datetime) -> Slot | AppError | None:
        """A slot, a refusal, or None when the key is full and the attempt should wait."""

    def claim(self, key: str) -> throttle.Claim:
        """What `take` asks of the counter, for a take sent with others
        (`throttle.take_in_order`)."""

    async def closed(self, db: Executor, key: str, now: datetime) -> Slot | AppError | None:
        """After a take found the key closed: the refusal, None to wait, or a slot when the
        counter went meanwhile (and was taken anew)."""

    def slot(self, key: str, taken: throttle.Counter) -> Slot:
        """The slot a take got, from the counter as it was before."""

    def busy(self) -> AppError:
        """The refusal of an attempt that waited its whole turn."""

    async def failed(self, db: Writer, slot: Slot, now: datetime) -> bool:
        """The check failed: count it; whether this locked the key."""

    def settlement(self, slot: Slot, *, succeeded: bool) -> throttle.Settlement:
        """How a check that did not fail gives `slot` back (`throttle.settle_in_order`):
        `succeeded`, forgiving what the limit forgives; else without counting anything
        (refused later, abandoned, or a second step follows)."""


@dataclass(frozen=True, slots=True)
class _Window:
    settings: Settings
    clock: Clock
    scope: ClassVar[str]

    @property
    def lockout(self) -> timedelta:
        """How long a lock lasts, and the per-address window."""
        return timedelta(minutes=self.settings.lockout_minutes)

    def retry_after(self, moment: datetime) -> int:
        """Seconds until `moment` from the clock as it reads now, not at the request's start.
        A lock or window set by a request that read the clock later (it held the row first)
        ends a moment past LOCKOUT_MINUTES from now: that is LOCKOUT_MINUTES. One that ends
        further off was set under a longer LOCKOUT_MINUTES, which it keeps: the truth."""
        lockout = math.ceil(self.lockout.total_seconds())
        seconds = seconds_until(moment, self.clock.now())
        return lockout if lockout < seconds <= lockout + CLOCK_SLACK_SECONDS else seconds

    @property
    def limit(self) -> int:
        """Failures and checks in flight allowed at once."""
        raise NotImplementedError

    @property
    def window(self) -> timedelta | None:
        """After how long failures start again (None: when a lock ends)."""
        raise NotImplementedError

    def refusal(self, counter: throttle.Counter) -> AppError | None:
        """The refusal for a counter that has no slot left, or None to wait for one."""
        raise NotImplementedError

    async def take(self, db: Executor, key: str, now: datetime) -> Slot | AppError | None:
        """A slot when failures and checks in flight leave one; else the refusal, or None
        to wait. The guarded upsert comes first: it is the one statement that takes the
        row's lock, so attempts get their slots in the order they arrive, and a key seen for
        the first time costs it alone."""
        taken = await self._take(db, key, now)
        return await self.closed(db, key, now) if taken is None else self.slot(key, taken)

    def claim(self, key: str) -> throttle.Claim:
        """This limit's take for `key`."""
        return throttle.Claim(self.scope, key, self.limit, self.window)

    async def closed(self, db: Executor, key: str, now: datetime) -> Slot | AppError | None:
        """The counter read after a take that got nothing: the refusal, or None to wait."""
        counter = await throttle.read(db, self.scope, key, now, window=self.window)
        if counter is not None:
            return self.refusal(counter)
        # No counter: it went (emptied) between the two statements; take it again.
        taken = await self._take(db, key, now)
        return None if taken is None else self.slot(key, taken)

    def slot(self, key: str, taken: throttle.Counter) -> Slot:
        """The slot a take got, from the counter as it was before."""
        return Slot(cast(Limit, self), key, taken.failures)

    async def _take(self, db: Executor, key: str, now: datetime) -> throttle.Counter | None:
        return await throttle.take(db, self.claim(key), now, ttl=PENDING_TTL)


class AddressLimit(_Window):
    """At most MAX_FAILED_LOGINS_PER_IP failures (in a window of LOCKOUT_MINUTES) and checks
    in flight per client address. Many people can share one address (a NAT): their right
    logins are never counted, and wait rather than fail while the address is busy."""

    scope: ClassVar[str] = throttle.IP

    @property
    def limit(self) -> int:
        """MAX_FAILED_LOGINS_PER_IP."""
        return self.settings.max_failed_logins_per_ip

    @property
    def window(self) -> timedelta | None:
        """Failures are counted in fixed windows of LOCKOUT_MINUTES."""
        return self.lockout

    def refusal(self, counter: throttle.Counter) -> AppError | None:
        """Refused while the address has failed too often; otherwise it waits."""
        if counter.failures >= self.limit:
            return TooManyAttempts(self.retry_after(counter.window_started_at + self.lockout))
        return None

    def busy(self) -> AppError:
        """Too many logins from this address are being checked at once."""
        return TooManyAttempts(BUSY_RETRY_AFTER)

    async def failed(self, db: Writer, slot: Slot, now: datetime) -> bool:
        """One more failure for the address; it is refused, not locked, at its limit."""
        await throttle.fail_ip(db, slot.key, now, window=self.lockout)
        return False

    def settlement(self, slot: Slot, *, succeeded: bool) -> throttle.Settlement:
        """Successes do not count against an address: either way, the slot goes back."""
        return throttle.Settlement(throttle.IP, slot.key)

    async def count_failure(self, db: AsyncSession, key: str, now: datetime) -> AppError | None:
        """A credential that did not verify outside a sign-in (a forged refresh token):
        counted, and refused once the address is over its limit."""
        counter = await throttle.add_failure(db, self.scope, key, now, window=self.lockout)
        if counter.failures > self.settings.max_failed_logins_per_ip:
            return TooManyAttempts(self.retry_after(counter.window_started_at + self.lockout))
        return None


class _AddressCount(_Window):
    """At most `maximum` requests of one kind per client address in a window of
    LOCKOUT_MINUTES (an address's login failures' window, so the pruner drops its idle
    counters alike). Refused ones count too."""

    message: ClassVar[str]

    @property
    def maximum(self) -> int:
        """Requests allowed in a window."""
        raise NotImplementedError

    async def count(self, db: AsyncSession, address: str, now: datetime) -> AppError | None:
        """Count a request; the refusal once the address is over its limit."""
        counter = await throttle.add_failure(db, self.scope, address, now, window=self.lockout)
        if counter.failures > self.maximum:
            return TooManyAttempts(
                self.retry_after(counter.window_started_at + self.lockout), self.message
            )
        return None


class RegistrationLimit(_AddressCount):
    """MAX_REGISTRATIONS_PER_IP registrations: each one costs an Argon2id hash."""

    scope: ClassVar[str] = throttle.REGISTER
    message: ClassVar[str] = "Too many registrations from this address; try again later"

    @property
    def maximum(self) -> int:
        """MAX_REGISTRATIONS_PER_IP."""
        return self.settings.max_registrations_per_ip


class PasskeyChallengeLimit(_AddressCount):
    """MAX_PASSKEY_CHALLENGES_PER_IP passkey ceremonies started (sign-ins, which need no
    token, and registrations): each one stores a challenge."""

    scope: ClassVar[str] = throttle.PASSKEY
    message: ClassVar[str] = "Too many passkey challenges from this address; try again later"

    @property
    def maximum(self) -> int:
        """MAX_PASSKEY_CHALLENGES_PER_IP."""
        return self.settings.max_passkey_challenges_per_ip


class UsernameLimit(_Window):
    """At most MAX_FAILED_LOGIN_ATTEMPTS failures and checks in flight per username key;
    the failure that reaches the limit locks the name for LOCKOUT_MINUTES. Known and
    unknown names are counted alike."""

    scope: ClassVar[str] = throttle.USER

    @property
    def limit(self) -> int:
        """MAX_FAILED_LOGIN_ATTEMPTS."""
        return self.settings.max_failed_login_attempts

    @property
    def window(self) -> timedelta | None:
        """Failures start again only when a lock ends."""
        return None

    def refusal(self, counter: throttle.Counter) -> AppError | None:
        """Refused while the name is locked; otherwise it waits."""
        if counter.locked_until is not None and counter.locked_until > self.clock.now():
            return AccountLocked(self.retry_after(counter.locked_until))
        return None

    def busy(self) -> AppError:
        """The name's slots stayed taken by checks in flight for the whole wait."""
        return AccountLocked(BUSY_RETRY_AFTER)

    async def failed(self, db: Writer, slot: Slot, now: datetime) -> bool:
        """One more failure for the name; whether it locked the name."""
        return await throttle.fail_user(
            db, slot.key, now, max_failures=self.settings.max_failed_login_attempts,
            lockout=self.lockout, scope=self.scope,
        )  # fmt: skip

    def settlement(self, slot: Slot, *, succeeded: bool) -> throttle.Settlement:
        """A right password forgives the failures settled before its slot; otherwise
        nothing is counted and the slot goes back."""
        if not succeeded:
            return throttle.Settlement(self.scope, slot.key)
        return throttle.Settlement(
            self.scope, slot.key, slot.failures_before, self.settings.max_failed_login_attempts
        )


class DeviceTokenLimit(UsernameLimit):
    """The alternative to the username's limit for a login that presents a valid device
    token of the user it names (trusted devices): the same rules on the token's own counter
    (keyed by the token's id), so that someone who locks the name does not lock out the
    owner's phone, and a stolen token without the password locks only itself."""

    scope: ClassVar[str] = throttle.DEVICE
