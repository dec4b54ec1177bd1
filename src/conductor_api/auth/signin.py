"""One sign-in attempt as explicit steps, each deciding, recording and counting alike.

The service drives an attempt top to bottom (see `SignInService.login` and
`SignInService.login_passkey`, which has only the address's limit before its credential):

1. `limits((address, ...), ...)`: the client address's limit;
2. `limits(..., (username, ...))`: the username's limit (a device-token limit will be its
   alternative);
3. `password(...)` or `passkey(...)`: the credential;
4. the second factor, when the account has one: it goes between the credential and
   `finish`, and settles a wrong code with `reject` exactly like a wrong password;
5. `finish_direct(verified)`: the transaction that starts the session and its token pair,
   straight on the driver's connection, for the flows whose statements all go through
   `execute_direct` (every sign-in: password, passkey, second step); `finish` in an ORM
   session for the other checks under the same limits (a password change, a code that
   confirms or disables TOTP or renews the recovery codes).

Every slot taken in steps 1 and 2 is settled once: as a failure by `reject`, as a success
by `finish`, or released uncounted when the attempt ends any other way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import NoReturn, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.auth import throttle
from conductor_api.auth.limits import PENDING_TTL, Limit, Slot
from conductor_api.auth.turns import Turns
from conductor_api.clock import Clock
from conductor_api.db import Autocommit, Writer
from conductor_api.errors import AccountDisabled, AppError, InvalidCredentials, InvalidMfaCode
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.security.passwords import PasswordHasher
from conductor_api.users import service as users
from conductor_api.users.models import User
from conductor_api.values import ClientInfo

log = logging.getLogger("conductor_api")

# The transaction of a step 5: a session's, or a direct one (`SignIn.finish_direct`).
W = TypeVar("W", bound=Writer)


@dataclass(frozen=True, slots=True)
class Verified:
    """A credential that verified, and the user row as it was when it was checked."""

    user: User
    password_hash: str
    password_changed_at: datetime
    # A fresh Argon2id hash when the stored one is outdated (bcrypt, weaker parameters).
    new_hash: str | None
    # A passkey does not depend on the password: a password changed meanwhile stands.
    by_password: bool = True

    @classmethod
    def of(cls, user: User) -> Verified:
        """A user whose credential was checked earlier (a pending sign-in's password, or a
        bearer token): `finish` still refuses it if the password changed since."""
        return cls(user, user.password_hash, user.password_changed_at, None)

    @classmethod
    def by_passkey(cls, user: User) -> Verified:
        """A user whose passkey verified."""
        return cls(user, user.password_hash, user.password_changed_at, None, by_password=False)

    def still_holds(self, current: User) -> bool:
        """Whether `current` (the row read again at session start) still has the password
        that was checked. A rehash by a concurrent sign-in changes the hash but not the
        time of the last password change; any password change changes both."""
        if not self.by_password or current.password_hash == self.password_hash:
            return True
        return self.new_hash is not None and current.password_changed_at == (
            self.password_changed_at
        )


@dataclass(frozen=True, slots=True)
class PasskeyOutcome:
    """What a passkey check found: the user its credential names (if any), and the error
    when it did not verify (`InvalidPasskey`), with what to record beside the failure."""

    user: User | None
    error: AppError | None = None
    also: Callable[[AsyncSession], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class Steps:
    """What every attempt of one application shares."""

    clock: Clock
    sessionmaker: async_sessionmaker[AsyncSession]
    # Statements that commit by themselves, with no session (the counters' slots, and the
    # first read of the user).
    direct: Autocommit
    hasher: PasswordHasher
    turns: Turns


class SignIn:
    """One attempt: the slots it holds, and the steps that take and settle them."""

    def __init__(
        self,
        steps: Steps,
        username: str | None,
        client: ClientInfo,
        *,
        session_id: uuid.UUID | None = None,
    ) -> None:
        self._s = steps
        # None for a passkey sign-in, until its credential names the user (`passkey`).
        self.key = users.normalize_username(username) if username is not None else ""
        self.client = client
        # The caller's session, for a signed-in user's own check (password change, TOTP):
        # its events name it.
        self.session_id = session_id
        self._held: list[Slot] = []
        self._settled: list[Slot] = []
        # Set by `second_step_follows`: `finish` then gives the slots back uncounted.
        self._unfinished = False
        # Set by `finish`, read with the user row: whether the sign-in needs a second factor.
        self.second_factor = False
        # The user named, when `limits` read it (a 1-tuple: the user may be None).
        self._user: tuple[User | None] | None = None

    async def __aenter__(self) -> SignIn:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        # Refused, failed or cancelled before a settlement committed: nothing is counted.
        if self._held:
            async with self._direct() as db:
                await self._settle(db, succeeded=False)
            self._committed()
        for slot in self._settled:
            self._s.turns.next(slot.limit.scope, slot.key)

    async def limits(self, *steps: tuple[Limit, str]) -> None:
        """Steps 1 and 2: take a slot of each limit for its key, in order.

        Each is tried at once, in the order the attempts arrived; a limit that is full is
        then waited for (bounded) with the slots before it kept; a refusal (locked,
        blocked, or a wait that ran out) gives back what this attempt holds and is raised."""
        now = self._s.clock.now()
        # The takes commit on their own (each is atomic by itself), on PostgreSQL as one
        # statement (each taken only if the one before was) that also reads the user's row
        # for `password`: a row that every attempt from one address needs is then never
        # locked across a round trip.
        taken, row = await throttle.take_in_order(
            self._s.direct, [limit.claim(key) for limit, key in steps], now, ttl=PENDING_TTL,
            also=users.find_with(self.key) if self.key else None,
        )  # fmt: skip
        # `taken`: the counters of the first steps, up to the first whose key was closed.
        for (limit, key), counter in zip(steps, taken, strict=False):
            self._held.append(limit.slot(key, counter))
        if row is not None:
            self._user = (users.found(row),)
        refusal: AppError | None = None
        left = list(steps[len(taken) :])
        closed = True
        while left and refusal is None:
            # The first left found its key closed: its counter says why (or it went).
            limit, key = left[0]
            next_ = limit.closed if closed else limit.take
            outcome = await next_(self._s.direct, key, self._s.clock.now())
            closed = False
            if outcome is None:
                break
            if isinstance(outcome, AppError):
                refusal = outcome
            else:
                self._held.append(outcome)
                left.pop(0)
        for limit, key in left if refusal is None else []:
            refusal = await self._wait_for(limit, key)
            if refusal is not None:
                break
        if refusal is not None:
            raise refusal

    async def _wait_for(self, limit: Limit, key: str) -> AppError | None:
        async def attempt() -> Slot | AppError | None:
            return await limit.take(self._s.direct, key, self._s.clock.now())

        outcome: Slot | AppError | None = await self._s.turns.until(limit.scope, key, attempt)
        if isinstance(outcome, Slot):
            self._held.append(outcome)
            return None
        # The next waiter learns of a lock at once, not at its next poll.
        self._s.turns.next(limit.scope, key)
        return outcome if outcome is not None else limit.busy()

    async def password(self, password: str) -> Verified:
        """Step 3: the password, verified off the event loop and outside any transaction."""
        # Read with the slots (`limits`) when they were all taken at once.
        (user,) = self._user or (await users.find(self._s.direct, self.key),)
        if user is None:
            # A dummy hash, so that an unknown name takes as long as a wrong password.
            await self._s.hasher.verify_dummy(password)
            await self.reject(None)
        valid, new_hash = await self._s.hasher.verify(password, user.password_hash)
        if not valid:
            await self.reject(user)
        return Verified(user, user.password_hash, user.password_changed_at, new_hash)

    async def passkey(self, check: Callable[[], Awaitable[PasskeyOutcome]]) -> Verified:
        """Step 3 for a passkey: `check` verifies the assertion (and spends its challenge).
        A failure is settled like a wrong password, with `invalid_passkey`; `also` of the
        outcome runs in that transaction (a suspected clone is recorded there)."""
        outcome = await check()
        if outcome.user is not None:
            self.key = outcome.user.username_key
        if outcome.error is not None or outcome.user is None:
            await self.reject(outcome.user, outcome.error, also=outcome.also)
        return Verified.by_passkey(outcome.user)

    async def code(
        self,
        user: User,
        check: Callable[[AsyncSession], Awaitable[bool]],
        on_wrong: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> None:
        """Step 4: a second-factor code, checked (and spent, when right) by `check` in its
        own transaction. A wrong one is settled like a wrong password (every slot a
        failure) but answers `InvalidMfaCode` and records `mfa_failed`; `on_wrong` runs in
        that same transaction (a pending sign-in counts its wrong codes)."""
        async with self._s.sessionmaker.begin() as db:
            right = await check(db)
        if not right:
            await self.reject(user, InvalidMfaCode(), EventType.MFA_FAILED, on_wrong)

    async def reject(
        self,
        user: User | None,
        error: AppError | None = None,
        event: EventType = EventType.LOGIN_FAILED,
        also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> NoReturn:
        """A credential (or factor) that did not verify: every slot becomes a failure, the
        event is recorded, in one transaction; then `error` (`InvalidCredentials`)."""
        if also is None:
            async with self._direct() as db:
                await self._fail(db, user, event)
        else:
            async with self._s.sessionmaker.begin() as session:
                await self._fail(session, user, event)
                await also(session)
        self._committed()
        raise error or InvalidCredentials()

    def finish(
        self, verified: Verified, *, exclusive: bool = False
    ) -> AbstractAsyncContextManager[AsyncSession]:
        """Step 5 in an ORM session (`_finish`), for the flows whose step 5 needs the ORM;
        `exclusive` for one that changes the password (the user row's exclusive lock from
        the start: two changes that each held the shared one would wait for each other)."""
        return self._finish(verified, self._s.sessionmaker.begin, exclusive=exclusive)

    def finish_direct(
        self, verified: Verified, device: str | None = None
    ) -> AbstractAsyncContextManager[Writer]:
        """Step 5 (`_finish`) in `_direct`'s transaction, for a flow that sends every
        statement of it with `execute_direct`; `device`, the fingerprint of a sign-in that
        starts a session for one."""
        return self._finish(verified, self._direct, device)

    def _direct(self) -> AbstractAsyncContextManager[Writer]:
        """A transaction for statements sent with `execute_direct` only, with no ORM
        session (`Autocommit.transaction`): on SQLite on the connection of the attempt's
        single statements, on PostgreSQL on a connection of their pool."""
        return self._s.direct.transaction()

    @asynccontextmanager
    async def _finish(
        self,
        verified: Verified,
        begin: Callable[[], AbstractAsyncContextManager[W]],
        device: str | None = None,
        *,
        exclusive: bool = False,
    ) -> AsyncIterator[W]:
        """Step 5: the transaction that acts on the sign-in (starts the session).

        The user row is read again under a shared row lock, one that a password change or a
        disable waits for and makes wait: a password changed or an account disabled while
        this attempt was checked ends as a wrong password or a disabled account, never in a
        live session. Sign-ins of one user share the lock, so they never queue on it."""
        refusal: AppError | None = None
        async with begin() as db:
            held = await users.hold(db, verified.user.id, device, exclusive=exclusive)
            current, self.second_factor = held if held is not None else (None, False)
            if current is None or not verified.still_holds(current):
                await self._fail(db, current)
                refusal = InvalidCredentials()
            else:
                if not current.is_active:
                    refusal = AccountDisabled()
                else:
                    yield db
                # The slots last, just before the commit: the address's row is one that
                # every attempt from that address needs.
                await self._settle(db, succeeded=not self._unfinished)
        self._committed()
        if refusal is not None:
            raise refusal
        if verified.new_hash is not None:
            # After the commit, in a transaction of its own: an UPDATE of the user row under
            # the shared lock would wait for every other sign-in of the user holding it.
            # Best effort: the sign-in has happened, and the next one will try again.
            try:
                async with self._s.sessionmaker.begin() as db:
                    await users.upgrade_hash(
                        db, verified.user.id, verified.password_hash, verified.new_hash
                    )
            except SQLAlchemyError as error:
                log.warning("password hash upgrade failed: %s", type(error).__name__)

    async def _settle(self, db: Writer, *, succeeded: bool) -> None:
        """Give back the slots held, in the order they were taken, as a check that did not
        fail: `succeeded`, or uncounted."""
        await throttle.settle_in_order(
            db, [slot.limit.settlement(slot, succeeded=succeeded) for slot in self._held]
        )

    def second_step_follows(self) -> None:
        """Called inside `finish` when the credential was right but the sign-in waits for a
        second factor: the slots go back without forgiving the failures before them, so
        that a known password cannot wipe out the wrong codes (only the second step's
        success, as a sign-in's, does)."""
        self._unfinished = True

    async def record(
        self,
        db: Writer,
        type_: EventType,
        user: User | None,
        session_id: uuid.UUID | None = None,
        *,
        method: str | None = None,
        mfa: bool | None = None,
    ) -> None:
        """Record an event of this attempt (its name, user, client and the session it is
        for: `session_id`, or the caller's)."""
        await events.record(
            db, type_, now=self._s.clock.now(), username_key=self.key,
            user_id=user.id if user else None, ip_address=self.client.ip_address,
            user_agent=self.client.user_agent, session_id=session_id or self.session_id,
            method=method, mfa=mfa,
        )  # fmt: skip

    async def _fail(
        self, db: Writer, user: User | None, event: EventType = EventType.LOGIN_FAILED
    ) -> None:
        now = self._s.clock.now()
        locked = False
        for slot in self._held:
            locked = await slot.limit.failed(db, slot, now) or locked
        await self.record(db, event, user)
        if locked:
            await self.record(db, EventType.ACCOUNT_LOCKED, user)

    def _committed(self) -> None:
        self._settled.extend(self._held)
        self._held.clear()
