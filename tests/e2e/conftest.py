"""End-to-end fixtures: a PostgreSQL database of the test's own for multi-process tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conductor_api import migrate
from tests.conftest import create_pg_database, drop_pg_database, make_settings, pg_url


@pytest.fixture
def pg_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database URL, dropped afterwards."""
    name = create_pg_database()
    url = pg_url(name)
    try:
        migrate.upgrade(make_settings(tmp_path_factory.mktemp("pgmig"), url))
        yield url
    finally:
        drop_pg_database(name)
