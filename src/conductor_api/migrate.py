"""Alembic, driven from the application's settings rather than an ini file."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api.config import ConfigError, Settings
from conductor_api.storage import prepare_sqlite

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def connect_args(settings: Settings) -> dict[str, float]:
    """A connection to PostgreSQL that does not answer gives up after DATABASE_TIMEOUT_SECONDS
    (asyncpg's own default is 60 s), so a command or a start during an outage fails in that
    time. Statements are not bounded: a migration may take long, or wait for another."""
    return {} if settings.is_sqlite else {"timeout": settings.database_timeout_seconds}


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointed at this package's migrations and the configured database."""
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(slug)s")
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    config.attributes["connect_args"] = connect_args(settings)
    if settings.is_sqlite:
        try:
            prepare_sqlite(settings.sqlalchemy_url)
        except OSError as e:
            name = "DATABASE_URL" if settings.database_url else "CONDUCTOR_DATA_DIR"
            raise ConfigError(
                f"{name}: cannot create the database file {settings.sqlite_path}: {e.strerror}"
            ) from None
    return config


@contextlib.contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[None]:
    """SQLite: one migration at a time across processes, under an exclusive lock on a file
    beside the database: commands started together on a fresh data directory (`serve` and
    `users create`, say) would otherwise both create the tables, and one would fail. The
    one that waited then finds the schema at head. (PostgreSQL: an advisory lock, env.py.)"""
    if not settings.is_sqlite:
        yield
        return
    with open(settings.sqlite_path + ".migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the schema up to `revision` (not from inside a running event loop). A database
    at a revision this release does not ship (a newer release migrated it) is refused in
    one line."""
    config = alembic_config(settings)
    with _one_at_a_time(settings):
        try:
            command.upgrade(config, revision)
        except CommandError as e:
            if not isinstance(e.__cause__, ResolutionError):
                raise
            name = "DATABASE_URL" if settings.database_url else "CONDUCTOR_DATA_DIR"
            raise ConfigError(
                f"{name}: the database is at schema revision {e.__cause__.argument!r}, which "
                "this release does not know (a newer release migrated it): run that release, "
                "or restore a backup taken before"
            ) from None


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Take the schema down to `revision`."""
    config = alembic_config(settings)
    with _one_at_a_time(settings):
        command.downgrade(config, revision)


def head_revision(settings: Settings) -> str | None:
    """The newest revision this package ships."""
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at (not from inside a running event loop)."""

    async def read() -> str | None:
        engine = create_async_engine(
            settings.sqlalchemy_url, poolclass=NullPool, connect_args=connect_args(settings)
        )
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda c: MigrationContext.configure(c).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())
