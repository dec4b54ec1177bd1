"""SIGKILL mid-load on SQLite: the file stays sound and keeps everything a client was told.

Several threads log in, refresh their own token chains and send wrong passwords to two
workers; the whole process group is then killed without warning. Whatever a client got a
200 for was committed before the response was sent, and SQLite's WAL outlives a process
(unlike a power cut), so after a restart on the same data directory every session
refreshes with the last token its client received (inside the grace window if the kill
lost the answer to a rotation in flight), and no failure counter is below the number of
401s its username got.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conductor_api.security.tokens import token_digest
from tests.conftest import ACCESS_SECRET, PASSWORD, REFRESH_SECRET, TEST_KEK
from tests.e2e.server import Server

pytestmark = pytest.mark.e2e

USERS = [f"user{i}" for i in range(8)]
# Names that only ever get wrong passwords. One is hammered until it is locked; the others
# are sprayed, a few attempts each and never enough to lock, so that some are in flight at
# the kill. Most have no account: a name is counted whether or not it exists.
HAMMERED = "target0"
SPRAYED = [[f"target{i}" for i in range(1, 9)], [f"target{i}" for i in range(21, 29)]]
REGISTERED_TARGETS = [HAMMERED, "target1", "target2", "target21"]
MAX_FAILED = 6
LOAD_SECONDS = 3.0  # at least; and until the hammered name is locked
ENV = {
    "JWT_SECRET_KEY": ACCESS_SECRET,
    "JWT_REFRESH_SECRET_KEY": REFRESH_SECRET,
    "KEY_ENCRYPTION_KEY": TEST_KEK,
    "ALLOW_REGISTRATION": "true",
    # Every user is registered from 127.0.0.1: out of the per-address registration limit.
    "MAX_REGISTRATIONS_PER_IP": "1000000",
    "MAX_FAILED_LOGIN_ATTEMPTS": str(MAX_FAILED),
    # Every client here is 127.0.0.1: the per-address limit must not get in the way.
    "MAX_FAILED_LOGINS_PER_IP": "1000000",
}


@dataclass
class Chain:
    """One session's refresh tokens as its client saw them."""

    username: str
    session_id: str
    last: str
    before: str | None = None


@dataclass
class Tally:
    """What every thread saw, shared under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    chains: list[Chain] = field(default_factory=list)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unauthorized: Counter[str] = field(default_factory=Counter)
    locked: set[str] = field(default_factory=set)
    hammered_locked: threading.Event = field(default_factory=threading.Event)

    def saw(self, kind: str, status: int) -> None:
        """Count one response."""
        with self.lock:
            self.statuses[(kind, status)] += 1


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """POST /auth/login."""
    body = {"username": username, "password": password, "device_name": "Pixel 8"}
    return client.post("/api/v1/auth/login", json=body)


def refresh(client: httpx.Client, token: str) -> httpx.Response:
    """POST /auth/refresh."""
    return client.post("/api/v1/auth/refresh", json={"refresh_token": token})


def drive_user(url: str, username: str, tally: Tally, stop: threading.Event) -> None:
    """Log in now and then; otherwise rotate one of this client's own chains."""
    chains: list[Chain] = []
    rng = random.Random(username)
    with httpx.Client(base_url=url, timeout=15) as client:
        try:
            for step in itertools.count():
                if stop.is_set():
                    return
                if step % 8 == 0 or not chains:
                    response = login(client, username, PASSWORD)
                    tally.saw("login", response.status_code)
                    if response.status_code == 200:
                        pair = response.json()
                        chain = Chain(username, pair["session_id"], pair["refresh_token"])
                        chains.append(chain)
                        with tally.lock:
                            tally.chains.append(chain)
                    continue
                chain = rng.choice(chains)
                response = refresh(client, chain.last)
                tally.saw("refresh", response.status_code)
                if response.status_code == 200:
                    # Only a whole response counts as received: the kill may cut one short.
                    chain.before, chain.last = chain.last, response.json()["refresh_token"]
        except httpx.HTTPError:
            return  # the server is gone


