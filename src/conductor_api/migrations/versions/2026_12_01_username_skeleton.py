"""username skeleton: no new name may look like an existing one (UTS #39)

Revision ID: 0003_username_skeleton
Revises: 0005_retention_indexes
Create Date: 2026-12-01 23:40:00.000000
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from conductor_api.users.confusables import skeleton

revision: str = "0003_username_skeleton"
down_revision: str | None = "0005_retention_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("username_skeleton", sa.String(length=64), nullable=True))
    users = sa.table(
        "users",
        sa.column("id", sa.Uuid()),
        sa.column("username_key", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("username_skeleton", sa.String()),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(users.c.id, users.c.username_key).order_by(users.c.created_at, users.c.id)
    ).all()
    seen: set[str] = set()
    for user_id, key in rows:
        # The digest of this revision: of the case-folded key (0013 made it the name's).
        digest = hashlib.sha256(skeleton(key).encode("utf-8", "surrogatepass")).hexdigest()
        # Existing look-alikes stay (the oldest keeps the skeleton); only new ones are refused.
        if digest in seen:
            continue
        seen.add(digest)
        connection.execute(
            sa.update(users).where(users.c.id == user_id).values(username_skeleton=digest)
        )
    op.create_index(op.f("ix_users_username_skeleton"), "users", ["username_skeleton"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_users_username_skeleton"), table_name="users")
    op.drop_column("users", "username_skeleton")
