"""the longest access-token lifetime of the instances that may sign with a key

Revision ID: 0011_signing_key_lifetime
Revises: 0010_mfa_token_jkt
Create Date: 2026-12-05 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_signing_key_lifetime"
down_revision: str | None = "0010_mfa_token_jkt"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch_op:
        batch_op.add_column(sa.Column("access_ttl_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch_op:
        batch_op.drop_column("access_ttl_seconds")
