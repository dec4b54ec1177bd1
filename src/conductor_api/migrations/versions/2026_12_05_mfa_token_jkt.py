"""the DPoP key a pending sign-in began with

Revision ID: 0010_mfa_token_jkt
Revises: 0008_passkeys
Create Date: 2026-12-05 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_mfa_token_jkt"
down_revision: str | None = "0008_passkeys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mfa_tokens") as batch_op:
        batch_op.add_column(sa.Column("dpop_jkt", sa.String(length=43), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mfa_tokens") as batch_op:
        batch_op.drop_column("dpop_jkt")
