"""Migrations go up and down on SQLite and PostgreSQL, and match the models exactly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api import migrate
from conductor_api.config import Settings
from conductor_api.models import Base
from conductor_api.users.confusables import skeleton_digest
from tests.conftest import create_pg_database, drop_pg_database, make_settings, pg_url

TABLES = {
    "users",
    "sessions",
    "login_throttles",
    "security_events",
    "device_tokens",
    "totp_factors",
    "recovery_codes",
    "mfa_tokens",
    "kek_checks",
    "setting_checks",
    "generated_secrets",
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on an empty database of each kind."""
    if request.param == "sqlite":
        yield make_settings(tmp_path, f"sqlite:///{tmp_path}/m.db")
        return
    name = create_pg_database()
    try:
        yield make_settings(tmp_path, pg_url(name))
    finally:
        drop_pg_database(name)


def _inspect(settings: Settings, fn: Any) -> Any:
    async def run() -> Any:
        engine = create_async_engine(settings.sqlalchemy_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _indexes(conn: Connection) -> dict[str, set[str]]:
    insp = inspect(conn)
    return {t: {i["name"] or "" for i in insp.get_indexes(t)} for t in TABLES}


def _diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


class TestMigrations:
    def test_upgrade_creates_every_table_and_index(self, empty_settings: Settings) -> None:
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, _tables) >= TABLES
        indexes = _inspect(empty_settings, _indexes)
        assert "ix_sessions_user_id_revoked_at" in indexes["sessions"]
        assert "ix_sessions_user_id_device_fingerprint" in indexes["sessions"]
        assert "ix_security_events_user_id_created_at" in indexes["security_events"]
        # Pruning's (0005_retention_indexes).
        assert "ix_security_events_created_at" in indexes["security_events"]
        assert {"ix_sessions_revoked_at", "ix_sessions_expires_at"} <= indexes["sessions"]
        assert "ix_login_throttles_window_started_at" in indexes["login_throttles"]
        # And of device tokens and pending sign-ins (0009_expiry_indexes).
        assert {"ix_device_tokens_revoked_at", "ix_device_tokens_expires_at"} <= indexes[
            "device_tokens"
        ]
        assert "ix_mfa_tokens_expires_at" in indexes["mfa_tokens"]
        assert migrate.current_revision(empty_settings) == migrate.head_revision(empty_settings)

    def test_schema_matches_the_models(self, empty_settings: Settings) -> None:
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, _diff) == []

    def test_downgrade_to_base_and_up_again(self, empty_settings: Settings) -> None:
        migrate.upgrade(empty_settings)
        migrate.downgrade(empty_settings, "base")
        assert not (TABLES & _inspect(empty_settings, _tables))
        assert migrate.current_revision(empty_settings) is None
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, _tables) >= TABLES

    def test_upgrade_twice_is_a_no_op(self, empty_settings: Settings) -> None:
        migrate.upgrade(empty_settings)
        migrate.upgrade(empty_settings)
        assert migrate.current_revision(empty_settings) == migrate.head_revision(empty_settings)


def _insert_users(
    conn: Connection, names: tuple[str, ...] = ("alice", "\u0430lice", "bob")
) -> None:
    # By default the second with a Cyrillic a.
    now = datetime(2026, 11, 1, tzinfo=UTC)
    for i, name in enumerate(names):
        user_id = uuid.uuid4()
        conn.execute(
            text(
                "INSERT INTO users (id, username, username_key, password_hash, is_active,"
                " created_at, password_changed_at) VALUES (:id, :n, :k, 'x', true, :c, :c)"
            ),
            {
                "id": user_id.hex if conn.dialect.name == "sqlite" else user_id,
                "n": name,
                "k": name.casefold(),
                "c": now + timedelta(minutes=i),
            },
        )


def _add_users(settings: Settings, names: tuple[str, ...] | None = None) -> None:
    """`_insert_users` (its default names, or `names`) in a transaction of its own."""

    async def insert() -> None:
        engine = create_async_engine(settings.sqlalchemy_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_insert_users, *([names] if names else []))
        finally:
            await engine.dispose()

    asyncio.run(insert())


class TestSkeletonOfTheName:
    def test_capital_look_alikes_found_in_existing_names(self, empty_settings: Settings) -> None:
        migrate.upgrade(empty_settings, "0012_session_device_token")
        _add_users(empty_settings, ("paypal", "paypaI", "b0b"))
        before = _inspect(empty_settings, _skeletons)
        assert before["paypai"] is None and before["b0b"] is None  # inserted bare
        migrate.upgrade(empty_settings)
        skeletons = _inspect(empty_settings, _skeletons)
        assert skeletons == {
            "paypal": skeleton_digest("paypal"),
            "paypai": None,  # the younger look-alike keeps its account, with no digest
            "b0b": skeleton_digest("b0b"),
        }
        assert skeleton_digest("b0b") == skeleton_digest("bob")
        migrate.downgrade(empty_settings, "0012_session_device_token")
        old = _inspect(empty_settings, _skeletons)
        assert old["paypai"] is not None and old["paypai"] != old["paypal"]
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, _skeletons) == skeletons


def _skeletons(conn: Connection) -> dict[str, str | None]:
    rows = conn.execute(text("SELECT username_key, username_skeleton FROM users"))
    return {k: s for k, s in rows}


class TestUsernameSkeletonMigration:
    def test_existing_users_get_skeletons_and_old_look_alikes_stay(
        self, empty_settings: Settings
    ) -> None:
        migrate.upgrade(empty_settings, "0001")
        _add_users(empty_settings)
        migrate.upgrade(empty_settings)
        skeletons = _inspect(empty_settings, _skeletons)
        assert skeletons["alice"] == skeleton_digest("alice")
        assert skeletons["\u0430lice"] is None  # the younger look-alike keeps its account
        assert skeletons["bob"] == skeleton_digest("bob")
        migrate.downgrade(empty_settings, "0001")
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, _skeletons) == skeletons


class TestStoppedPartWay:
    def test_a_run_that_fails_part_way_leaves_the_schema_where_it_began(
        self, empty_settings: Settings
    ) -> None:
        # A run stopped after a migration's DDL (the column added) and before its end, as a
        # SIGTERM or a crash would: everything of the run is undone, and the next one works.
        migrate.upgrade(empty_settings, "0005_retention_indexes")
        _add_users(empty_settings)

        def stop(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith("UPDATE users SET username_skeleton"):
                raise KeyboardInterrupt  # what a signal raises in the middle of a run

        event.listen(Engine, "before_cursor_execute", stop)
        try:
            with pytest.raises(KeyboardInterrupt):
                migrate.upgrade(empty_settings)
        finally:
            event.remove(Engine, "before_cursor_execute", stop)

        def state(conn: Connection) -> tuple[str | None, set[str]]:
            revision = MigrationContext.configure(conn).get_current_revision()
            return revision, {c["name"] for c in inspect(conn).get_columns("users")}

        revision, columns = _inspect(empty_settings, state)
        assert revision == "0005_retention_indexes"
        assert "username_skeleton" not in columns
        migrate.upgrade(empty_settings)
        assert _inspect(empty_settings, state)[0] == migrate.head_revision(empty_settings)
        assert _inspect(empty_settings, _skeletons)["alice"] == skeleton_digest("alice")
