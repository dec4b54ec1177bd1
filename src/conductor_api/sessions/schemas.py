"""Bodies of the session endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class SessionOut(BaseModel):
    """One signed-in device."""

    id: uuid.UUID
    device_name: str
    device_fingerprint: str | None
    ip_address: str
    user_agent: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    current: bool
    # Bound to a DPoP key (RFC 9449): its refresh needs a proof by that key.
    bound: bool


class RevokedOut(BaseModel):
    """How many sessions were revoked."""

    revoked: int
