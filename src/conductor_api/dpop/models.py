"""The dpop_proofs table: proof `jti`s seen within their acceptance window (PostgreSQL).

On SQLite the cache lives in a file of its own instead (see `conductor_api.dpop.replay`);
the table still exists there, empty, so that both databases have one schema.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class SeenProof(Base):
    """One accepted proof: SHA-256 of its key's thumbprint and jti, until it ages out.
    UNLOGGED on PostgreSQL (see the migration 0007_dpop)."""

    __tablename__ = "dpop_proofs"
    __table_args__ = (
        # For pruning (conductor_api.retention).
        Index("ix_dpop_proofs_expires_at", "expires_at"),
    )

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
