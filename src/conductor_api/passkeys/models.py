"""The passkeys and webauthn_challenges tables."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class Passkey(Base):
    """A user's WebAuthn credential: its id, public key (COSE) and signature counter."""

    __tablename__ = "passkeys"
    __table_args__ = (Index("ix_passkeys_user_id", "user_id"),)

    # Opaque, what the API shows; never the credential id.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger)
    # Comma-separated AuthenticatorTransport values ("internal,hybrid").
    transports: Mapped[str] = mapped_column(String(200))
    backup_eligible: Mapped[bool]
    backup_state: Mapped[bool]
    aaguid: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebAuthnChallenge(Base):
    """One ceremony's challenge: random, single use, short-lived, in the database so that
    every worker and instance can check it."""

    __tablename__ = "webauthn_challenges"
    __table_args__ = (
        # For pruning (conductor_api.retention).
        Index("ix_webauthn_challenges_expires_at", "expires_at"),
        Index("ix_webauthn_challenges_spent_at", "spent_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    challenge: Mapped[bytes] = mapped_column(LargeBinary)
    # "registration" or "authentication".
    purpose: Mapped[str] = mapped_column(String(16))
    # The user who asked (registration); NULL for a sign-in, whose user is not known yet.
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
