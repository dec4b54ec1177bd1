"""username skeleton of the name as typed, not of its case-folded key (I and l, 0 and O)

Revision ID: 0013_skeleton_of_the_name
Revises: 0012_session_device_token
Create Date: 2026-12-06 08:00:00
"""

import hashlib
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from conductor_api.users.confusables import skeleton

revision: str = "0013_skeleton_of_the_name"
down_revision: str | None = "0012_session_device_token"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USERS = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("username", sa.String()),
    sa.column("username_key", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("username_skeleton", sa.String()),
)
# Rows written per statement (executemany), so that a million users is minutes at most.
_BATCH = 5000


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _of_name(name: str, _key: str) -> str:
    """This revision's digest (`confusables.skeleton_digest` as of it)."""
    return _digest(skeleton(skeleton(name).casefold()))


def _of_key(_name: str, key: str) -> str:
    """The digest before it (0003): of the case-folded key."""
    return _digest(skeleton(key))


def _recompute(digest: Callable[[str, str], str]) -> None:
    """Every user's digest afresh, oldest first: a younger look-alike of an older name keeps
    its account, with no digest (only new names are refused)."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_USERS.c.id, _USERS.c.username, _USERS.c.username_key).order_by(
            _USERS.c.created_at, _USERS.c.id
        )
    ).all()
    # Cleared first: the unique index would refuse a digest another row still holds.
    connection.execute(sa.update(_USERS).values(username_skeleton=None))
    seen: set[str] = set()
    values = []
    for user_id, name, key in rows:
        value = digest(name, key)
        if value not in seen:
            seen.add(value)
            values.append({"user_id": user_id, "digest": value})
    statement = (
        sa.update(_USERS)
        .where(_USERS.c.id == sa.bindparam("user_id"))
        .values(username_skeleton=sa.bindparam("digest"))
    )
    for start in range(0, len(values), _BATCH):
        connection.execute(statement, values[start : start + _BATCH])


def upgrade() -> None:
    _recompute(_of_name)


def downgrade() -> None:
    _recompute(_of_key)
