"""The security_events table."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class EventType(StrEnum):
    """The event types of the contract."""

    LOGIN_SUCCEEDED = "login_succeeded"
    LOGIN_FAILED = "login_failed"
    ACCOUNT_LOCKED = "account_locked"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    SESSION_REVOKED = "session_revoked"
    PASSWORD_CHANGED = "password_changed"
    MFA_ENABLED = "mfa_enabled"
    MFA_DISABLED = "mfa_disabled"
    MFA_FAILED = "mfa_failed"
    RECOVERY_CODE_USED = "recovery_code_used"
    RECOVERY_CODES_REGENERATED = "recovery_codes_regenerated"
    DPOP_PROOF_INVALID = "dpop_proof_invalid"
    PASSKEY_ADDED = "passkey_added"
    PASSKEY_REMOVED = "passkey_removed"
    PASSKEY_CLONE_SUSPECTED = "passkey_clone_suspected"


class SecurityEvent(Base):
    """Something security-relevant that happened to an account (or to an unknown username)."""

    __tablename__ = "security_events"
    __table_args__ = (
        Index("ix_security_events_user_id_created_at", "user_id", "created_at"),
        # For pruning (conductor_api.retention); events of unknown names have no user_id.
        Index("ix_security_events_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    username_key: Mapped[str] = mapped_column(String(150))
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # login_succeeded only: how (`password` or `passkey`), and whether a second factor was used.
    method: Mapped[str | None] = mapped_column(String(16))
    mfa: Mapped[bool | None]
