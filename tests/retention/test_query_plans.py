"""Every per-request query, and every prune batch, is served by an index on PostgreSQL.

The tables are filled with enough rows for the planner to prefer an index wherever one
serves the query, and shaped like a server that prunes: a prune round finds only what
expired since the previous round, about 1% of each table. (A first prune of a database that
never pruned matches most rows; a sequential scan is then the planner's right choice.)
Each query is also planned with `enable_seqscan = off`, which still yields a sequential scan
when no index can serve the query: that part holds whatever the table statistics.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from conductor_api import migrate
from conductor_api.auth import throttle
from conductor_api.auth.principal import POSTGRES_SQL
from conductor_api.events import repository as events
from conductor_api.retention.pruner import batch_delete
from conductor_api.retention.rules import RULES, Retention
from conductor_api.sessions import repository as sessions
from conductor_api.sessions import rotation
from tests.conftest import create_pg_database, drop_pg_database, make_settings, pg_url

FILL = """
INSERT INTO users (id, username, username_key, password_hash, is_active, created_at,
                   password_changed_at)
SELECT gen_random_uuid(), 'u' || g, 'u' || g, 'x', true, now(), now()
FROM generate_series(1, 2000) AS g;

INSERT INTO sessions (id, user_id, device_name, ip_address, user_agent, created_at,
                      last_used_at, expires_at, absolute_expires_at, revoked_at,
                      revoked_reason, refresh_token_hash, generation)
SELECT gen_random_uuid(), u.id, 'd', '192.0.2.1', 'ua', now() - interval '20 days', now(),
       CASE WHEN g % 100 = 0 THEN now() - interval '40 days'
            ELSE now() + (g % 7) * interval '1 day' END,
       now() + interval '70 days',
       CASE WHEN g % 100 = 1 THEN now() - interval '35 days'
            WHEN g % 3 = 0 THEN now() - interval '2 days' END,
       NULL, repeat('0', 64), 0
FROM users AS u, generate_series(1, 15) AS g;

INSERT INTO security_events (id, user_id, username_key, type, created_at)
SELECT gen_random_uuid(), CASE WHEN g % 10 = 0 THEN NULL ELSE u.id END, 'k', 'login_failed',
       now() - CASE WHEN g % 100 = 0 THEN interval '100 days'
                    ELSE (g % 85) * interval '1 day' + g * interval '1 second' END
FROM users AS u, generate_series(1, 30) AS g;

INSERT INTO login_throttles (scope, key, failures, window_started_at, locked_until)
SELECT CASE WHEN g % 2 = 0 THEN 'user' ELSE 'ip' END, 'k' || g, 1,
       now() - CASE WHEN g % 100 = 0 THEN interval '1 hour'
                    ELSE (g % 14) * interval '1 minute' END,
       NULL
FROM generate_series(1, 20000) AS g;

INSERT INTO device_tokens (id, user_id, token_hash, created_at, last_used_at, expires_at,
                           revoked_at)
SELECT gen_random_uuid(), u.id, md5(u.id::text || g) || md5(g || u.id::text),
       now() - interval '100 days', now(),
       now() + CASE WHEN g % 100 = 0 THEN interval '-40 days' ELSE interval '80 days' END,
       CASE WHEN g % 100 = 1 THEN now() - interval '35 days' END
FROM users AS u, generate_series(1, 10) AS g;

INSERT INTO mfa_tokens (id, token_hash, user_id, device_name, created_at, expires_at,
                        failures)
SELECT gen_random_uuid(), md5(u.id::text || g) || md5(g || u.id::text), u.id, 'd',
       now() - interval '1 minute',
       now() + CASE WHEN g % 100 = 0 THEN interval '-1 minute' ELSE interval '4 minutes' END,
       0
FROM users AS u, generate_series(1, 10) AS g;

INSERT INTO dpop_proofs (key, expires_at)
SELECT md5(g::text) || md5((g + 1)::text),
       now() + CASE WHEN g % 100 = 0 THEN interval '-1 minute' ELSE interval '1 minute' END
FROM generate_series(1, 20000) AS g;

INSERT INTO webauthn_challenges (id, challenge, purpose, user_id, created_at, expires_at,
                                 spent_at)
SELECT gen_random_uuid(), '\\x00', 'authentication', NULL, now(),
       now() + CASE WHEN g % 100 = 0 THEN interval '-1 minute' ELSE interval '5 minutes' END,
       CASE WHEN g % 100 = 1 THEN now() - interval '1 second' END
FROM generate_series(1, 20000) AS g;

ANALYZE;
"""


@pytest.fixture(scope="module")
def filled_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated PostgreSQL database holding the rows above."""
    name = create_pg_database()
    try:
        url = pg_url(name)
        migrate.upgrade(make_settings(tmp_path_factory.mktemp("plans"), url))

        async def fill() -> None:
            conn = await asyncpg.connect(url, timeout=10)
            try:
                await conn.execute(FILL)
            finally:
                await conn.close()

        asyncio.run(fill())
        yield url
    finally:
        drop_pg_database(name)


Query = tuple[str, tuple[Any, ...]]


