"""Alembic, driven from the application's settings rather than an ini file."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api.config import ConfigError, Settings
from conductor_api.storage import prepare_sqlite

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointed at this package's migrations and the configured database."""
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(slug)s")
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    if settings.is_sqlite:
        try:
            prepare_sqlite(settings.sqlalchemy_url)
        except OSError as e:
            name = "DATABASE_URL" if settings.database_url else "CONDUCTOR_DATA_DIR"
            raise ConfigError(
                f"{name}: cannot create the database file {settings.sqlite_path}: {e.strerror}"
            ) from None
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the schema up to `revision` (not from inside a running event loop)."""
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Take the schema down to `revision`."""
    command.downgrade(alembic_config(settings), revision)


def head_revision(settings: Settings) -> str | None:
    """The newest revision this package ships."""
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(settings: Settings) -> str | None:
    """The revision the database is at (not from inside a running event loop)."""

    async def read() -> str | None:
        engine = create_async_engine(settings.sqlalchemy_url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda c: MigrationContext.configure(c).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())
