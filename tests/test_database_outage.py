"""When the database stops answering: 503 `service_unavailable` with `Retry-After` within a
bounded time, never a 500, and service resumes by itself once the database is back.

PostgreSQL is reached through `TcpProxy`, which can refuse connections (a server that is
down), go silent (a network that drops packets) or cut connections mid-query. SQLite has
no network to cut, and renaming or chmod-ing the data directory only stops *new*
connections (and chmod nothing at all under root): pooled connections keep their open
file. So the SQLite outages are a file damaged in place, which every connection sees, and
a write lock held by another connection past the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from conductor_api import migrate
from conductor_api.app import create_app, database_down
from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.db import RawPool
from conductor_api.sessions.models import DeviceSession
from tests.conftest import (
    PG_ADMIN_DSN,
    PG_HOST,
    PG_PORT,
    add_user,
    bearer,
    create_pg_database,
    drop_pg_database,
    login,
    make_client,
    make_settings,
    pg_url,
)

DATABASE_TIMEOUT = 2.0
# A request may wait on the database a few times (connect or query, then rollback), each
# bounded by DATABASE_TIMEOUT: well below what a client's own timeout would be.
BOUND = 6.0


# PostgreSQL wire protocol: the codes of an SSLRequest and a GSSENCRequest.
_ENCRYPTION_REQUESTS = (80877103, 80877104)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to a target address; can refuse, go silent, answer new
    connections with a PostgreSQL error, or resume."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._startup_error: tuple[str, str] | None = None

    @property
    def running(self) -> bool:
        """Whether the proxy listens."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (on the same port as before, once a port was chosen) and forward."""
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and reset every forwarded connection: the database is down."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if server is not None:
            await server.wait_closed()
        self._flowing.set()

    def pause(self) -> None:
        """Keep accepting connections but forward nothing, either way: a silent database."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again whatever waited."""
        self._flowing.set()

    def fail_startup(self, sqlstate: str | None, message: str = "") -> None:
        """Answer each new connection's startup with a FATAL `sqlstate` as PostgreSQL does
        while it starts or stops ("57P03") or has no slot left ("53300"); None: forward."""
        self._startup_error = None if sqlstate is None else (sqlstate, message)

    async def restore(self) -> None:
        """Running and forwarding, whatever state a test left the proxy in."""
        self.resume()
        self.fail_startup(None)
        if not self.running:
            await self.start()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            # Accepted by the kernel just before `stop` closed the listener, and handed over
            # while it ran: the database is down, so this one is reset too (otherwise it
            # would outlive `stop` and forward once `stop` lets traffic flow again).
            writer.transport.abort()
            return
        self._transports.add(writer.transport)
        self._spawn(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()
            if self._startup_error is not None:
                await self._answer_startup(reader, writer, *self._startup_error)
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._transports.add(upstream.transport)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.transport.abort()
                    self._transports.discard(side.transport)

    @staticmethod
    async def _answer_startup(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sqlstate: str, message: str
    ) -> None:
        while True:  # decline encryption until the startup message itself arrives
            length = int.from_bytes(await reader.readexactly(4), "big")
            body = await reader.readexactly(length - 4)
            if int.from_bytes(body[:4], "big") not in _ENCRYPTION_REQUESTS:
                break
            writer.write(b"N")
        fields = {b"S": "FATAL", b"V": "FATAL", b"C": sqlstate, b"M": message}
        payload = b"".join(k + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        writer.write(b"E" + (len(payload) + 4).to_bytes(4, "big") + payload)
        await writer.drain()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        # One side closed: close the other, so the client sees the server go away.
        writer.transport.abort()


@dataclass
class Device:
    """A signed-in client of an in-process app."""

    client: httpx.AsyncClient
    username: str
    access_token: str
    refresh_token: str


Request = Callable[[], Awaitable[httpx.Response]]


def db_requests(device: Device) -> dict[str, Request]:
    """One request of each kind that needs the database."""
    c = device.client
    return {
        "ready": lambda: c.get("/health/ready"),
        "login": lambda: login(c, device.username),
        "refresh": lambda: c.post(
            "/api/v1/auth/refresh", json={"refresh_token": device.refresh_token}
        ),
        "me": lambda: c.get("/api/v1/auth/me", headers=bearer(device.access_token)),
    }


async def timed(request: Request) -> tuple[httpx.Response, float]:
    """The response and how long it took; a hung request fails the test, not the run."""
    started = time.monotonic()
    response = await asyncio.wait_for(request(), timeout=BOUND * 3)
    return response, time.monotonic() - started


def assert_unavailable(name: str, response: httpx.Response, elapsed: float) -> None:
    """503 in the contract's shape, in bounded time."""
    assert response.status_code == 503, (name, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), name
    body = response.json()
    assert body["code"] == "service_unavailable", (name, body)
    assert body["detail"], name
    assert int(response.headers["retry-after"]) >= 1, name
    assert elapsed < BOUND, (name, elapsed)


async def expect_unavailable(device: Device, only: tuple[str, ...] | None = None) -> None:
    """Every request (or those named) gets a 503 within the bound, all sent at once."""
    chosen = {k: v for k, v in db_requests(device).items() if only is None or k in only}
    results = await asyncio.gather(*(timed(r) for r in chosen.values()))
    for name, (response, elapsed) in zip(chosen, results, strict=True):
        assert_unavailable(name, response, elapsed)


async def expect_service(device: Device) -> None:
    """The first attempt of each request succeeds: no retry needed after recovery."""
    c = device.client
    ready = await c.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})
    me = await c.get("/api/v1/auth/me", headers=bearer(device.access_token))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == device.username
    # The refresh token presented while the database was down was never spent.
    refreshed = await c.post("/api/v1/auth/refresh", json={"refresh_token": device.refresh_token})
    assert refreshed.status_code == 200, refreshed.text
    device.access_token = refreshed.json()["access_token"]
    device.refresh_token = refreshed.json()["refresh_token"]
    again = await login(c, device.username)
    assert again.status_code == 200, again.text


