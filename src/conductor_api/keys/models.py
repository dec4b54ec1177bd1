"""The signing_keys table: one row per access-token signing key, whatever its state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime

NEXT, CURRENT, PREVIOUS, RETIRED, REVOKED = "next", "current", "previous", "retired", "revoked"
STATES = (NEXT, CURRENT, PREVIOUS, RETIRED, REVOKED)
# States whose public key is published and whose tokens verify.
PUBLISHED = (NEXT, CURRENT, PREVIOUS)
_ONE_EACH = text("state IN ('current', 'next')")


class SigningKey(Base):
    """A key pair; the private half is AES-GCM encrypted and wiped once the key is retired
    or revoked, since no token may ever be signed with it again."""

    __tablename__ = "signing_keys"
    # At most one `current` and one `next` key, whatever instances race to rotate: the
    # database refuses the second, not a lock that a crashed process might still hold.
    __table_args__ = (
        Index(
            "uq_signing_keys_state_live", "state", unique=True,
            sqlite_where=_ONE_EACH, postgresql_where=_ONE_EACH,
        ),
    )  # fmt: skip

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(Text)  # PEM, SubjectPublicKeyInfo
    private_key: Mapped[bytes | None] = mapped_column(LargeBinary)  # nonce + AES-GCM sealed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # An instance signs with a `next` key from this moment on (publish-before-sign).
    sign_after: Mapped[datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The longest access-token lifetime (ACCESS_TOKEN_EXPIRE_MINUTES) of any instance that
    # may sign with the key: it stays published that long after it stops signing, whatever
    # the instance that retires it is configured with.
    access_ttl_seconds: Mapped[int | None] = mapped_column(Integer)


class KekCheck(Base):
    """A value sealed under KEY_ENCRYPTION_KEY by the first instance that started on this
    database (one row, id 1): every instance opens it at start before it seals or opens
    anything else, so that one with another key stops there, in one line, rather than seal
    TOTP secrets that no other instance can open."""

    __tablename__ = "kek_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SettingCheck(Base):
    """A keyed digest of one setting that instances on one database must share (their
    tokens, nonces and proofs cross between them), as the last start that changed it
    recorded it: a start that finds another digest names the setting in its log and
    records its own."""

    __tablename__ = "setting_checks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GeneratedSecret(Base):
    """A JWT secret the first instance on this database generated for itself (its data
    directory's secrets file), sealed under KEY_ENCRYPTION_KEY: an instance that generated
    its own takes this one instead, so that instances sharing the database and the key
    accept each other's tokens without the secrets being set on each."""

    __tablename__ = "generated_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
