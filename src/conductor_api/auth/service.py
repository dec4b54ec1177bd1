"""The sign-in service: drives a `SignIn` through its steps for each way of signing in."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.auth import throttle
from conductor_api.auth.limits import (
    AddressLimit,
    DeviceTokenLimit,
    Limit,
    RegistrationLimit,
    UsernameLimit,
)
from conductor_api.auth.principal import Principal
from conductor_api.auth.signin import PasskeyOutcome, SignIn, Steps
from conductor_api.auth.turns import Turns
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.db import Autocommit, Writer
from conductor_api.devices import service as devices
from conductor_api.devices.service import TrustedDevice
from conductor_api.errors import InvalidPasskey, MfaRequired, NotFound
from conductor_api.events.models import EventType
from conductor_api.mfa.service import METHODS, PENDING_SECONDS, Owner, SecondFactor
from conductor_api.passkeys.service import Assertion, PasskeyService
from conductor_api.security.passwords import PasswordHasher
from conductor_api.security.tokens import TokenService
from conductor_api.sessions import service as sessions
from conductor_api.users import service as users
from conductor_api.users.models import User
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
        direct: Autocommit,
        hasher: PasswordHasher,
        tokens: TokenService,
        mfa: SecondFactor,
        passkeys: PasskeyService,
    ) -> None:
        self.settings = settings
        self.steps = Steps(clock, sessionmaker, direct, hasher, Turns(WAIT_SECONDS))
        self.address = AddressLimit(settings, clock)
        self.username = UsernameLimit(settings, clock)
        self.device = DeviceTokenLimit(settings, clock)
        self.registrations = RegistrationLimit(settings, clock)
        self.tokens = tokens
        self.mfa = mfa
        self.passkeys = passkeys

    def limits(
        self, attempt: SignIn, device_id: uuid.UUID | None = None
    ) -> tuple[tuple[Limit, str], tuple[Limit, str]]:
        """Steps 1 and 2: the client address's limit, then the name's, or instead the device
        token's when the attempt presented a valid one for its name."""
        second: tuple[Limit, str] = (
            (self.device, str(device_id)) if device_id is not None else (self.username, attempt.key)
        )
        return (self.address, attempt.client.limit_key), second

    async def own_limits(
        self, attempt: SignIn, principal: Principal
    ) -> tuple[tuple[Limit, str], tuple[Limit, str]]:
        """Steps 1 and 2 for a signed-in user's own password or code (behind her access
        token): as a sign-in's, with the device token her session's sign-in presented, while
        it stays valid, in place of the name. So a name locked by someone else does not stop
        her changing her password from the phone she signed in on with her device token."""
        async with self.steps.sessionmaker() as db:
            device_id = await devices.of_session(
                db, principal.session_id, principal.user_id, self.steps.clock.now()
            )
        return self.limits(attempt, device_id)

    async def start(
        self,
        db: Writer,
        attempt: SignIn,
        user: User,
        device: Device,
        presented: TrustedDevice | None = None,
        *,
        jkt: str | None = None,
        method: str = "password",
        mfa: bool = False,
        device_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
    ) -> TokenPair:
        """The end of every sign-in: the session (bound to the DPoP key `jkt` when the
        request that finishes the sign-in had a proof), its token pair and a device token;
        the event says how (`method`) and whether a second factor was used (`mfa`). The
        session remembers the device token the sign-in presented (`presented`, or by id
        only, `device_id`, when a second step finishes it). `session_id`: the new session's
        id, when a step before this one named it in an event."""
        now = self.steps.clock.now()
        pair = await sessions.start_session(
            db, self.tokens, self.settings, user, device_name=device.name,
            fingerprint=device.fingerprint, client=attempt.client, now=now, jkt=jkt,
            device_token_id=presented.id if presented is not None else device_id,
            session_id=session_id,
        )  # fmt: skip
        token = await devices.issue(
            db, user.id, now, days=self.settings.device_token_days, presented=presented
        )
        await attempt.record(
            db, EventType.LOGIN_SUCCEEDED, user, pair.session_id, method=method, mfa=mfa
        )
        return dataclasses.replace(pair, device_token=token)

    async def login(
        self,
        username: str,
        password: str,
        device: Device,
        client: ClientInfo,
        device_token: str | None = None,
        jkt: str | None = None,
    ) -> TokenPair:
        """Sign a device in with a password: a session and its token pair (bound to `jkt`),
        or, when the account has a second factor, a pending sign-in (`MfaRequired`)."""
        async with SignIn(self.steps, username, client) as attempt:
            trusted = await self._trusted(attempt, device_token)
            # 1. the client address's limit; 2. the name's, or the device token's instead
            await attempt.limits(*self.limits(attempt, trusted.id if trusted else None))
            verified = await attempt.password(password)  # 3. the credential
            async with attempt.finish_direct(verified, device.fingerprint) as db:
                user = verified.user
                if attempt.second_factor:
                    # 4. the second factor: a pending sign-in, finished by `SecondStep.verify`
                    # (the password's slots are given back, not settled as a success).
                    attempt.second_step_follows()
                    outcome: TokenPair | MfaRequired = MfaRequired(
                        mfa_token=await self.mfa.start_pending(
                            db, user.id, self.steps.clock.now(), device_name=device.name,
                            fingerprint=device.fingerprint,
                            device_token_id=trusted.id if trusted else None, jkt=jkt,
                        ),
                        methods=list(METHODS),
                        expires_in=PENDING_SECONDS,
                    )  # fmt: skip
                else:
                    outcome = await self.start(db, attempt, user, device, trusted, jkt=jkt)  # 5.
        # Raised after the commit: the pending sign-in must be stored to be finished.
        if isinstance(outcome, MfaRequired):
            raise outcome
        return outcome

    async def login_passkey(
        self,
        challenge_id: str,
        credential: dict[str, Any],
        device: Device,
        client: ClientInfo,
        device_token: str | None = None,
        jkt: str | None = None,
    ) -> TokenPair:
        """Sign a device in with a passkey: the same steps as a password, with the
        assertion as the credential. Only the address's limit applies before it (no name is
        known until the credential names one, and a passkey cannot be guessed); a passkey is
        possession and user verification at once, so it satisfies the second factor."""
        async with SignIn(self.steps, None, client) as attempt:
            await attempt.limits((self.address, client.limit_key))  # 1.
            assertion: Assertion | None = None

            async def check() -> PasskeyOutcome:
                nonlocal assertion
                outcome, assertion = await self.passkeys.check_assertion(
                    challenge_id, credential, client
                )
                return outcome

            verified = await attempt.passkey(check)  # 3. the credential
            assert assertion is not None
            user = verified.user
            async with self.steps.sessionmaker() as db:
                trusted = await devices.find(db, device_token, user.id, self.steps.clock.now())
            try:
                async with attempt.finish_direct(verified, device.fingerprint) as tx:
                    await self.passkeys.used(tx, assertion)
                    return await self.start(
                        tx, attempt, user, device, trusted, jkt=jkt, method="passkey", mfa=True
                    )  # 5.
            except InvalidPasskey:
                # Overtaken by a sign-in with the same counter: failed like any other.
                also = self.passkeys.overtaken(assertion, user, client)
                await attempt.reject(user, InvalidPasskey(), also=also)

    async def _trusted(self, attempt: SignIn, token: str | None) -> TrustedDevice | None:
        """The device token if it is valid for the user the attempt names."""
        if not token:
            return None
        async with self.steps.sessionmaker() as db:
            user = await users.find(db, attempt.key)
            return await devices.find(db, token, user.id if user else None, self.steps.clock.now())

    async def check_password(self, principal: Principal, password: str, client: ClientInfo) -> None:
        """A signed-in user's password, under the same limits as a sign-in (a wrong one is a
        failed login); what it guards happens afterwards."""
        async with SignIn(
            self.steps, principal.username, client, session_id=principal.session_id
        ) as attempt:
            await attempt.limits(*await self.own_limits(attempt, principal))
            verified = await attempt.password(password)
            async with attempt.finish_direct(verified):
                pass

    async def change_password(
        self,
        principal: Principal,
        current: str,
        new: str,
        client: ClientInfo,
        code: str | None = None,
    ) -> None:
        """Check the current password under the same limits as a sign-in (a wrong one is a
        failed login) and, with TOTP on, a code; then set the new password and revoke every
        other session and the device tokens."""
        async with self.steps.sessionmaker() as db:
            totp_on = await self.mfa.is_on(db, principal.user_id)
        if totp_on and code is None:
            raise MfaRequired("With two-step sign-in on, a password change needs a code")
        # A rejected new password costs no hash and counts nothing: refused first. A locked
        # name is refused next, before any hash (of the current password or the new one).
        users.check_new_password(new, self.settings.min_password_length, principal.username)
        async with SignIn(
            self.steps, principal.username, client, session_id=principal.session_id
        ) as attempt:
            await attempt.limits(*await self.own_limits(attempt, principal))
            verified = await attempt.password(current)
            if totp_on:
                assert code is not None
                owner = owner_of(principal, client)

                async def right(db: AsyncSession) -> bool:
                    now = self.steps.clock.now()
                    return await self.mfa.check(db, owner, now, either=code) is not None

                await attempt.code(verified.user, right)
            # Hashed outside any transaction (on SQLite a transaction holds the write lock).
            new_hash = await self.steps.hasher.hash(new)
            async with attempt.finish(verified, exclusive=True) as db:
                # Under the user row's lock: a session that another one signed out while
                # this change was checked changes nothing (see `flows.live_caller`).
                await sessions.require_live(db, principal.session_id, self.steps.clock.now())
                await users.set_password(
                    db, verified.user, new_hash, now=self.steps.clock.now(),
                    keep_session=principal.session_id, client=client,
                )  # fmt: skip

    async def register(
        self, db: AsyncSession, username: str, password: str, client: ClientInfo
    ) -> User:
        """Create an account, when registration is on (else `NotFound`), and at most
        MAX_REGISTRATIONS_PER_IP per address in a window."""
        if not self.settings.allow_registration:
            raise NotFound()
        # Counted in its own transaction, first: refused ones count too, and cost no hash.
        async with self.steps.sessionmaker.begin() as counting:
            refusal = await self.registrations.count(
                counting, client.limit_key, self.steps.clock.now()
            )
        if refusal is not None:
            raise refusal
        return await users.create_user(
            db, self.steps.hasher, username=username, password=password,
            min_password_length=self.settings.min_password_length, now=self.steps.clock.now(),
        )  # fmt: skip

    async def count_address_failure(self, client: ClientInfo) -> None:
        """A credential that did not verify (a refresh token, a sign-in's DPoP proof):
        counted against the address, and refused once the address is over its limit."""
        async with self.steps.sessionmaker.begin() as db:
            refusal = await self.address.count_failure(db, client.limit_key, self.steps.clock.now())
        if refusal is not None:
            raise refusal


async def locked_names(db: AsyncSession, now: datetime) -> dict[str, datetime]:
    """Username keys locked at `now`, with the end of each lock (the operator's list)."""
    return await throttle.locks(db, now)


async def unlock(db: AsyncSession, username: str) -> bool:
    """Clear a name's lockout and count, and the lockouts of the user's device tokens (a
    phone that guessed wrong five times); whether there was anything to clear."""
    key = users.normalize_username(username)
    user = await users.find(db, key)
    tokens = await devices.ids_of(db, user.id) if user is not None else []
    return await throttle.unlock_user(db, key, [str(token) for token in tokens])


def owner_of(principal: Principal, client: ClientInfo) -> Owner:
    """The caller as the second factor's services see them."""
    return Owner(
        user_id=principal.user_id,
        username=principal.username,
        username_key=users.normalize_username(principal.username),
        client=client,
        session_id=principal.session_id,
    )
