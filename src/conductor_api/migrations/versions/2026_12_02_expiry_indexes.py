"""indexes for pruning device tokens and pending second-factor sign-ins

Revision ID: 0009_expiry_indexes
Revises: 0006_devices_mfa
Create Date: 2026-12-02 02:50:00

Each index serves one condition of `conductor_api.retention.rules`, so that a prune batch of
device tokens or mfa tokens is an index range scan, never a scan of the table.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_expiry_indexes"
down_revision: str | None = "0006_devices_mfa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_device_tokens_revoked_at", ["revoked_at"], unique=False)
        batch_op.create_index("ix_device_tokens_expires_at", ["expires_at"], unique=False)
    with op.batch_alter_table("mfa_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_mfa_tokens_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mfa_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_mfa_tokens_expires_at")
    with op.batch_alter_table("device_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_device_tokens_expires_at")
        batch_op.drop_index("ix_device_tokens_revoked_at")
