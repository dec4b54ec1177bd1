"""End-to-end fixtures: a PostgreSQL database of the test's own for multi-process tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import migrated_pg_database


@pytest.fixture
def pg_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database URL, dropped afterwards."""
    with migrated_pg_database(tmp_path_factory.mktemp("pgmig")) as url:
        yield url
