"""`conductor-api passkeys ...`: the operator's view of a user's passkeys, and the way to
take one away (an account taken over may hold a passkey its owner never added)."""

from __future__ import annotations

import uuid
from datetime import datetime

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.cli.common import CliError, UsageError, iso, run_db, shown
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.passkeys.models import Passkey
from conductor_api.passkeys.repository import delete_for_user, list_for_user
from conductor_api.security.passwords import PasswordHasher
from conductor_api.users import service as users

app = typer.Typer(help="Inspect and remove passkeys.", no_args_is_help=True)


@app.command("list")
def list_passkeys(username: str) -> None:
    """Every passkey of a user, oldest first."""

    async def go(db: AsyncSession, _: PasswordHasher, _now: datetime) -> list[str]:
        user = await users.require_user(db, username)
        return [
            f"{p.id}\t{shown(p.name)}\tcreated {iso(p.created_at)}\tlast used {iso(p.last_used_at)}"
            for p in await list_for_user(db, user.id)
        ]

    lines = run_db(go)
    typer.echo("\n".join(lines) if lines else "no passkeys")


@app.command("remove")
def remove(passkey_id: str) -> None:
    """Remove one passkey by id: it signs in no more. Records `passkey_removed`."""
    try:
        pid = uuid.UUID(passkey_id)
    except ValueError:
        raise UsageError(f"not a passkey id: {passkey_id!r}") from None

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str:
        passkey = await db.get(Passkey, pid)
        user = await users.get(db, passkey.user_id) if passkey else None
        if passkey is None or user is None or not await delete_for_user(db, pid, user.id):
            raise CliError(f"no passkey {pid}")
        await events.record(
            db, EventType.PASSKEY_REMOVED, now=now, username_key=user.username_key,
            user_id=user.id,
        )  # fmt: skip
        return f"passkey {pid} of {shown(user.username)} removed"

    typer.echo(run_db(go))
