"""Starting sessions, rotating refresh tokens with reuse detection, revoking sessions."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.config import Settings
from conductor_api.db import Writer
from conductor_api.errors import InvalidRefreshToken, InvalidToken, NotFound, RefreshTokenReused
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.security.tokens import Claims, TokenService, digests_equal, token_digest
from conductor_api.sessions import repository
from conductor_api.sessions.models import DeviceSession
from conductor_api.sessions.rotation import Rotations, Swap
from conductor_api.users.models import User
from conductor_api.values import ClientInfo, TokenPair, limit_key


def _pair(
    tokens: TokenService,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    refresh: str,
    refresh_expires_at: int,
    session_expires_at: int,
    now: datetime,
    jkt: str | None = None,
) -> TokenPair:
    """Both lifetimes are counted from the whole second the tokens' `iat` holds, so a fresh
    pair reports exactly ACCESS_TOKEN_EXPIRE_MINUTES and REFRESH_TOKEN_EXPIRE_DAYS; the
    access token never outlives the session's absolute end."""
    issued_at = int(now.timestamp())
    return TokenPair(
        access_token=tokens.issue_access(
            user_id, session_id, now, not_after=session_expires_at, jkt=jkt
        ),
        refresh_token=refresh,
        expires_in=max(0, tokens.access_expiry(now, session_expires_at) - issued_at),
        refresh_expires_in=max(0, refresh_expires_at - issued_at),
        session_id=session_id,
        bound=bool(jkt),
    )


def _started_after(settings: Settings, now: datetime) -> datetime:
    """Sessions that began at or before this have lived SESSION_MAX_DAYS: a session's end is
    fixed at its login, and this holds the older ones to the setting as it is now, when an
    operator has lowered it since."""
    return now - timedelta(days=settings.session_max_days)


def session_end(settings: Settings, session: DeviceSession) -> datetime:
    """When a session's refresh token stops working: its own expiry, or SESSION_MAX_DAYS
    after its login as the setting is now, whichever comes first."""
    return min(session.expires_at, session.created_at + timedelta(days=settings.session_max_days))


def _refresh_expiry(settings: Settings, issued_at: int, session_expires_at: int) -> int:
    """Sliding (REFRESH_TOKEN_EXPIRE_DAYS after issue) but never past the session's end."""
    sliding = issued_at + settings.refresh_token_expire_days * 86400
    return min(sliding, session_expires_at)


async def start_session(
    db: Writer,
    tokens: TokenService,
    settings: Settings,
    user: User,
    *,
    device_name: str,
    fingerprint: str | None,
    client: ClientInfo,
    now: datetime,
    jkt: str | None = None,
    device_token_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
) -> TokenPair:
    """A new session for a device (with the id `session_id`, when given); the same
    fingerprint's earlier session is revoked. With `jkt` (a DPoP key's thumbprint) the
    session and its tokens are bound to that key; with `device_token_id`, it remembers the
    device token its sign-in presented."""
    if fingerprint is not None:
        await revoke_many(db, user, now, client, reason="replaced", fingerprint=fingerprint)
    session_id = session_id or uuid.uuid4()
    issued_at = int(now.timestamp())
    absolute = now + timedelta(days=settings.session_max_days)
    expires = _refresh_expiry(settings, issued_at, int(absolute.timestamp()))
    refresh = tokens.issue_refresh(
        user.id, session_id, secrets.token_urlsafe(18), issued_at, expires,
        int(absolute.timestamp()), jkt,
    )  # fmt: skip
    await repository.add(
        db,
        {
            "id": session_id, "user_id": user.id, "device_name": device_name,
            "device_fingerprint": fingerprint, "ip_address": client.ip_address,
            "user_agent": client.user_agent, "created_at": now, "last_used_at": now,
            "expires_at": datetime.fromtimestamp(expires, now.tzinfo),
            "absolute_expires_at": absolute, "revoked_at": None, "revoked_reason": None,
            "refresh_token_hash": token_digest(refresh), "previous_token_hash": None,
            "rotated_at": None, "generation": 0, "dpop_jkt": jkt,
            "device_token_id": device_token_id,
        },
    )  # fmt: skip
    return _pair(tokens, user.id, session_id, refresh, expires, int(absolute.timestamp()), now, jkt)


