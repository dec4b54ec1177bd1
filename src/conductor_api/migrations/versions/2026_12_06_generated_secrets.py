"""the JWT secrets an instance generated, sealed under KEY_ENCRYPTION_KEY, for the others

Revision ID: 0016_generated_secrets
Revises: 0015_setting_checks
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_generated_secrets"
down_revision: str | None = "0015_setting_checks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Filled by the first start that generated its JWT secrets; later ones take them.
    op.create_table(
        "generated_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_generated_secrets")),
    )


def downgrade() -> None:
    op.drop_table("generated_secrets")
