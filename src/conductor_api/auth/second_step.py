"""The second factor under the sign-in's steps: finishing a pending sign-in with a code
(`POST /auth/mfa/verify`), and the codes a signed-in user gives (confirm, disable, new
recovery codes). Each is a `SignIn`: the address's limit, the name's (or the device
token's), the code as the credential, then `finish`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.principal import Principal
from conductor_api.auth.service import Device, SignInService, owner_of
from conductor_api.auth.signin import SignIn, Verified
from conductor_api.devices import service as devices
from conductor_api.errors import InvalidDPoPProof, InvalidMfaToken, NotFound
from conductor_api.mfa.service import Owner
from conductor_api.users import service as users
from conductor_api.users.models import User
from conductor_api.values import ClientInfo, TokenPair

T = TypeVar("T")


class SecondStep:
    """The steps of the second factor, on the sign-in service's limits."""

    def __init__(self, signin: SignInService) -> None:
        self.signin = signin
        self.steps = signin.steps
        self.mfa = signin.mfa

    async def verify(
        self,
        mfa_token: str,
        client: ClientInfo,
        *,
        code: str | None = None,
        recovery_code: str | None = None,
        jkt: str | None = None,
    ) -> TokenPair:
        """A TOTP or recovery code for a pending sign-in: the session, its token pair and a
        device token, for the device its login named. Wrong codes count against the name,
        or against the device token when the login presented one. A login that carried a
        DPoP proof is finished only with a proof by the same key (`jkt`), and its session
        is bound to it; one without, with the key of this step's proof, if any."""
        s = self.signin.settings
        async with self.steps.sessionmaker() as db:
            now = self.steps.clock.now()
            pending = await self.mfa.find_pending(
                db, mfa_token, now, max_failures=s.max_failed_login_attempts
            )
            user = await users.get(db, pending.user_id) if pending else None
            device_id = (
                await devices.live_id(db, pending.device_token_id, user.id, now)
                if pending is not None and user is not None
                else None
            )
        if pending is None or user is None:
            # A credential that did not verify: charged to the address, like a forged
            # refresh token (and refused once the address is over its limit).
            async with self.steps.sessionmaker.begin() as db:
                refusal = await self.signin.address.count_failure(
                    db, client.limit_key, self.steps.clock.now()
                )
            raise refusal or InvalidMfaToken()
        if pending.jkt is not None and jkt != pending.jkt:
            # The login carried a DPoP proof: only a proof by the same key finishes the
            # sign-in (its session is bound to that key), so the mfa_token is worth nothing
            # without it. Nothing is spent; counted against the address, as a faulty proof.
            await self.signin.count_address_failure(client)
            raise InvalidDPoPProof("A DPoP proof by the key the sign-in began with is required")

        async with SignIn(self.steps, user.username, client) as attempt:
            await attempt.limits(*self.signin.limits(attempt, device_id))
            # The session's id, chosen now: a recovery code spent below names it in its event.
            session_id = uuid.uuid4()
            owner = Owner(user.id, user.username, user.username_key, client, session_id)
            live = True

            async def right(db: AsyncSession) -> bool:
                nonlocal live
                # Read again under a row lock: of two attempts on one mfa_token, the second
                # waits here and finds it spent.
                now = self.steps.clock.now()
                live = await self.mfa.lock_pending(
                    db, pending, now, max_failures=s.max_failed_login_attempts
                )
                if not live:
                    return True  # not a wrong code: answered below, nothing counted
                used = await self.mfa.check(db, owner, now, totp=code, recovery=recovery_code)
                if used is not None:
                    await self.mfa.spend_pending(db, pending, now)
                return used is not None

            async def count(db: AsyncSession) -> None:
                await self.mfa.fail_pending(db, pending)

            await attempt.code(user, right, count)
            if not live:
                raise InvalidMfaToken()
            device = Device(pending.device_name, pending.device_fingerprint)
            async with attempt.finish_direct(Verified.of(user), device.fingerprint) as tx:
                if not await self.mfa.still_pending(tx, pending):
                    raise InvalidMfaToken()
                return await self.signin.start(
                    tx, attempt, user, device, jkt=jkt, mfa=True, device_id=device_id,
                    session_id=session_id,
                )  # fmt: skip

    async def with_code(
        self,
        principal: Principal,
        client: ClientInfo,
        check: Callable[[AsyncSession, Owner], Awaitable[bool]],
        then: Callable[[AsyncSession, Owner], Awaitable[T]],
        *,
        password: str | None = None,
    ) -> T:
        """A signed-in user's code (confirm, disable, new recovery codes) under the same
        limits as a sign-in: `check` decides and spends it, `then` acts once it was right.
        With `password`, the password is checked first in the same attempt, so that a right
        one forgives nothing unless the code is right too."""
        owner = owner_of(principal, client)
        async with SignIn(
            self.steps, principal.username, client, session_id=principal.session_id
        ) as attempt:
            await attempt.limits(*await self.signin.own_limits(attempt, principal))
            verified = (
                await attempt.password(password)
                if password is not None
                else Verified.of(await self._user(principal))
            )
            await attempt.code(verified.user, lambda db: check(db, owner))
            async with attempt.finish(verified) as db:
                return await then(db, owner)

    async def _user(self, principal: Principal) -> User:
        async with self.steps.sessionmaker() as db:
            user = await users.get(db, principal.user_id)
        if user is None:
            raise NotFound("No such user")
        return user
