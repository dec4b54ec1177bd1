"""signing keys

Revision ID: 0004_signing_keys
Revises: 0003_username_skeleton
Create Date: 2026-12-01 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_signing_keys"
down_revision: str | None = "0003_username_skeleton"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ONE_EACH = sa.text("state IN ('current', 'next')")


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("private_key", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sign_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    # At most one current and one next key: concurrent rotations cannot make two.
    op.create_index(
        "uq_signing_keys_state_live", "signing_keys", ["state"], unique=True,
        sqlite_where=_ONE_EACH, postgresql_where=_ONE_EACH,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("uq_signing_keys_state_live", table_name="signing_keys")
    op.drop_table("signing_keys")