def _child(
    tokens: TokenService, settings: Settings, claims: Claims, rotated_at: datetime
) -> tuple[str, int]:
    """The token that replaces the parent described by `claims` when rotated at
    `rotated_at`, and its expiry: the same inputs give the same token. The token holds
    whole seconds (`iat`); the session keeps the exact rotation time for the grace window."""
    issued_at = int(rotated_at.timestamp())
    expires = _refresh_expiry(settings, issued_at, claims.session_expires_at)
    child = tokens.issue_refresh(
        claims.user_id, claims.session_id, tokens.child_jti(claims.jti), issued_at, expires,
        claims.session_expires_at, claims.jkt or None,
    )  # fmt: skip
    return child, expires


async def refresh(
    sessionmaker: async_sessionmaker[AsyncSession],
    rotations: Rotations,
    tokens: TokenService,
    settings: Settings,
    token: str,
    claims: Claims,
    client: ClientInfo,
    now: datetime,
) -> TokenPair:
    """Rotate a verified refresh token.

    The child token is derived from the parent (its jti) and the rotation time, so every
    request that presents the parent inside the grace window gets the very same child, and
    whichever copy the client keeps works. A spent token outside the window revokes the
    session: only a genuine token, already verified here, can prove theft.

    The usual case is one compare-and-swap (`rotation`: an UPDATE atomic on its own, so
    sent without a transaction around it); the grace window, reuse and refusals take the
    slower path that reads the session under a lock.
    """
    presented = token_digest(token)
    # The exact time, not cut to whole seconds: the grace window is measured from it.
    rotated_at = now
    child, expires = _child(tokens, settings, claims, rotated_at)
    expires_at = datetime.fromtimestamp(expires, now.tzinfo)
    # The digests are compared by the database: they are SHA-256 of random tokens, so
    # timing reveals nothing about a token that the digest itself would not.
    swap = Swap(
        claims.session_id, claims.user_id, presented, token_digest(child), rotated_at, expires_at,
        _started_after(settings, now),
    )  # fmt: skip
    if await rotations.swap(swap):
        return _pair(
            tokens, claims.user_id, claims.session_id, child, expires,
            claims.session_expires_at, now, claims.jkt or None,
        )  # fmt: skip
    return await _refresh_not_current(
        sessionmaker, tokens, settings, presented, claims, client, now
    )


async def _refresh_not_current(
    sessionmaker: async_sessionmaker[AsyncSession],
    tokens: TokenService,
    settings: Settings,
    presented: str,
    claims: Claims,
    client: ClientInfo,
    now: datetime,
) -> TokenPair:
    """The presented token is not the current one: the grace window, theft, or refusal."""
    grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
    async with sessionmaker.begin() as db:
        session = await repository.get(db, claims.session_id, lock=True)
        user = await repository.owner(db, claims.user_id) if session is not None else None
        if (
            session is None
            or user is None
            or session.user_id != user.id
            or session.revoked_at is not None
            or not user.is_active
            or now >= session.absolute_expires_at
            or session.created_at <= _started_after(settings, now)
        ):
            raise InvalidRefreshToken()
        if digests_equal(presented, session.refresh_token_hash):
            # Still current, so the swap above cannot have missed it for a live session.
            raise InvalidRefreshToken()
        if (
            digests_equal(presented, session.previous_token_hash)
            and session.rotated_at is not None
            and now - session.rotated_at <= grace
        ):
            child, child_expires = _child(tokens, settings, claims, session.rotated_at)
            if not digests_equal(token_digest(child), session.refresh_token_hash):
                raise InvalidRefreshToken()
            session.last_used_at = now
            pair = _pair(
                tokens, user.id, session.id, child, child_expires,
                int(session.absolute_expires_at.timestamp()), now, claims.jkt or None,
            )  # fmt: skip
            return replace(pair, grace=True)
        # The cause first, then what it did: newest first lists the revocation on top.
        await events.record(
            db, EventType.REFRESH_TOKEN_REUSED, now=now, username_key=user.username_key,
            user_id=user.id, ip_address=client.ip_address, user_agent=client.user_agent,
            session_id=session.id,
        )  # fmt: skip
        await revoke_session(db, user, session.id, now, client, reason="refresh_token_reused")
    raise RefreshTokenReused()