async def _statements(url: str, work: Callable[[AsyncSession], Awaitable[object]]) -> list[Query]:
    """The SQL and parameters `work` sends, captured as the driver gets them (rolled back):
    through SQLAlchemy, and straight to asyncpg (`db.execute_direct`)."""
    seen: list[Query] = []

    def capture(_c: Any, _cur: Any, sql: str, params: Any, *_: Any) -> None:
        seen.append((sql, tuple(params or ())))

    def direct(query: Any) -> None:
        seen.append((query.query, tuple(query.args or ())))

    engine = create_async_engine(make_settings(Path("."), url).sqlalchemy_url, poolclass=NullPool)
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with AsyncSession(engine) as db:
            raw = await (await db.connection()).get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            driver.add_query_logger(direct)
            await work(db)
            await db.rollback()
    finally:
        await engine.dispose()
    ignored = ("BEGIN", "SELECT PG_", "ROLLBACK", "COMMIT")
    return [q for q in seen if not q[0].lstrip().upper().startswith(ignored)]


def _scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield plan["Node Type"], plan.get("Relation Name", "")
    for index in plan.get("Conflict Arbiter Indexes", []):
        yield "Index (conflict arbiter)", index  # an upsert finds its row through this
    for child in plan.get("Plans", []):
        yield from _scans(child)


async def _plan(url: str, query: Query, *, seqscan: bool) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"), timeout=10)
    try:
        if not seqscan:
            await conn.execute("SET enable_seqscan = off")
        sql, params = query
        result = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
    finally:
        await conn.close()
    return list(_scans(json.loads(result)[0]["Plan"]))


def _user_id(url: str) -> uuid.UUID:
    async def one() -> uuid.UUID:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            value: uuid.UUID = await conn.fetchval("SELECT id FROM users WHERE username = 'u7'")
            return value
        finally:
            await conn.close()

    return asyncio.run(one())


def _queries(url: str) -> dict[str, list[Query]]:
    user_id = _user_id(url)
    now = datetime.now(UTC)
    window = timedelta(minutes=15)
    retention = Retention.at(now, make_settings(Path("."), url))

    async def collect() -> dict[str, list[Query]]:
        async def prune(db: AsyncSession) -> None:
            for rule in RULES:
                await db.execute(batch_delete(rule, retention, 500, "postgresql"))

        batch = [uuid.uuid4() for _ in range(3)]
        times = ([now] * 3, [now] * 3, [now - timedelta(days=90)] * 3)
        return {
            "session check": [(POSTGRES_SQL, ([uuid.uuid4()],))],
            # now, the new token's expiry, and the oldest login still live (SESSION_MAX_DAYS)
            "refresh swaps": [
                (
                    rotation.POSTGRES_SQL,
                    (batch, [user_id] * 3, ["0" * 64] * 3, ["1" * 64] * 3, *times),
                )
            ],
            "sessions of a user": await _statements(
                url, lambda db: sessions.list_active(db, user_id, now)
            ),
            "events of a user": await _statements(
                url, lambda db: events.list_for_user(db, user_id, 50)
            ),
            "address counter": await _statements(
                url, lambda db: throttle.read(db, throttle.IP, "k3", now, window=window)
            ),
            "name counter": await _statements(
                url,
                lambda db: throttle.take(
                    db, throttle.Claim(throttle.USER, "k2", 5, None), now, ttl=window
                ),
            ),
            "a sign-in's settlements": await _statements(
                url,
                lambda db: throttle.settle_in_order(
                    db,
                    [
                        throttle.Settlement(throttle.IP, "k3"),
                        throttle.Settlement(throttle.USER, "k2", 0, 5),
                    ],
                ),
            ),
            "revoke a user's sessions": await _statements(
                url, lambda db: sessions.revoke_for_user(db, user_id, now, "x")
            ),
            "prune batches": await _statements(url, prune),
        }

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def queries(filled_url: str) -> dict[str, list[Query]]:
    """Every hot query, as sent to the driver."""
    return _queries(filled_url)


HOT = (
    "session check",
    "refresh swaps",
    "sessions of a user",
    "events of a user",
    "address counter",
    "name counter",
    "a sign-in's settlements",
    "revoke a user's sessions",
    "prune batches",
)


class TestQueryPlans:
    def test_prune_sends_one_batch_delete_per_rule(self, queries: dict[str, list[Query]]) -> None:
        deletes = [q for q in queries["prune batches"] if q[0].lstrip().startswith("DELETE")]
        assert len(deletes) == len(RULES)

    @pytest.mark.parametrize("name", HOT)
    @pytest.mark.parametrize("seqscan", [True, False], ids=["planner", "enable_seqscan=off"])
    def test_no_sequential_scan(
        self, filled_url: str, queries: dict[str, list[Query]], name: str, seqscan: bool
    ) -> None:
        assert queries[name], name
        for query in queries[name]:
            scans = asyncio.run(_plan(filled_url, query, seqscan=seqscan))
            assert not [s for s in scans if s[0] == "Seq Scan"], (query[0], scans)
            # Sanity: the plan reads a table or an index at all.
            assert any("Index" in node or "Bitmap" in node for node, _ in scans), scans


class TestSqlitePlans:
    """SQLite's planner uses an index wherever one serves the query (no statistics needed)."""

    @pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
    def test_prune_batches_search_by_index(self, tmp_path: Path, rule: Any) -> None:
        settings = make_settings(tmp_path, f"sqlite:///{tmp_path}/c.db")
        migrate.upgrade(settings)
        retention = Retention.at(datetime.now(UTC), settings)
        compiled = batch_delete(rule, retention, 500, "sqlite").compile(dialect=sqlite.dialect())
        params = compiled.construct_params()
        values = [params[k] for k in compiled.positiontup or ()]
        values = [v if isinstance(v, int) else str(v) for v in values]
        with sqlite3.connect(settings.sqlite_path) as conn:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {compiled}", values)]
        assert plan and not [step for step in plan if step.startswith("SCAN")], plan
        assert any("USING INDEX" in step for step in plan), plan
