"""the device token a session's sign-in presented

Revision ID: 0012_session_device_token
Revises: 0011_signing_key_lifetime
Create Date: 2026-12-06 00:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_session_device_token"
down_revision: str | None = "0011_signing_key_lifetime"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No foreign key: the id is only ever read joined to a live device token, and a key
    # would cost every sign-in's insert a lookup (and SQLite a copy of the table here).
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.add_column(sa.Column("device_token_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.drop_column("device_token_id")
