"""The second factor's tables: TOTP factors, recovery codes and pending sign-ins."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class TotpFactor(Base):
    """A user's TOTP secret (encrypted under KEY_ENCRYPTION_KEY); on once confirmed."""

    __tablename__ = "totp_factors"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    # nonce || AES-GCM ciphertext || tag (`security.encryption`), bound to the user id.
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    confirmed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The 30-second step of the last code accepted: a code is good once, and never one of
    # an earlier step (RFC 6238 section 5.2).
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)


class RecoveryCode(Base):
    """One single-use recovery code, kept only as a keyed hash."""

    __tablename__ = "recovery_codes"
    __table_args__ = (Index("ix_recovery_codes_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MfaToken(Base):
    """A sign-in waiting for its second factor: what the login named, for the session."""

    __tablename__ = "mfa_tokens"
    __table_args__ = (
        Index("ix_mfa_tokens_user_id", "user_id"),
        Index("ix_mfa_tokens_expires_at", "expires_at"),  # for pruning
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    device_name: Mapped[str] = mapped_column(String(100))
    device_fingerprint: Mapped[str | None] = mapped_column(String(256))
    # The device token the login presented (valid then): the second step's wrong codes
    # count against it rather than against the username.
    device_token_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("device_tokens.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The thumbprint of the DPoP key whose proof the login carried: the second step needs a
    # proof by the same key, and the session is bound to it.
    dpop_jkt: Mapped[str | None] = mapped_column(String(43))
