"""Bodies of the events endpoint."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from conductor_api.events.models import EventType


class EventOut(BaseModel):
    """One security event."""

    id: uuid.UUID
    type: EventType
    created_at: datetime
    ip_address: str | None
    user_agent: str | None
    session_id: uuid.UUID | None
    method: str | None = Field(
        default=None, description="login_succeeded only: `password` or `passkey`"
    )
    mfa: bool | None = Field(
        default=None, description="login_succeeded only: whether a second factor was used"
    )
