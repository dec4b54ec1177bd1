"""The device_tokens table: one trusted device of one user, stored only as a hash."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class DeviceToken(Base):
    """A device token's digest, its owner and its lifetime."""

    __tablename__ = "device_tokens"
    __table_args__ = (
        Index("ix_device_tokens_user_id", "user_id"),
        # For pruning (`retention.rules`): revoked or expired long enough ago.
        Index("ix_device_tokens_revoked_at", "revoked_at"),
        Index("ix_device_tokens_expires_at", "expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # SHA-256 of the token: the token is 256 random bits, so a digest cannot be reversed.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Its failure counter and lock are a row of login_throttles (scope "device", keyed by
    # this id): the same counter, slots and lock as a username's (`auth.limits`).
