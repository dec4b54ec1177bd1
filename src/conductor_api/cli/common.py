"""What every CLI command shares: settings, a database transaction, one-line errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api import migrate
from conductor_api.clock import Clock
from conductor_api.config import ConfigError, Settings, adopt_generated_secrets, load_settings
from conductor_api.db import make_engine, make_session_factory
from conductor_api.keys import service as key_service
from conductor_api.mfa.service import SecondFactor
from conductor_api.security.passwords import PasswordHasher

T = TypeVar("T")


class CliError(Exception):
    """An operator error; printed as one line on standard error."""


class UsageError(CliError):
    """An argument that cannot be what it names (a malformed id): exit status 2, as for a
    bad option."""


def settings() -> Settings:
    """Validated settings (a bad value raises `ConfigError`)."""
    return load_settings()


def run_db(
    fn: Callable[[AsyncSession, PasswordHasher, datetime], Awaitable[T]],
    *,
    hashing: bool = False,
) -> T:
    """Bring the schema up to date, then run `fn` in one committed transaction."""
    s = settings()
    migrate.upgrade(s)

    async def main() -> T:
        engine = make_engine(s)
        hasher = PasswordHasher(1)
        try:
            async with make_session_factory(engine).begin() as db:
                return await fn(db, hasher, Clock().now())
        finally:
            hasher.close()
            await engine.dispose()

    return asyncio.run(main())


def shown(text: str) -> str:
    """A value a client chose (a device name), fit for one tab-separated line on a terminal:
    control and other unprintable characters (a tab, a newline, ESC) written as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def iso(value: datetime | None) -> str:
    """A timestamp as the API shows it (ISO 8601, UTC, Z)."""
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_stored_secrets() -> list[str]:
    """`ConfigError` naming KEY_ENCRYPTION_KEY when it does not open the stored TOTP secrets,
    or the check value the first instance on this database sealed (stored now if none was:
    in the HS* modes, with no TOTP secret yet, nothing else would tell two keys apart).

    Then records the digests of the settings instances must share
    (`key_service.shared_setting_digests`), and returns those the last start on this
    database had otherwise: not an error, since an operator may change them on purpose
    (a new refresh secret signs everyone out), but worth a warning, since an instance still
    running with the other values refuses this one's tokens.

    JWT secrets this instance generated (none was set) are the database's: the first
    instance to generate its own stored them there, sealed under KEY_ENCRYPTION_KEY, and
    the others write them into their data directory's secrets file, which their workers
    read. So instances that share a database and that key accept each other's tokens."""
    s = settings()
    kek = s.kek
    mfa = SecondFactor(kek)

    async def go(db: AsyncSession, _: PasswordHasher, now: datetime) -> str | list[str]:
        if not await mfa.opens_stored(db):
            return "the TOTP secrets stored in the database"
        if not await key_service.kek_opens_check(db, kek, now):
            return "what the first instance on this database sealed with its key"
        current = s
        generated = s.generated_jwt_secrets
        if generated:
            shared = await key_service.share_generated_secrets(db, kek, generated, now)
            if shared != generated:
                adopt_generated_secrets(s.conductor_data_dir, shared)
                current = settings()
        digests = key_service.shared_setting_digests(current)
        return await key_service.shared_settings_changed(db, digests, now)

    outcome = run_db(go)
    if isinstance(outcome, str):
        raise ConfigError(
            f"KEY_ENCRYPTION_KEY: does not decrypt {outcome}; set the KEY_ENCRYPTION_KEY of "
            "the instances that stored them"
        )
    return outcome
