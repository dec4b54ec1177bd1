"""a value sealed under KEY_ENCRYPTION_KEY, which every instance opens at start

Revision ID: 0014_kek_check
Revises: 0013_skeleton_of_the_name
Create Date: 2026-12-06 10:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_kek_check"
down_revision: str | None = "0013_skeleton_of_the_name"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled at the first start after this migration, with that instance's key.
    op.create_table(
        "kek_checks",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kek_checks")),
    )


def downgrade() -> None:
    op.drop_table("kek_checks")
