"""`conductor-api prune`: delete now what the retention settings say has expired."""

from __future__ import annotations

import asyncio

import typer

from conductor_api import migrate
from conductor_api.cli.common import CliError, settings
from conductor_api.clock import Clock
from conductor_api.db import make_engine
from conductor_api.retention.pruner import Pruner


def prune() -> None:
    """Delete expired events, sessions and counters now; print how many per table."""
    s = settings()
    migrate.upgrade(s)

    async def main() -> dict[str, int] | None:
        engine = make_engine(s)
        try:
            return await Pruner(s, engine, Clock().now).run()
        finally:
            await engine.dispose()

    deleted = asyncio.run(main())
    if deleted is None:
        raise CliError("another prune is running on this database; nothing deleted")
    for table, count in deleted.items():
        typer.echo(f"{table}: {count} deleted")
