"""Alembic environment: runs migrations on the application's async engine."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api.models import Base

config = context.config
target_metadata = Base.metadata
# PostgreSQL: migrations one at a time across processes and instances (a transaction-scoped
# advisory lock, taken before the version table is read): the one that waited then finds
# the schema at head. Any constant; the key set's lock is another.
_MIGRATION_LOCK_ID = 0x436F6E644D696772  # "CondMigr"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # SQLite's DDL is transactional too: every migration of a run, and the version
        # table's update, commit as one, so a run stopped part-way (SIGTERM from systemd,
        # a crash) leaves the schema where it began rather than half-changed and unknown.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
        context.run_migrations()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    connect_args = dict(config.attributes.get("connect_args", {}))
    sqlite = url.startswith("sqlite")
    if sqlite:
        # pysqlite starts no transaction before DDL (each ALTER TABLE would commit on its
        # own): its own handling off, and the transaction begun here instead.
        connect_args["isolation_level"] = None
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    if sqlite:

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
