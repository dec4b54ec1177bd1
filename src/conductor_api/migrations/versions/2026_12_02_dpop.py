"""DPoP: the session's key thumbprint, and the replay cache of proof jtis

Revision ID: 0007_dpop
Revises: 0009_expiry_indexes
Create Date: 2026-12-02 02:45:00

`dpop_proofs` is UNLOGGED on PostgreSQL: every DPoP request inserts a row that lives about
two minutes, and an unlogged table writes no WAL for it, which is most of an insert's cost.
What that gives up is acceptable here: after a crash of the database server the table is
empty, so a proof captured in the last minute or two before the crash could be replayed
once (it still needs the key's access token and expires within DPOP_MAX_SKEW_SECONDS); and
the table is not copied to streaming replicas, so after a failover the cache starts empty
in the same way. On SQLite the table stays empty: the cache is a file of its own.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_dpop"
down_revision: str | None = "0009_expiry_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dpop_jkt", sa.String(length=43), nullable=True))
    prefixes = ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []
    op.create_table(
        "dpop_proofs",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_dpop_proofs")),
        prefixes=prefixes,
    )
    op.create_index("ix_dpop_proofs_expires_at", "dpop_proofs", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dpop_proofs_expires_at", table_name="dpop_proofs")
    op.drop_table("dpop_proofs")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("dpop_jkt")
