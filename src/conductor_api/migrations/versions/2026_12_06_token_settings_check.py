"""a keyed digest of the token settings, which every start compares and records

Revision ID: 0015_token_settings_check
Revises: 0014_kek_check
Create Date: 2026-12-06 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_token_settings_check"
down_revision: str | None = "0014_kek_check"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled at the first start after this migration, and rewritten by every start.
    op.create_table(
        "token_settings_checks",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_settings_checks")),
    )


def downgrade() -> None:
    op.drop_table("token_settings_checks")
