"""What each second-factor endpoint does: passwords and codes through the sign-in's steps
(`auth.service`, `auth.second_step`), then the factor's rules (`mfa.service`)."""

from __future__ import annotations

import dataclasses

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.principal import Principal
from conductor_api.auth.service import owner_of
from conductor_api.container import Container
from conductor_api.errors import MfaAlreadyEnabled
from conductor_api.mfa.service import Owner, Status
from conductor_api.values import ClientInfo, TokenPair


async def status(c: Container, principal: Principal) -> Status:
    """`GET /auth/mfa`."""
    async with c.sessionmaker() as db:
        status = await c.mfa.status(db, principal.user_id)
        passkeys = await c.passkeys.count(db, principal.user_id)
    return dataclasses.replace(status, passkeys=passkeys)


async def setup(
    c: Container, principal: Principal, password: str, client: ClientInfo
) -> tuple[str, str]:
    """A new TOTP secret and its otpauth URI, not yet on."""
    async with c.sessionmaker() as db:
        # Refused before the password check: "already on" costs no attempt.
        if await c.mfa.is_on(db, principal.user_id):
            raise MfaAlreadyEnabled()
    await c.signin.check_password(principal, password, client)
    async with c.sessionmaker.begin() as db:
        return await c.mfa.begin_setup(db, owner_of(principal, client), c.clock.now())


async def confirm(c: Container, principal: Principal, code: str, client: ClientInfo) -> list[str]:
    """Turn TOTP on with a code of the new secret; the first recovery codes."""
    async with c.sessionmaker() as db:
        await c.mfa.require_pending_setup(db, principal.user_id)

    async def right(db: AsyncSession, _: Owner) -> bool:
        return await c.mfa.check_confirmation(db, principal.user_id, code, c.clock.now())

    async def enable(db: AsyncSession, owner: Owner) -> list[str]:
        return await c.mfa.enabled(db, owner, c.clock.now())

    return await c.second_step.with_code(principal, client, right, enable)


async def disable(
    c: Container, principal: Principal, password: str, code: str, client: ClientInfo
) -> None:
    """Turn TOTP off: the password, then a code (TOTP or recovery)."""
    async with c.sessionmaker() as db:
        await c.mfa.require_on(db, principal.user_id)

    async def right(db: AsyncSession, owner: Owner) -> bool:
        return await c.mfa.check(db, owner, c.clock.now(), either=code) is not None

    async def off(db: AsyncSession, owner: Owner) -> None:
        await c.mfa.turn_off(db, owner, c.clock.now())

    await c.second_step.with_code(principal, client, right, off, password=password)


async def regenerate(
    c: Container, principal: Principal, code: str, client: ClientInfo
) -> list[str]:
    """Ten new recovery codes for a code (TOTP or recovery); the old ones are void."""
    async with c.sessionmaker() as db:
        await c.mfa.require_on(db, principal.user_id)

    async def right(db: AsyncSession, owner: Owner) -> bool:
        return await c.mfa.check(db, owner, c.clock.now(), either=code) is not None

    async def renew(db: AsyncSession, owner: Owner) -> list[str]:
        return await c.mfa.regenerated(db, owner, c.clock.now())

    return await c.second_step.with_code(principal, client, right, renew)


async def verify(
    c: Container,
    mfa_token: str,
    client: ClientInfo,
    *,
    code: str | None = None,
    recovery_code: str | None = None,
    jkt: str | None = None,
) -> TokenPair:
    """The second step of a sign-in (its session bound to the DPoP key `jkt`, if any)."""
    return await c.second_step.verify(
        mfa_token, client, code=code, recovery_code=recovery_code, jkt=jkt
    )
