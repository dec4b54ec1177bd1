"""The login_throttles table: failure counters per username and per client address."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from conductor_api.db import Base, UTCDateTime


class LoginThrottle(Base):
    """Failures and in-flight reservations for one username key or one client address."""

    __tablename__ = "login_throttles"
    # For pruning (conductor_api.retention): counters idle past their window.
    __table_args__ = (Index("ix_login_throttles_window_started_at", "window_started_at"),)

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # "user" or "ip"
    key: Mapped[str] = mapped_column(String(150), primary_key=True)
    # Settled failures: checks that found a wrong password.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Checks in flight, each holding a slot; all of them are stale after `pending_until`
    # (a process killed during a check cannot give its slots back).
    pending: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    pending_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