@contextlib.asynccontextmanager
async def signed_in(app: FastAPI, username: str = "alice") -> AsyncIterator[Device]:
    """A user, logged in on a client of its own."""
    await add_user(app.state.container, username)
    async with make_client(app) as client:
        response = await login(client, username)
        assert response.status_code == 200, response.text
        pair = response.json()
        yield Device(client, username, pair["access_token"], pair["refresh_token"])


async def assert_nothing_counted(container: Container, username: str, sessions: int) -> None:
    """Requests refused for the outage left no session and no failure behind."""
    async with container.sessionmaker() as db:
        count = await db.scalar(select(func.count()).select_from(DeviceSession))
        failures = await db.scalar(
            select(LoginThrottle.failures).where(
                LoginThrottle.scope == "user", LoginThrottle.key == username
            )
        )
    assert count == sessions
    assert not failures


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """The app between its lifespan's start and end."""
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def pg_database_name(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own."""
    name = create_pg_database()
    try:
        migrate.upgrade(make_settings(tmp_path, pg_url(name)))
        yield name
    finally:
        drop_pg_database(name)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the test PostgreSQL."""
    p = TcpProxy(PG_HOST, PG_PORT)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def pg_app(
    pg_database_name: str, proxy: TcpProxy, tmp_path: Path, clock: FrozenClock
) -> AsyncIterator[FastAPI]:
    """An app whose every database connection goes through the proxy."""
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database_name}"
    settings = make_settings(tmp_path, url, database_timeout_seconds=DATABASE_TIMEOUT)
    async with running(create_app(settings, clock)) as app:
        try:
            yield app
        finally:
            await proxy.restore()  # so that closing the pools does not wait on a dead link


@pytest.fixture
async def pg_device(pg_app: FastAPI) -> AsyncIterator[Device]:
    """Alice, signed in to the app on PostgreSQL."""
    async with signed_in(pg_app) as device:
        yield device


