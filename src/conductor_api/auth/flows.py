"""What each auth endpoint does, between the HTTP layer and the repositories."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.principal import Principal
from conductor_api.auth.service import Device
from conductor_api.container import Container
from conductor_api.errors import InvalidDPoPProof, InvalidRefreshToken, NotFound
from conductor_api.security.dpop import DPoPError, Proof, WrongKey
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
    proof: Proof | DPoPError | None = None,
) -> TokenPair:
    """Check the password under the brute-force rules and start a device session (or, with
    a second factor on, a pending sign-in: `MfaRequired`), bound to the proof's key."""
    jkt = await sign_in_key(c, proof, client)
    device = Device(device_name, fingerprint)
    return await c.signin.login(username, password, device, client, device_token, jkt)


async def sign_in_key(
    c: Container, proof: Proof | DPoPError | None, client: ClientInfo
) -> str | None:
    """The DPoP key a sign-in binds its session to, or None for an unbound one.

    Checked before anything else of the sign-in: a faulty proof counts against the address
    only (not the username: whoever sends it need not know the password), and REQUIRE_DPOP
    refuses a sign-in without one."""
    if isinstance(proof, DPoPError):
        if not proof.nonce:
            await c.signin.count_address_failure(client)
        raise c.dpop.error(proof, c.clock.now().timestamp(), resource=False)
    if proof is None:
        if c.dpop.required:
            raise _unproven(c, None, c.clock.now().timestamp())
        return None
    return proof.jkt


async def refresh(
    c: Container, token: str, client: ClientInfo, proof: Proof | DPoPError | None = None
) -> TokenPair:
    """Rotate a refresh token; one that does not verify counts against the address. A bound
    session's token needs a proof by its key: without one nothing is spent, rotated or
    revoked, and the attempt is recorded (`dpop_proof_invalid`) for the user to see. A
    proof sent with an unbound session's token is ignored: the session stays unbound.
    Under REQUIRE_DPOP a refresh without a valid proof is refused for its proof, whatever
    its token (one that does not verify still counts against the address)."""
    now = c.clock.now()
    try:
        claims = c.tokens.decode_refresh(token, now)
    except InvalidRefreshToken:
        await c.signin.count_address_failure(client)
        if c.dpop.required and not isinstance(proof, Proof):
            raise _unproven(c, proof, now.timestamp()) from None
        raise
    if claims.jkt:
        if not isinstance(proof, Proof) or proof.jkt != claims.jkt:
            error = (
                proof if isinstance(proof, DPoPError)
                else WrongKey() if proof is not None
                else DPoPError("this session is bound to a key: a DPoP proof is required")
            )  # fmt: skip
            if not error.nonce:
                await sessions.record_invalid_proof(c.sessionmaker, claims, client, now)
            raise c.dpop.error(error, now.timestamp(), resource=False)
    elif c.dpop.required and not isinstance(proof, Proof):
        raise _unproven(c, proof, now.timestamp())
    return await sessions.refresh(
        c.sessionmaker, c.rotations, c.tokens, c.settings, token, claims, client, now
    )


def _unproven(c: Container, proof: DPoPError | None, now: float) -> InvalidDPoPProof:
    """REQUIRE_DPOP's answer to a sign-in or refresh without a valid proof."""
    if isinstance(proof, DPoPError):
        return c.dpop.error(proof, now, resource=False)
    return InvalidDPoPProof("A DPoP proof is required (REQUIRE_DPOP)")


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


async def live_caller(db: AsyncSession, c: Container, principal: Principal) -> User:
    """The caller's user row under the lock of password changes, with the caller's session
    read again under it: of two sessions that sign each other out at once (a password
    change, revoke-others, a revoke), the one that comes second finds its own session
    revoked and is refused as its next request would be, instead of acting after it."""
    user = await users.lock(db, principal.user_id)
    if user is None:
        raise NotFound("No such user")
    await sessions.require_live(db, principal.session_id, c.clock.now())
    return user
