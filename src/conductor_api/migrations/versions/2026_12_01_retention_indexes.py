"""indexes for pruning expired rows

Revision ID: 0005_retention_indexes
Revises: 0001
Create Date: 2026-12-01 23:30:00

Each index serves one condition of `conductor_api.retention.rules`, so that a prune batch is
an index range scan that stops after `PRUNE_BATCH_SIZE` rows, never a scan of the table.
The per-request queries were already served (primary keys, sessions by user, events by user
and time). `sessions.expires_at` changes on every refresh, so indexing it costs the refresh
UPDATE an index entry (and PostgreSQL's HOT update); the alternative, finding expired
sessions without it, is a scan of every session on each prune.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_retention_indexes"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.create_index("ix_security_events_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_revoked_at", ["revoked_at"], unique=False)
        batch_op.create_index("ix_sessions_expires_at", ["expires_at"], unique=False)
    with op.batch_alter_table("login_throttles", schema=None) as batch_op:
        batch_op.create_index(
            "ix_login_throttles_window_started_at", ["window_started_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("login_throttles", schema=None) as batch_op:
        batch_op.drop_index("ix_login_throttles_window_started_at")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_expires_at")
        batch_op.drop_index("ix_sessions_revoked_at")
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.drop_index("ix_security_events_created_at")
