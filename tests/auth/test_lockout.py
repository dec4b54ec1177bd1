"""Brute-force protection per username: the lock after MAX_FAILED_LOGIN_ATTEMPTS consecutive
failures, its expiry, its key (case- and NFKC-insensitive, known or unknown name), the limit
under concurrency, and what a lock leaves alone (existing sessions)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conductor_api.app import create_app
from conductor_api.auth.models import LoginThrottle
from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.events.models import SecurityEvent
from tests.conftest import PASSWORD, Account, add_user, bearer, login, make_client, tokens

WRONG = "wrong password, but long enough"
LOCKOUT = timedelta(minutes=15)
ME = "/api/v1/auth/me"


async def throttle_row(container: Container, key: str) -> LoginThrottle | None:
    """The per-username counter as the database holds it."""
    async with container.sessionmaker() as db:
        return await db.get(LoginThrottle, ("user", key))


async def user_rows(container: Container) -> list[LoginThrottle]:
    """Every per-username counter."""
    async with container.sessionmaker() as db:
        rows = await db.scalars(select(LoginThrottle).where(LoginThrottle.scope == "user"))
        return list(rows.all())


async def fail(client: httpx.AsyncClient, username: str = "alice", times: int = 1) -> None:
    """`times` wrong-password logins, each of which must be a plain 401."""
    for _ in range(times):
        response = await login(client, username, WRONG)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_credentials"


def assert_locked(response: httpx.Response, retry_after: int | None = None) -> None:
    """429 account_locked with an integer Retry-After (exactly `retry_after` when given)."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == "account_locked"
    assert body["detail"]
    assert "access_token" not in body
    seconds = int(response.headers["retry-after"])
    assert response.headers["retry-after"] == str(seconds)
    assert 0 < seconds <= LOCKOUT.total_seconds()
    if retry_after is not None:
        assert seconds == retry_after