class TestPostgresDown:
    async def test_refused_connections_get_503_then_service_resumes(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device
    ) -> None:
        device = pg_device
        await proxy.stop()
        await expect_unavailable(device)
        await expect_unavailable(device)  # and again, with no connection left in the pools
        await proxy.start()
        await expect_service(device)
        await assert_nothing_counted(pg_app.state.container, "alice", sessions=2)

    async def test_first_request_after_a_restart_needs_no_retry(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device
    ) -> None:
        device = pg_device
        me = await device.client.get("/api/v1/auth/me", headers=bearer(device.access_token))
        assert me.status_code == 200  # both pools now hold a connection
        await proxy.stop()  # the server restarts between two requests
        await asyncio.sleep(0.05)
        await proxy.start()
        await expect_service(device)

    async def test_connection_cut_mid_query_is_503_not_500(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device
    ) -> None:
        device = pg_device
        proxy.pause()
        pending = asyncio.gather(*(timed(r) for r in db_requests(device).values()))
        await asyncio.sleep(0.3)  # every request now waits on its query
        await proxy.stop()
        for name, (response, elapsed) in zip(db_requests(device), await pending, strict=True):
            assert_unavailable(name, response, elapsed)
        await proxy.start()
        await expect_service(device)

    async def test_silent_database_gets_503_within_the_bound(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device
    ) -> None:
        device = pg_device
        proxy.pause()
        await expect_unavailable(device)
        await expect_unavailable(device)
        proxy.resume()
        await expect_service(device)
        await assert_nothing_counted(pg_app.state.container, "alice", sessions=2)

    async def test_statements_on_the_raw_pool_wait_one_timeout_not_a_cancellation(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device
    ) -> None:
        # The sign-in's counters, the refresh swap and the session check run on the raw
        # asyncpg pool (`db.fetch_bounded`): a statement that times out is released in the
        # background, the request not waiting while asyncpg cancels it over a new
        # connection to the database that does not answer (which doubled the wait).
        device = pg_device
        proxy.pause()
        for _ in range(2):
            chosen = {k: v for k, v in db_requests(device).items() if k != "ready"}
            results = await asyncio.gather(*(timed(r) for r in chosen.values()))
            for name, (response, elapsed) in zip(chosen, results, strict=True):
                assert_unavailable(name, response, elapsed)
                assert elapsed < DATABASE_TIMEOUT + 1.5, (name, elapsed)
        proxy.resume()
        await expect_service(device)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file of this test's own."""
    url = f"sqlite:///{tmp_path / 'data' / 'conductor.db'}"
    migrate.upgrade(make_settings(tmp_path / "data", url))
    return url


