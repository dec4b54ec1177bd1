"""Queries on security events."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Writer, insert_later, insert_row
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


class _TimeOrderedIds:
    """Event ids that sort in the order the events were recorded (UUID version 7, RFC 9562
    section 5.7: a millisecond timestamp, then a counter within the millisecond, then random
    bits), so that events of one instant, such as a failed login and the lock it caused,
    list newest first in a stable order. The ids stay opaque to clients."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._counter = 0

    def next(self) -> uuid.UUID:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms > self._ms:
                self._ms, self._counter = ms, 0
            else:
                # Same millisecond (or the clock stepped back): count on from the last id.
                self._counter += 1
                if self._counter > 0xFFF:
                    self._ms, self._counter = self._ms + 1, 0
            ms, counter = self._ms, self._counter
        rand = int.from_bytes(secrets.token_bytes(8)) & ((1 << 62) - 1)
        return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand)


new_event_id = _TimeOrderedIds().next


async def addresses_since(
    db: AsyncSession,
    type_: EventType,
    *,
    user_id: uuid.UUID,
    session_id: uuid.UUID | None,
    since: datetime,
    limit: int,
) -> list[str | None]:
    """The addresses of the events of this type recorded for the user's session at `since`
    or later, at most `limit` of them (the user's index finds them)."""
    e = SecurityEvent
    found = await db.scalars(
        select(e.ip_address)
        .where(
            e.user_id == user_id,
            e.created_at >= since,
            e.type == type_,
            e.session_id == session_id,
        )
        .limit(limit)
    )
    return list(found.all())


# Built once (`insert_row`): every sign-in records one or two events.
_INSERT = insert_row(SecurityEvent)


async def record(
    db: Writer,
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
) -> uuid.UUID:
    """Insert an event in the current transaction, and log it; its id."""
    event_id = new_event_id()
    await insert_later(
        db, _INSERT,
        {
            "id": event_id, "user_id": user_id, "username_key": username_key,
            "type": type_.value, "created_at": now, "ip_address": ip_address,
            "user_agent": user_agent, "session_id": session_id, "method": method, "mfa": mfa,
        },
    )  # fmt: skip
    # No username: people type their password into the username field often enough.
    security_event(
        type_.value, user_id=user_id, session_id=session_id, client=ip_address,
        level=logging.WARNING if type_ in _WARNINGS else logging.INFO,
    )  # fmt: skip
    return event_id


async def list_for_user(
    db: AsyncSession, user_id: uuid.UUID, limit: int
) -> Sequence[SecurityEvent]:
    """A user's own events, newest first."""
    rows = await db.scalars(
        select(SecurityEvent)
        .where(SecurityEvent.user_id == user_id)
        .order_by(SecurityEvent.created_at.desc(), SecurityEvent.id.desc())
        .limit(limit)
    )
    return rows.all()
