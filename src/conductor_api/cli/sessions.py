"""`conductor-api sessions ...`: the operator's view of sessions."""

from __future__ import annotations

import uuid
from datetime import datetime

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.cli.common import CliError, UsageError, iso, run_db, shown
from conductor_api.security.passwords import PasswordHasher
from conductor_api.sessions import repository
from conductor_api.sessions.service import revoke_session
from conductor_api.users import service as users

app = typer.Typer(help="Inspect and revoke sessions.", no_args_is_help=True)


@app.command("list")
def list_sessions(username: str) -> None:
    """Every session of a user, newest first."""

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> list[str]:
        user = await users.require_user(db, username)
        lines = []
        for s in await repository.list_for_user(db, user.id):
            if s.revoked_at is not None:
                state = f"revoked {iso(s.revoked_at)} ({s.revoked_reason})"
            elif s.expires_at <= now:
                state = "expired"
            else:
                state = "active"
            lines.append(
                f"{s.id}\t{state}\t{shown(s.device_name)}\t{shown(s.ip_address)}\t"
                f"created {iso(s.created_at)}\tlast used {iso(s.last_used_at)}\t"
                + ("bound" if s.dpop_jkt is not None else "unbound")
            )
        return lines

    lines = run_db(go)
    typer.echo("\n".join(lines) if lines else "no sessions")


@app.command("revoke")
def revoke(session_id: str) -> None:
    """Revoke one session by id."""
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        raise UsageError(f"not a session id: {session_id!r}") from None

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str:
        session = await repository.get(db, sid)
        user = await users.get(db, session.user_id) if session else None
        if session is None or user is None:
            raise CliError(f"no session {sid}")
        if not await revoke_session(db, user, sid, now, None, reason="operator"):
            if session.revoked_at is None:
                return f"session {sid} had already expired"
            return f"session {sid} was already revoked"
        return f"session {sid} revoked"

    typer.echo(run_db(go))
