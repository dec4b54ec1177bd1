"""`conductor-api users ...`: the operator's account commands."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth import service as auth
from conductor_api.cli.common import CliError, UsageError, iso, run_db, settings
from conductor_api.mfa.service import SecondFactor
from conductor_api.passkeys.repository import counts as passkey_counts
from conductor_api.security.passwords import PasswordHasher
from conductor_api.sessions import service as sessions_service
from conductor_api.users import service as users

app = typer.Typer(help="Manage users.", no_args_is_help=True)

PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from one line of stdin.")
]


def _read_password(from_stdin: bool) -> str:
    # Without a password to read the command cannot run as given: usage errors (status 2).
    if sys.stdin is None:  # started with standard input closed (`<&-`)
        raise UsageError(
            "no password on standard input (it is closed)"
            if from_stdin
            else "no terminal to ask for the password: use --password-stdin"
        )
    if from_stdin and sys.stdin.isatty():
        # Typed at a terminal after all: not shown on the screen, nor kept in its scrollback.
        return str(typer.prompt("Password", hide_input=True))
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError("no password on standard input")
        # Only the line ending goes: the password is kept exactly as typed.
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Repeat password", hide_input=True) != first:
        raise CliError("the two passwords differ")
    return str(first)


@app.command("create")
def create(username: str, password_stdin: PasswordStdin = False) -> None:
    """Create a user."""
    password = _read_password(password_stdin)
    min_length = settings().min_password_length

    async def go(db: AsyncSession, hasher: PasswordHasher, now: datetime) -> str:
        user = await users.create_user(
            db, hasher, username=username, password=password,
            min_password_length=min_length, now=now,
        )  # fmt: skip
        return f"created user {user.username} ({user.id})"

    typer.echo(run_db(go))


@app.command("list")
def list_users() -> None:
    """One line a user: name, status, lockout, active sessions, second factor, passkeys."""

    mfa = SecondFactor(settings().kek)

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> list[str]:
        lines = []
        with_totp = await mfa.users_with_totp(db)
        passkeys = await passkey_counts(db)
        locks = await auth.locked_names(db, now)
        active = await sessions_service.active_counts(db, now)
        for user in await users.list_users(db):
            until = locks.get(user.username_key)
            locked = f"locked until {iso(until)}" if until is not None else "not locked"
            sessions = active.get(user.id, 0)
            status = "active" if user.is_active else "disabled"
            factor = "totp" if user.id in with_totp else "no second factor"
            keys = passkeys.get(user.id, 0)
            lines.append(
                f"{user.username}\t{status}\t{locked}\t{sessions} sessions\t{factor}"
                f"\t{keys} passkeys"
            )
        return lines

    lines = run_db(go)
    typer.echo("\n".join(lines) if lines else "no users")


def _set_active(username: str, active: bool) -> None:
    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str:
        user = await users.require_user(db, username)
        revoked = await users.set_active(db, user, active, now)
        state = "enabled" if active else f"disabled; {len(revoked)} sessions revoked"
        return f"{user.username} {state}"

    typer.echo(run_db(go))


@app.command("disable")
def disable(username: str) -> None:
    """Disable a user and revoke every session."""
    _set_active(username, False)


@app.command("enable")
def enable(username: str) -> None:
    """Enable a disabled user."""
    _set_active(username, True)


@app.command("unlock")
def unlock(username: str) -> None:
    """Clear a lockout (the name need not exist: unknown names are locked too)."""

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str:
        cleared = await auth.unlock(db, username)
        return f"{username} unlocked" if cleared else f"{username} was not locked"

    typer.echo(run_db(go))


@app.command("set-password")
def set_password(username: str, password_stdin: PasswordStdin = False) -> None:
    """Set a password and revoke every session."""
    password = _read_password(password_stdin)
    min_length = settings().min_password_length

    async def go(db: AsyncSession, hasher: PasswordHasher, now: datetime) -> str:
        user = await users.require_user(db, username)
        password_hash = await users.hash_new_password(hasher, password, min_length, user.username)
        revoked = await users.set_password(db, user, password_hash, now=now)
        return f"password of {user.username} set; {len(revoked)} sessions revoked"

    typer.echo(run_db(go))


@app.command("reset-mfa")
def reset_mfa(username: str) -> None:
    """Turn a user's TOTP off, void the recovery codes, revoke every session (passkeys
    stay: the user deletes them, or the operator disables the account)."""
    mfa = SecondFactor(settings().kek)

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str:
        user = await users.require_user(db, username)
        was_on, revoked = await users.reset_mfa(db, user, mfa, now)
        state = "second factor reset" if was_on else "had no second factor"
        return f"{user.username} {state}; {len(revoked)} sessions revoked"

    typer.echo(run_db(go))