class TestLockout:
    async def test_five_failures_lock_even_the_right_password(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        assert_locked(await login(client), retry_after=900)
        assert_locked(await login(client, password=WRONG), retry_after=900)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert row.failures == 5
        assert row.locked_until == clock.now() + LOCKOUT

        clock.advance(minutes=5)
        assert_locked(await login(client), retry_after=600)
        # The lock is not extended by the attempts made while it holds.
        row = await throttle_row(container, "alice")
        assert row is not None
        assert row.locked_until == clock.now() + timedelta(minutes=10)

    async def test_four_failures_do_not_lock(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await fail(client, times=4)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert (row.failures, row.locked_until) == (4, None)
        await tokens(client)

    async def test_lock_expires(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        clock.advance(minutes=14, seconds=59)
        assert_locked(await login(client), retry_after=1)
        clock.advance(seconds=2)
        await tokens(client)

    async def test_after_expiry_the_count_starts_again(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        clock.advance(minutes=15, seconds=1)
        # Not one more failure to a new lock: five fresh ones.
        await fail(client, times=5)
        assert_locked(await login(client), retry_after=900)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert row.locked_until == clock.now() + LOCKOUT

    async def test_success_resets_the_count(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await fail(client, times=4)
        await tokens(client)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert (row.failures, row.locked_until) == (0, None)
        await fail(client, times=4)
        await tokens(client)


class TestSettings:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_failed_login_attempts": 2, "lockout_minutes": 3}

    async def test_limit_and_duration_follow_the_settings(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        await fail(client, times=2)
        assert_locked(await login(client), retry_after=180)
        clock.advance(minutes=3)
        await tokens(client)


class TestLoweredLimit:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"max_failed_login_attempts": 10}

    async def _lowered(self, container: Container, clock: FrozenClock) -> Any:
        """The app restarted with the limit lowered to 3, under the 4 failures alice has."""
        lowered = container.settings.model_copy(update={"max_failed_login_attempts": 3})
        return create_app(lowered, clock)

    async def test_the_right_password_still_signs_in(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=4)
        app = await self._lowered(container, clock)
        async with app.router.lifespan_context(app), make_client(app) as c:
            response = await asyncio.wait_for(login(c), timeout=5)
            assert response.status_code == 200, response.text
        row = await throttle_row(container, "alice")
        assert row is None or (row.failures, row.pending, row.locked_until) == (0, 0, None)

    async def test_the_next_failure_locks(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=4)
        app = await self._lowered(container, clock)
        async with app.router.lifespan_context(app), make_client(app) as c:
            # One check at a time gets through; its failure locks the name for the rest.
            wrong = asyncio.gather(*(login(c, "alice", WRONG) for _ in range(5)))
            answers = await asyncio.wait_for(wrong, timeout=10)
            assert Counter(r.status_code for r in answers) == {401: 1, 429: 4}
            assert_locked(await login(c), retry_after=900)
        row = await throttle_row(container, "alice")
        assert row is not None and row.failures == 5
        assert row.locked_until == clock.now() + LOCKOUT


class TestShortenedLockout:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"lockout_minutes": 5}

    async def test_a_lock_keeps_its_length_and_says_so(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        shortened = container.settings.model_copy(update={"lockout_minutes": 1})
        app = create_app(shortened, clock)
        async with app.router.lifespan_context(app), make_client(app) as c:
            locked = await login(c)
            assert locked.status_code == 429 and locked.headers["retry-after"] == "300"
            clock.advance(minutes=2)
            assert (await login(c)).headers["retry-after"] == "180"
            clock.advance(minutes=3)
            await tokens(c)


class TestUsernameKey:
    async def test_case_and_nfkc_variants_share_one_counter(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        # U+FF41... are full-width letters: NFKC makes them "alice" (and "ALICE").
        for name in ("Alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "aLiCe", "alice"):
            await fail(client, name)
        for name in ("alice", "ALICE", "\uff21\uff2c\uff29\uff23\uff25"):
            assert_locked(await login(client, name), retry_after=900)
        assert [(r.key, r.failures) for r in await user_rows(container)] == [("alice", 5)]

    async def test_another_name_is_not_affected(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        await add_user(container, "bob")
        await fail(client, times=5)
        await tokens(client, username="bob")


def comparable(response: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    """Status, body and headers, without the per-request id."""
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    return response.status_code, response.json(), headers


class TestUnknownUsername:
    async def test_locks_exactly_like_an_existing_one(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        statuses = []
        for step in range(1, 8):
            password = WRONG if step <= 5 else PASSWORD
            known = await login(client, "alice", password)
            unknown = await login(client, "mallory", password)
            assert comparable(known) == comparable(unknown), step
            statuses.append(known.status_code)
            clock.advance(seconds=30)
        assert statuses == [401] * 5 + [429] * 2
        # Locked at step 5; step 6 came 30 s and step 7 60 s later.
        assert_locked(await login(client, "mallory"), retry_after=900 - 90)
        row = await throttle_row(container, "mallory")
        assert row is not None
        assert row.locked_until is not None


async def at_once(app: Any, passwords: list[str], username: str) -> list[httpx.Response]:
    """One login per password, all sent together, each over its own client."""

    async def one(password: str) -> httpx.Response:
        async with make_client(app) as c:
            return await login(c, username, password)

    return await asyncio.gather(*(one(p) for p in passwords))


async def started(entered: list[str], count: int) -> None:
    """Wait (up to 15 s) until `count` password checks have started."""
    for _ in range(1500):
        if len(entered) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(entered)} checks started, expected {count}")


class TestConcurrency:
    @pytest.mark.parametrize("exists", [True, False], ids=["existing", "unknown"])
    async def test_simultaneous_wrong_logins(
        self, app: Any, container: Container, clock: FrozenClock, exists: bool
    ) -> None:
        if exists:
            await add_user(container, "dave")
        responses = await at_once(app, [WRONG] * 40, "dave")
        codes = Counter((r.status_code, r.json()["code"]) for r in responses)
        assert codes == {(401, "invalid_credentials"): 5, (429, "account_locked"): 35}, codes
        for response in responses:
            if response.status_code == 429:
                assert_locked(response, retry_after=900)
        row = await throttle_row(container, "dave")
        assert row is not None
        assert row.failures >= 5
        assert row.locked_until == clock.now() + LOCKOUT
        async with make_client(app) as c:
            assert_locked(await login(c, "dave"), retry_after=900)

    async def test_simultaneous_logins_some_with_the_right_password(
        self,
        app: Any,
        alice: Account,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Which of 40 simultaneous logins reaches the check first is the scheduler's choice
        # (on PostgreSQL, whichever gets a pooled connection first), and five wrong ones
        # first lock the name, as the contract allows. So the first right login is let into
        # its check before the burst and held there until four more checks have started:
        # it must then succeed, and the rest may land either side of its reset.
        entered: list[str] = []
        first = asyncio.Event()
        verify = container.hasher.verify

        async def held(password: str, password_hash: str) -> tuple[bool, str | None]:
            entered.append(password)
            if len(entered) == 1:
                await first.wait()
            return await verify(password, password_hash)

        monkeypatch.setattr(container.hasher, "verify", held)
        leading = asyncio.create_task(at_once(app, [PASSWORD], "alice"))
        await started(entered, 1)
        right = {13, 26, 39}
        passwords = [PASSWORD if i in right else WRONG for i in range(1, 40)]
        burst = asyncio.create_task(at_once(app, passwords, "alice"))
        await started(entered, 5)
        first.set()
        (lead,) = await leading
        assert lead.status_code == 200, lead.text
        outcomes: Counter[tuple[int, str]] = Counter()
        for password, response in zip(passwords, await burst, strict=True):
            code = response.json().get("code", "ok")
            outcomes[(response.status_code, code)] += 1
            if password == PASSWORD:
                assert (response.status_code, code) in {(200, "ok"), (429, "account_locked")}
            else:
                assert (response.status_code, code) in {
                    (401, "invalid_credentials"),
                    (429, "account_locked"),
                }
        successes = 1 + outcomes[(200, "ok")]
        # Five checks at most, plus for each success the (at most four) failures counted
        # before it, which it forgives.
        assert outcomes[(401, "invalid_credentials")] <= 5 + 4 * successes, outcomes

    async def test_attempts_after_a_success_still_count(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        container: Container,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # A right password is being checked while four wrong ones arrive; it finishes first.
        # Its reset forgives what came before it, not those four: one more failure locks.
        entered: list[str] = []
        gates = {PASSWORD: asyncio.Event(), WRONG: asyncio.Event()}
        verify = container.hasher.verify

        async def gated(password: str, password_hash: str) -> tuple[bool, str | None]:
            entered.append(password)
            await gates[password].wait()
            return await verify(password, password_hash)

        monkeypatch.setattr(container.hasher, "verify", gated)
        right = asyncio.create_task(login(client))
        await started(entered, 1)
        wrong = [asyncio.create_task(login(client, password=WRONG)) for _ in range(4)]
        await started(entered, 5)
        gates[PASSWORD].set()
        assert (await right).status_code == 200
        gates[WRONG].set()
        assert [(await w).status_code for w in wrong] == [401] * 4

        await fail(client)
        assert_locked(await login(client), retry_after=900)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert row.failures == 5


class TestLockIsKept:
    async def test_in_the_database(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert (row.failures, row.locked_until) == (5, clock.now() + LOCKOUT)

    async def test_across_a_restart(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        await fail(client, times=5)
        clock.advance(minutes=1)
        restarted = create_app(container.settings, clock)
        async with restarted.router.lifespan_context(restarted), make_client(restarted) as c:
            assert_locked(await login(c), retry_after=840)
            clock.advance(minutes=14)
            await tokens(c)


class TestSessionsSurviveALock:
    async def test_refresh_and_access_still_work(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client, fingerprint="phone")
        await fail(client, times=5)
        assert_locked(await login(client))

        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["session_id"] == pair["session_id"]
        me = await client.get(ME, headers=bearer(refreshed.json()["access_token"]))
        assert me.status_code == 200
        assert me.json()["username"] == "alice"
        assert_locked(await login(client))


class TestEvents:
    async def test_account_locked_is_recorded_once(
        self, client: httpx.AsyncClient, alice: Account, container: Container, clock: FrozenClock
    ) -> None:
        for _ in range(5):
            await fail(client)
            clock.advance(seconds=1)
        locked_at = clock.now() - timedelta(seconds=1)
        for _ in range(2):
            assert_locked(await login(client))
            clock.advance(seconds=1)
        async with container.sessionmaker() as db:
            events = (
                await db.scalars(select(SecurityEvent).where(SecurityEvent.user_id == alice.id))
            ).all()
        assert Counter(e.type for e in events) == {"login_failed": 5, "account_locked": 1}
        (locked,) = [e for e in events if e.type == "account_locked"]
        # Recorded with the fifth failure, not with the refused attempts after it.
        assert locked.created_at == locked_at
        assert locked.ip_address == "203.0.113.7"
        # The user sees it too, once the lock is over.
        clock.advance(minutes=15)
        access = (await tokens(client))["access_token"]
        visible = await client.get("/api/v1/auth/events", headers=bearer(access))
        assert "account_locked" in [e["type"] for e in visible.json()]


class TestPasswordChangeFailures:
    async def test_count_toward_the_same_lock(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        access = (await tokens(client))["access_token"]
        for _ in range(3):
            response = await client.post(
                "/api/v1/auth/password",
                json={"current_password": WRONG, "new_password": "a new password, long enough"},
                headers=bearer(access),
            )
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "invalid_credentials"
        await fail(client, "ALICE", times=2)
        assert_locked(await login(client), retry_after=900)
        row = await throttle_row(container, "alice")
        assert row is not None
        assert row.failures == 5
