"""The sessions table: one row per signed-in device."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class DeviceSession(Base):
    """A signed-in device and the state of its refresh-token chain (hashes only)."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user_id_revoked_at", "user_id", "revoked_at"),
        Index("ix_sessions_user_id_device_fingerprint", "user_id", "device_fingerprint"),
        # For pruning (conductor_api.retention): ended sessions by revocation or expiry.
        Index("ix_sessions_revoked_at", "revoked_at"),
        Index("ix_sessions_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    device_name: Mapped[str] = mapped_column(String(100))
    device_fingerprint: Mapped[str | None] = mapped_column(String(256))
    ip_address: Mapped[str] = mapped_column(String(45))
    user_agent: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Sliding: the current refresh token's expiry. Absolute: login + SESSION_MAX_DAYS.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    # SHA-256 of the current refresh token and of the one it replaced (for the grace window).
    refresh_token_hash: Mapped[str] = mapped_column(String(64))
    previous_token_hash: Mapped[str | None] = mapped_column(String(64))
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # The RFC 7638 thumbprint of the DPoP key the session is bound to (RFC 9449), or None.
    dpop_jkt: Mapped[str | None] = mapped_column(String(43))
    # The device token the sign-in presented (valid then), or None: the session's own
    # password and code checks count against it while it stays valid, not against the name.
    device_token_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