# How often one session's refused proofs from one client are recorded, at most; and how
# many, from every client together, in that interval.
INVALID_PROOF_EVENT_INTERVAL = timedelta(minutes=1)
INVALID_PROOF_EVENTS_PER_INTERVAL = 10


async def record_invalid_proof(
    sessionmaker: async_sessionmaker[AsyncSession],
    claims: Claims,
    client: ClientInfo,
    now: datetime,
) -> None:
    """A bound session's refresh token presented without a valid proof by its key: perhaps
    a copied token, so the user sees it (`dpop_proof_invalid`, with the address). Once a
    minute per session and client (an IPv6 client is its /64, as for the limits), and at
    most INVALID_PROOF_EVENTS_PER_INTERVAL a minute per session: a copy used in a loop,
    from one address or many, must not push the user's other events out of sight."""
    async with sessionmaker.begin() as db:
        user = await repository.owner(db, claims.user_id)
        if user is None:
            return
        recent = await events.addresses_since(
            db, EventType.DPOP_PROOF_INVALID, user_id=user.id, session_id=claims.session_id,
            since=now - INVALID_PROOF_EVENT_INTERVAL, limit=INVALID_PROOF_EVENTS_PER_INTERVAL,
        )  # fmt: skip
        if len(recent) >= INVALID_PROOF_EVENTS_PER_INTERVAL or client.limit_key in {
            limit_key(address or "") for address in recent
        }:
            return
        await events.record(
            db, EventType.DPOP_PROOF_INVALID, now=now, username_key=user.username_key,
            user_id=user.id, ip_address=client.ip_address, user_agent=client.user_agent,
            session_id=claims.session_id,
        )  # fmt: skip


async def active_counts(db: AsyncSession, now: datetime) -> dict[uuid.UUID, int]:
    """The number of live sessions of every user that has one (the operator's list)."""
    return await repository.count_active(db, now)


async def revoke_session(
    db: AsyncSession,
    user: User,
    session_id: uuid.UUID,
    now: datetime,
    client: ClientInfo | None,
    *,
    reason: str,
) -> bool:
    """Revoke one session and record it; whether it was live."""
    if not await repository.revoke(db, session_id, now, reason):
        return False
    await events.record(
        db, EventType.SESSION_REVOKED, now=now, username_key=user.username_key, user_id=user.id,
        ip_address=client.ip_address if client else None,
        user_agent=client.user_agent if client else None, session_id=session_id,
    )  # fmt: skip
    return True


async def revoke_users_session(
    db: AsyncSession, user: User, session_id: uuid.UUID, now: datetime, client: ClientInfo
) -> None:
    """Revoke one of the user's own live sessions; `NotFound` for anything else (an expired
    one included: it has ended, and the session list no longer shows it)."""
    session = await repository.get(db, session_id)
    if session is None or session.user_id != user.id or not _is_live(session, now):
        raise NotFound("No such session")
    await revoke_session(db, user, session_id, now, client, reason="revoked")


async def require_live(db: AsyncSession, session_id: uuid.UUID, now: datetime) -> None:
    """The caller's session read afresh, within the caller's transaction: `InvalidToken`
    (as its next request would get) when another request revoked it meanwhile."""
    session = await repository.get(db, session_id)
    if session is None or not _is_live(session, now):
        raise InvalidToken("This session was signed out")


def _is_live(session: DeviceSession, now: datetime) -> bool:
    """Neither revoked nor expired: what the session list shows."""
    return session.revoked_at is None and session.expires_at > now


async def revoke_many(
    db: Writer,
    user: User,
    now: datetime,
    client: ClientInfo | None,
    *,
    reason: str,
    except_id: uuid.UUID | None = None,
    fingerprint: str | None = None,
) -> list[uuid.UUID]:
    """Revoke a user's live sessions (all but `except_id`, or one device's), recording each."""
    revoked = await repository.revoke_for_user(
        db, user.id, now, reason, except_id=except_id, fingerprint=fingerprint
    )
    for sid in revoked:
        await events.record(
            db, EventType.SESSION_REVOKED, now=now, username_key=user.username_key,
            user_id=user.id, ip_address=client.ip_address if client else None,
            user_agent=client.user_agent if client else None, session_id=sid,
        )  # fmt: skip
    return revoked
