"""keyed digests of the settings instances on one database must share, compared at start

Revision ID: 0015_setting_checks
Revises: 0014_kek_check
Create Date: 2026-12-06 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_setting_checks"
down_revision: str | None = "0014_kek_check"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled at the first start after this migration; a start with another value rewrites
    # that setting's row.
    op.create_table(
        "setting_checks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_setting_checks")),
    )


def downgrade() -> None:
    op.drop_table("setting_checks")