@pytest.fixture
async def sqlite_app(sqlite_url: str, tmp_path: Path, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    """An app on that file."""
    settings = make_settings(
        tmp_path / "data", sqlite_url, database_timeout_seconds=DATABASE_TIMEOUT
    )
    async with running(create_app(settings, clock)) as app:
        yield app


def sqlite_files(app: FastAPI) -> list[Path]:
    """The database file with its WAL and shared-memory index."""
    database = Path(app.state.container.settings.sqlalchemy_url.split(":///", 1)[1])
    return [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]


@contextlib.contextmanager
def damaged(files: list[Path]) -> Iterator[None]:
    """Overwrite the files in place (the inode every open connection reads), then put the
    original bytes back. The index is zeroed both times, so every connection rereads."""
    database, wal, shm = files
    saved = {path: path.read_bytes() for path in (database, wal)}
    with database.open("r+b") as f:
        f.write(os.urandom(len(saved[database])))
    for path in (wal, shm):
        with path.open("r+b") as f:
            f.write(bytes(path.stat().st_size))
    try:
        yield
    finally:
        for path, content in saved.items():
            with path.open("r+b") as f:
                f.write(content)
                f.truncate()
        with shm.open("r+b") as f:
            f.write(bytes(shm.stat().st_size))


@pytest.fixture
async def sqlite_device(sqlite_app: FastAPI) -> AsyncIterator[Device]:
    """Alice, signed in to the app on SQLite."""
    async with signed_in(sqlite_app) as device:
        yield device


class TestSqliteDown:
    async def test_damaged_file_gets_503_then_restored_file_serves(
        self, sqlite_app: FastAPI, sqlite_device: Device
    ) -> None:
        device = sqlite_device
        me = await device.client.get("/api/v1/auth/me", headers=bearer(device.access_token))
        assert me.status_code == 200
        with damaged(sqlite_files(sqlite_app)):
            await expect_unavailable(device)
            await expect_unavailable(device)
        await expect_service(device)
        await assert_nothing_counted(sqlite_app.state.container, "alice", sessions=2)

    async def test_write_lock_held_elsewhere_gets_503_within_the_bound(
        self, sqlite_app: FastAPI, sqlite_device: Device
    ) -> None:
        device = sqlite_device
        holder = sqlite3.connect(sqlite_files(sqlite_app)[0], isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # e.g. an operator's sqlite3 shell
            await expect_unavailable(device, only=("ready", "login", "refresh"))
            # Readers do not wait on a writer in WAL mode: tokens still authenticate.
            me = await device.client.get("/api/v1/auth/me", headers=bearer(device.access_token))
            assert me.status_code == 200
        finally:
            holder.rollback()
            holder.close()
        await expect_service(device)
        await assert_nothing_counted(sqlite_app.state.container, "alice", sessions=2)

    async def test_a_connection_sqlite_made_read_only_is_replaced(
        self, sqlite_app: FastAPI, sqlite_device: Device
    ) -> None:
        """SQLite opens a file it cannot write (its mode, a read-only mount) read-only,
        without an error, and such a connection never writes again, even once the file
        can be written: a worker that reconnected meanwhile answered 503 to writes for good
        while /health/ready said 200. Here the connections are made read-only as that
        leaves them (`query_only`); each write they refuse is a 503, and the next request
        finds a new connection."""
        device, c = sqlite_device, sqlite_device.client
        container = sqlite_app.state.container
        # The connection of sign-ins and refreshes.
        await (await container.autocommit._connection("")).execute("PRAGMA query_only = ON")
        refused = await login(c, device.username)
        assert refused.status_code == 503, refused.text
        await expect_service(device)  # a new connection: it signs in again
        # The engine's, whose transactions revoke-others writes in.
        async with container.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.execute("PRAGMA query_only = ON")
        auth = bearer(device.access_token)
        refused = await c.post("/api/v1/auth/sessions/revoke-others", headers=auth)
        assert refused.status_code == 503, refused.text
        revoked = await c.post("/api/v1/auth/sessions/revoke-others", headers=auth)
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked"] >= 1


class TestNotAnOutage:
    """A statement the database refuses is a bug (500), not an outage: the 503 mapping
    must not swallow it."""

    @staticmethod
    async def refused_statements(app: FastAPI) -> list[Exception]:
        """Insert the same primary key twice; the errors raised."""
        errors: list[Exception] = []
        insert = text(
            "INSERT INTO login_throttles (scope, key, failures, window_started_at) "
            "VALUES ('user', 'twice', 0, :at)"
        )
        for _ in range(2):
            try:
                async with app.state.container.engine.begin() as conn:
                    await conn.execute(insert, {"at": datetime.now(UTC)})
            except sa_exc.DBAPIError as e:
                errors.append(e)
        return errors

    async def test_constraint_violation_on_sqlite_is_no_outage(self, sqlite_app: FastAPI) -> None:
        [error] = await self.refused_statements(sqlite_app)
        assert isinstance(error, sa_exc.IntegrityError)
        assert not database_down(error)

    async def test_constraint_violation_on_postgres_is_no_outage(self, pg_app: FastAPI) -> None:
        [error] = await self.refused_statements(pg_app)
        assert isinstance(error, sa_exc.IntegrityError)
        assert not database_down(error)


class TestPostgresRefusesConnections:
    @pytest.mark.parametrize(
        ("sqlstate", "message"),
        [
            ("57P03", "the database system is starting up"),
            ("57P03", "the database system is shutting down"),
            ("53300", "sorry, too many clients already"),
            ("3D000", 'database "conductor" does not exist'),
            ("55000", 'database "conductor" is not currently accepting connections'),
            ("28000", 'no pg_hba.conf entry for host "127.0.0.1", user "postgres"'),
            ("28P01", 'password authentication failed for user "postgres"'),
        ],
    )
    async def test_startup_error_is_503_not_500(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device, sqlstate: str, message: str
    ) -> None:
        device = pg_device
        await proxy.stop()  # the server restarts (or every slot is taken)
        proxy.fail_startup(sqlstate, message)
        await proxy.start()
        await expect_unavailable(device)
        proxy.fail_startup(None)
        await expect_service(device)

    @pytest.mark.parametrize(
        ("sqlstate", "message"),
        [
            ("53300", 'too many connections for role "postgres"'),
            ("3D000", 'database "conductor" does not exist'),
            ("28P01", 'password authentication failed for user "postgres"'),
        ],
    )
    async def test_a_refused_new_connection_of_the_raw_pool_is_an_outage(
        self, proxy: TcpProxy, pg_database_name: str, sqlstate: str, message: str
    ) -> None:
        """The sign-in's last transaction and the session checks take their connections
        from `RawPool`, not the engine: a connection refused there (every slot taken while
        the engine's connections were still open) is a 503 too, not a 500."""
        proxy.fail_startup(sqlstate, message)
        pool = RawPool(f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database_name}", 2.0)
        try:
            with pytest.raises(Exception) as raised:
                await pool.acquire(2.0)
            assert database_down(raised.value), repr(raised.value)
            assert message in str(raised.value)
        finally:
            await pool.close()

    async def test_a_database_closed_to_connections_is_503_then_service_resumes(
        self, pg_app: FastAPI, pg_device: Device, pg_database_name: str
    ) -> None:
        """What an operator's maintenance does (ALTER DATABASE ... ALLOW_CONNECTIONS false,
        then the sessions ended): every new connection is refused with SQLSTATE 55000."""
        device = pg_device
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(f'ALTER DATABASE "{pg_database_name}" ALLOW_CONNECTIONS false')
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_database_name,
            )
            await expect_unavailable(device)
            await expect_unavailable(device)  # and again, with no connection left in the pools
        finally:
            await conn.execute(f'ALTER DATABASE "{pg_database_name}" ALLOW_CONNECTIONS true')
            await conn.close()
        await expect_service(device)

    async def test_a_read_only_database_is_503_for_writes_then_service_resumes(
        self,
        pg_app: FastAPI,
        pg_device: Device,
        pg_database_name: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A standby after a failover, or an operator's maintenance: every transaction is
        read-only (SQLSTATE 25006 on a write), which is an outage, not a bug."""
        device = pg_device
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        db = f'"{pg_database_name}"'
        try:
            await conn.execute(f"ALTER DATABASE {db} SET default_transaction_read_only = on")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_database_name,
            )
            await expect_unavailable(device, only=("login", "refresh"))
            await expect_unavailable(device, only=("login", "refresh"))  # on new connections
            # The log says why, not only that.
            assert "read-only transaction" in caplog.text
        finally:
            await conn.execute(f"ALTER DATABASE {db} SET default_transaction_read_only = off")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_database_name,
            )
            await conn.close()
        await device.client.get("/health/ready")  # the pools find their connections gone
        await expect_service(device)

    async def test_session_terminated_mid_query_is_503_not_500(
        self, pg_app: FastAPI, proxy: TcpProxy, pg_device: Device, pg_database_name: str
    ) -> None:
        device = pg_device
        proxy.pause()
        pending = asyncio.gather(*(timed(r) for r in db_requests(device).values()))
        await asyncio.sleep(0.3)
        # What a fast shutdown does: every session gets FATAL 57P01, then its socket closes.
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_database_name,
            )
        finally:
            await conn.close()
        await proxy.stop()
        for name, (response, elapsed) in zip(db_requests(device), await pending, strict=True):
            assert_unavailable(name, response, elapsed)
        await proxy.start()
        await expect_service(device)
