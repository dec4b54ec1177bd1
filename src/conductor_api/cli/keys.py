"""`conductor-api keys ...`: list, rotate and revoke the access-token signing keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.cli.common import CliError, UsageError, iso, run_db, settings
from conductor_api.config import ConfigError
from conductor_api.keys import crypto, repository, service
from conductor_api.keys.manager import WRONG_KEK
from conductor_api.keys.models import SigningKey
from conductor_api.keys.ring import KID_PATTERN
from conductor_api.security.passwords import PasswordHasher

app = typer.Typer(help="Access-token signing keys (EdDSA, ES256).", no_args_is_help=True)
T = TypeVar("T")
KeyFn = Callable[[AsyncSession, crypto.KeyCipher, service.KeyPolicy, datetime], Awaitable[T]]


def run_keys(fn: KeyFn[T]) -> T:
    """Run `fn` on the key set in one transaction; a wrong KEY_ENCRYPTION_KEY is one line."""
    s = settings()
    cipher = crypto.KeyCipher(s.kek)
    policy = service.KeyPolicy.of(s)

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> T:
        try:
            return await fn(db, cipher, policy, now)
        except crypto.KeyDecryptionError:
            raise ConfigError(WRONG_KEK) from None

    return run_db(go)


def _same_algorithm(rows: Sequence[SigningKey], policy: service.KeyPolicy) -> None:
    """A key command that would make a key (a rotation, the replacement of a revoked current
    key) runs with the servers' JWT_ALGORITHM: with another, it would switch the set's
    algorithm at once, with no publish delay, under servers that still sign with the old."""
    current = next((r for r in rows if r.state == "current"), None)
    if current is not None and current.algorithm != policy.algorithm:
        raise CliError(
            f"JWT_ALGORITHM is {policy.algorithm} here but the current key is "
            f"{current.algorithm}: run this with the servers' settings (a server started "
            "with a new JWT_ALGORITHM switches the key set itself)"
        )


def _line(row: SigningKey) -> str:
    dates = [f"created {iso(row.created_at)}"]
    if row.state == "next":
        dates.append(f"signs from {iso(row.sign_after)}")
    if row.activated_at is not None:
        dates.append(f"current from {iso(row.activated_at)}")
    if row.deactivated_at is not None:
        dates.append(f"until {iso(row.deactivated_at)}")
    if row.retired_at is not None:
        dates.append(f"retired {iso(row.retired_at)}")
    if row.revoked_at is not None:
        dates.append(f"revoked {iso(row.revoked_at)}")
    return "\t".join([row.kid, row.algorithm, row.state, *dates])


def prepare() -> None:
    """What `serve` runs before its workers: a current key exists (in the asymmetric modes)
    and every stored key opens, or one line naming KEY_ENCRYPTION_KEY."""
    run_keys(service.maintain)


@app.command("list")
def list_keys() -> None:
    """Every key: kid, algorithm, state and dates, one line a key, oldest first."""

    async def go(
        db: AsyncSession, cipher: crypto.KeyCipher, _: service.KeyPolicy, __: datetime
    ) -> list[str]:
        rows = await repository.all_keys(db)
        service.check_decrypts(rows, cipher)
        return [_line(r) for r in rows]

    lines = run_keys(go)
    typer.echo("\n".join(lines) if lines else "no keys")


@app.command()
def rotate(
    now: Annotated[
        bool, typer.Option("--now", help="Sign with the new key at once (no publish delay).")
    ] = False,
) -> None:
    """Publish a new key; instances sign with it after KEY_PUBLISH_SECONDS (or --now)."""
    s = settings()
    if not s.asymmetric:
        raise CliError(f"JWT_ALGORITHM is {s.jwt_algorithm}: signing keys need EdDSA or ES256")

    async def go(
        db: AsyncSession, cipher: crypto.KeyCipher, policy: service.KeyPolicy, at: datetime
    ) -> str:
        _same_algorithm(await repository.all_keys(db), policy)
        key = await service.rotate(db, cipher, policy, at, at_once=now)
        if now:
            return f"key {key.kid} is current"
        return f"key {key.kid} published; signs from {iso(key.sign_after)}"

    typer.echo(run_keys(go))


@app.command()
def revoke(kid: str) -> None:
    """Revoke a leaked key: it leaves the JWKS and its tokens are refused."""
    if not KID_PATTERN.fullmatch(kid):
        raise UsageError(f"not a key id (letters, digits and _): {kid!r}")

    async def go(
        db: AsyncSession, cipher: crypto.KeyCipher, policy: service.KeyPolicy, at: datetime
    ) -> str:
        rows = await repository.all_keys(db)
        before = {r.kid: r.state for r in rows}
        if before.get(kid) == "current":
            _same_algorithm(rows, policy)  # a replacement is made
        row = await service.revoke(db, cipher, policy, kid, at)
        if row is None:
            raise CliError(f"no key {kid!r}")
        if before[kid] == "revoked":
            return f"key {kid} was already revoked"
        current = next((r for r in await repository.all_keys(db) if r.state == "current"), None)
        then = f"; key {current.kid} is current" if current is not None else ""
        return f"key {kid} revoked{then}"

    typer.echo(run_keys(go))
