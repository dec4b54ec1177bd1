"""Queries on security events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.events.models import EventType, SecurityEvent
from conductor_api.logs import security_event

# Events an operator may want to be alerted on.
_WARNINGS = {
    EventType.LOGIN_FAILED,
    EventType.ACCOUNT_LOCKED,
    EventType.REFRESH_TOKEN_REUSED,
    EventType.MFA_FAILED,
    EventType.MFA_DISABLED,
    EventType.DPOP_PROOF_INVALID,
    EventType.PASSKEY_CLONE_SUSPECTED,
}


def record(
    db: AsyncSession,
    type_: EventType,
    *,
    now: datetime,
    username_key: str,
    user_id: uuid.UUID | None,
    ip_address: str | None = None,
    user_agent: str | None = None,
    session_id: uuid.UUID | None = None,
    method: str | None = None,
    mfa: bool | None = None,
) -> SecurityEvent:
    """Add an event to the current transaction, and log it."""
    event = SecurityEvent(
        id=uuid.uuid4(),
        user_id=user_id,
        username_key=username_key,
        type=type_.value,
        created_at=now,
        ip_address=ip_address,
        user_agent=user_agent,
        session_id=session_id,
        method=method,
        mfa=mfa,
    )
    db.add(event)
    # No username: people type their password into the username field often enough.
    security_event(
        type_.value, user_id=user_id, session_id=session_id, client=ip_address,
        level=logging.WARNING if type_ in _WARNINGS else logging.INFO,
    )  # fmt: skip
    return event


async def list_for_user(
    db: AsyncSession, user_id: uuid.UUID, limit: int
) -> Sequence[SecurityEvent]:
    """A user's own events, newest first."""
    rows = await db.scalars(
        select(SecurityEvent)
        .where(SecurityEvent.user_id == user_id)
        .order_by(SecurityEvent.created_at.desc(), SecurityEvent.id)
        .limit(limit)
    )
    return rows.all()