def drive_targets(url: str, names: list[str], tally: Tally, stop: threading.Event) -> None:
    """Wrong passwords, one name after the other: the hammered name until the end, the
    sprayed ones at most MAX_FAILED - 1 times each."""
    passes = itertools.count() if names == [HAMMERED] else range(MAX_FAILED - 1)
    attempts = (name for _ in passes for name in names)
    with httpx.Client(base_url=url, timeout=15) as client:
        try:
            for username in attempts:
                if stop.is_set():
                    return
                response = login(client, username, "not the password at all")
                tally.saw("wrong", response.status_code)
                with tally.lock:
                    if response.status_code == 401:
                        tally.unauthorized[username] += 1
                    elif response.json().get("code") == "account_locked":
                        tally.locked.add(username)
                if username == HAMMERED and username in tally.locked:
                    tally.hammered_locked.set()
                    time.sleep(0.01)  # a locked name is refused at once: do not spin
        except httpx.HTTPError:
            return


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The server's settings: a data directory of the test's own, fixed keys."""
    return {**ENV, "CONDUCTOR_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    """Two workers on the default SQLite file, with the users registered."""
    with Server(tmp_path, env=env, workers=2) as s:
        for name in [*USERS, *REGISTERED_TARGETS]:
            created = httpx.post(
                s.url + "/api/v1/auth/register", json={"username": name, "password": PASSWORD}
            )
            assert created.status_code == 201, created.text
        yield s


def run_load_then_kill(server: Server) -> Tally:
    """Load from every thread, SIGKILL the server in the middle of it."""
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=drive_user, args=(server.url, name, tally, stop)) for name in USERS
    ] + [
        threading.Thread(target=drive_targets, args=(server.url, names, tally, stop))
        for names in [[HAMMERED], *SPRAYED]
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(LOAD_SECONDS)
        tally.hammered_locked.wait(timeout=20)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return tally


@dataclass
class Stored:
    """What the database file holds after the kill."""

    integrity: str
    foreign_key_errors: list[object]
    counters: dict[str, tuple[int, str | None]]  # username key: failures, locked_until
    sessions: dict[str, tuple[str, str | None, str | None]]  # id hex: hashes, revoked_at


def read_database(path: Path) -> Stored:
    """integrity_check, foreign_key_check, failure counters and sessions, as sqlite3 sees
    the file (recovering its WAL, as the next server start would)."""
    conn = sqlite3.connect(path)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
        counters = conn.execute(
            "SELECT key, failures, locked_until FROM login_throttles WHERE scope = 'user'"
        ).fetchall()
        sessions = conn.execute(
            "SELECT id, refresh_token_hash, previous_token_hash, revoked_at FROM sessions"
        ).fetchall()
    finally:
        conn.close()
    return Stored(
        integrity,
        foreign,
        {key: (failures, locked) for key, failures, locked in counters},
        {uuid.UUID(sid).hex: (now, prev, revoked) for sid, now, prev, revoked in sessions},
    )


class TestCrashSafety:
    def test_sigkill_mid_load_loses_nothing_a_client_was_told(
        self, tmp_path: Path, env: dict[str, str], server: Server
    ) -> None:
        tally = run_load_then_kill(server)
        killed_at = time.monotonic()
        assert server.proc is not None and server.proc.returncode is not None

        # While it ran, the load was served: no 5xx, and wrong passwords got 401 or 429.
        assert {status for (_, status) in tally.statuses} <= {200, 401, 429}, tally.statuses
        assert tally.statuses[("login", 200)] >= len(USERS)
        assert tally.statuses[("refresh", 200)] > 0
        assert len(tally.unauthorized) > 2 * len(SPRAYED), tally.unauthorized

        stored = read_database(tmp_path / "data" / "conductor.db")

        # One worker: it starts sooner, and the grace window runs from the kill.
        with Server(tmp_path, env=env, workers=1) as again:

            def next_token(chain: Chain) -> tuple[Chain, int, int]:
                with httpx.Client(base_url=again.url, timeout=15) as client:
                    first = refresh(client, chain.last)
                    if first.status_code != 200:
                        return chain, first.status_code, 0
                    # The chain goes on from what the restarted server gave.
                    second = refresh(client, first.json()["refresh_token"])
                    return chain, first.status_code, second.status_code

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(next_token, tally.chains))
            elapsed = time.monotonic() - killed_at

        assert stored.integrity == "ok"
        assert stored.foreign_key_errors == []
        # Each session holds the client's last token, or has just rotated past it (the
        # answer was lost in the kill): then only the grace window lets the client on.
        in_flight = 0
        for chain in tally.chains:
            current, previous, revoked_at = stored.sessions[uuid.UUID(chain.session_id).hex]
            assert revoked_at is None, chain
            if token_digest(chain.last) == current:
                # A rotation stores the new token and spends the old one together.
                assert previous == (chain.before and token_digest(chain.before)), chain
            else:
                assert token_digest(chain.last) == previous, chain
                in_flight += 1
        failed = [(c.username, first, second) for c, first, second in results if second != 200]
        assert failed == [], (
            f"{len(failed)} of {len(results)} sessions lost ({in_flight} in flight), checked "
            f"{elapsed:.1f}s after the kill (the grace window is 10s)"
        )

        for name in tally.unauthorized:
            failures, locked_until = stored.counters[name]
            assert failures >= tally.unauthorized[name], (name, failures, tally.unauthorized)
            if name in tally.locked:
                assert locked_until is not None, name
        assert HAMMERED in tally.locked, "the load was too light to lock a name"
        assert tally.unauthorized[HAMMERED] == MAX_FAILED
