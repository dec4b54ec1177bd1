"""Passwords: Argon2id parameters, bcrypt read-only with upgrade, exactness, rules, and
hashing off the event loop in a bounded pool."""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import argon2
import bcrypt
import httpx
import pytest
from sqlalchemy import select, update

from conductor_api.config import Settings
from conductor_api.container import Container
from conductor_api.errors import PasswordRejected
from conductor_api.security.passwords import (
    MAX_PASSWORD_LENGTH,
    PasswordHasher,
    check_password_rules,
    common_passwords,
)
from conductor_api.users.models import User
from tests.conftest import PASSWORD, Account, add_user, login

ARGON2_RE = re.compile(
    r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$"
)
MIN_LENGTH = Settings.model_fields["min_password_length"].default


def argon2_params(password_hash: str) -> tuple[int, int, int]:
    """(memory KiB, passes, lanes) of an encoded Argon2id hash."""
    match = ARGON2_RE.match(password_hash)
    assert match, password_hash
    m, t, p = match.groups()
    return int(m), int(t), int(p)


def assert_owasp_argon2id(password_hash: str) -> None:
    """At least OWASP's Argon2id floor: m=19456 KiB, t=2, p=1."""
    m, t, p = argon2_params(password_hash)
    assert m >= 19456
    assert t >= 2
    assert p >= 1


def bcrypt_hash(password: bytes) -> str:
    """A hash as an older install stored it."""
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()


async def stored_hash(container: Container, account: Account) -> str:
    """What the users table holds for `account`."""
    async with container.sessionmaker() as db:
        value = await db.scalar(select(User.password_hash).where(User.id == account.id))
    assert value is not None
    return value


async def store_hash(container: Container, account: Account, password_hash: str) -> None:
    """Replace the stored hash, as if the account came from an older install."""
    async with container.sessionmaker.begin() as db:
        await db.execute(
            update(User).where(User.id == account.id).values(password_hash=password_hash)
        )


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    """A hasher of the test's own, stopped afterwards."""
    h = PasswordHasher(concurrency=2)
    yield h
    h.close()


class TestArgon2id:
    async def test_new_hashes_meet_owasp_parameters(self, hasher: PasswordHasher) -> None:
        password_hash = await hasher.hash(PASSWORD)
        assert_owasp_argon2id(password_hash)
        assert PASSWORD not in password_hash

    async def test_hashes_are_salted(self, hasher: PasswordHasher) -> None:
        assert await hasher.hash(PASSWORD) != await hasher.hash(PASSWORD)

    async def test_verify(self, hasher: PasswordHasher) -> None:
        password_hash = await hasher.hash(PASSWORD)
        assert await hasher.verify(PASSWORD, password_hash) == (True, None)
        ok, _ = await hasher.verify(PASSWORD + "x", password_hash)
        assert not ok

    async def test_unknown_hash_format_never_verifies(self, hasher: PasswordHasher) -> None:
        assert await hasher.verify(PASSWORD, PASSWORD) == (False, None)
        assert await hasher.verify(PASSWORD, "") == (False, None)

    async def test_stored_hash_of_a_new_user(self, container: Container, alice: Account) -> None:
        password_hash = await stored_hash(container, alice)
        assert_owasp_argon2id(password_hash)
        assert PASSWORD not in password_hash


class TestBcryptCompatibility:
    async def test_bcrypt_hash_verifies_and_asks_for_an_upgrade(
        self, hasher: PasswordHasher
    ) -> None:
        ok, new_hash = await hasher.verify(PASSWORD, bcrypt_hash(PASSWORD.encode()))
        assert ok
        assert new_hash is not None
        assert_owasp_argon2id(new_hash)
        assert await hasher.verify(PASSWORD, new_hash) == (True, None)

    async def test_wrong_password_against_bcrypt(self, hasher: PasswordHasher) -> None:
        old = bcrypt_hash(PASSWORD.encode())
        assert await hasher.verify(PASSWORD + " ", old) == (False, None)
        assert await hasher.verify(PASSWORD.upper(), old) == (False, None)

    async def test_bcrypt_truncation_does_not_leak(self, hasher: PasswordHasher) -> None:
        # Two 80-byte passwords sharing their first 72 bytes. bcrypt only ever read 72
        # bytes, so the hash an older install stored for `theirs` is the hash of its
        # first 72 bytes; `mine` must not pass for it.
        prefix = "p" * 72
        theirs, mine = prefix + "THEIRS!!", prefix + "mine1234"
        assert len(theirs.encode()) == len(mine.encode()) == 80
        old = bcrypt_hash(theirs.encode()[:72])
        ok, new_hash = await hasher.verify(mine, old)
        assert not ok
        assert new_hash is None

    async def test_login_upgrades_bcrypt_to_argon2id(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        await store_hash(container, alice, bcrypt_hash(PASSWORD.encode()))
        response = await login(client)
        assert response.status_code == 200, response.text
        upgraded = await stored_hash(container, alice)
        assert upgraded.startswith("$argon2id$")
        assert_owasp_argon2id(upgraded)
        # The upgraded hash is the same password.
        assert (await login(client)).status_code == 200
        assert await stored_hash(container, alice) == upgraded

    async def test_login_upgrades_weak_argon2(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
        await store_hash(container, alice, weak)
        assert (await login(client)).status_code == 200
        assert_owasp_argon2id(await stored_hash(container, alice))

    async def test_wrong_password_against_bcrypt_over_http(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        old = bcrypt_hash(PASSWORD.encode())
        await store_hash(container, alice, old)
        response = await login(client, password=PASSWORD + "!")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"
        assert await stored_hash(container, alice) == old

    async def test_truncated_match_over_http(
        self, client: httpx.AsyncClient, container: Container, alice: Account
    ) -> None:
        prefix = "q" * 72
        await store_hash(container, alice, bcrypt_hash((prefix + "THEIRS!!").encode()[:72]))
        response = await login(client, password=prefix + "mine1234")
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"


class TestExactness:
    @pytest.mark.parametrize(
        "typed",
        [
            PASSWORD + " ",
            " " + PASSWORD,
            PASSWORD.upper(),
            PASSWORD.capitalize(),
            PASSWORD[:-1],
            PASSWORD + "\n",
        ],
    )
    async def test_near_misses_are_refused(
        self, typed: str, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await login(client, password=typed)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"

    async def test_exact_password_with_spaces_is_kept(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        password = "  padded on both sides  "
        await add_user(container, "bob", password)
        assert (await login(client, "bob", password)).status_code == 200
        assert (await login(client, "bob", password.strip())).status_code == 401

    async def test_long_password_is_not_truncated(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        password = STRONG_15 + "L" * 185
        await add_user(container, "carol", password)
        assert (await login(client, "carol", password)).status_code == 200
        assert (await login(client, "carol", password[:-1] + "M")).status_code == 401
        assert (await login(client, "carol", password[:72])).status_code == 401


# Fifteen characters that zxcvbn scores 4: the length tests are about length alone.
STRONG_15 = "Tq9#vL2mWx8!pZ4"
ACCENTED_15 = "éàüöñçøåœæìòùâê"


class TestRules:
    def test_default_minimum_is_fifteen(self) -> None:
        assert MIN_LENGTH == 15

    def test_shorter_than_minimum_is_refused(self) -> None:
        with pytest.raises(PasswordRejected):
            check_password_rules(STRONG_15[:14], MIN_LENGTH)
        check_password_rules(STRONG_15, MIN_LENGTH)

    def test_length_counts_characters_not_bytes(self) -> None:
        with pytest.raises(PasswordRejected):
            check_password_rules(ACCENTED_15[:14], MIN_LENGTH)
        assert len(ACCENTED_15.encode()) > 15
        check_password_rules(ACCENTED_15, MIN_LENGTH)

    def test_longer_than_maximum_is_refused(self) -> None:
        assert MAX_PASSWORD_LENGTH == 1024
        longest = (STRONG_15 + "ab" * 512)[:1024]
        check_password_rules(longest, MIN_LENGTH)
        with pytest.raises(PasswordRejected):
            check_password_rules(longest + "c", MIN_LENGTH)

    def test_no_composition_rules(self) -> None:
        check_password_rules("all lower case words here", MIN_LENGTH)
        check_password_rules("ÉTÉ À MONTRÉAL, HIVER À QUÉBEC", MIN_LENGTH)

    def test_common_password_is_refused(self) -> None:
        common = sorted(common_passwords(), key=len, reverse=True)
        assert len(common) > 10_000
        assert "password1234" in common
        assert "1qaz2wsx3edc4rfv" in common
        long_enough = [p for p in common if len(p) >= MIN_LENGTH]
        candidate, minimum = (long_enough[0], MIN_LENGTH) if long_enough else ("password1234", 8)
        with pytest.raises(PasswordRejected):
            check_password_rules(candidate, minimum)
        with pytest.raises(PasswordRejected):
            check_password_rules(candidate.upper(), minimum)
        check_password_rules(candidate + "-but-longer", minimum)

    def test_username_as_password_is_refused(self) -> None:
        name = "averyverylongusername"
        with pytest.raises(PasswordRejected):
            check_password_rules(name, MIN_LENGTH, name)
        with pytest.raises(PasswordRejected):
            check_password_rules(name.upper(), MIN_LENGTH, name)
        check_password_rules(name, MIN_LENGTH, "someone-else")

    async def test_create_user_applies_the_rules(self, container: Container) -> None:
        with pytest.raises(PasswordRejected):
            await add_user(container, "dave", "short")
        with pytest.raises(PasswordRejected):
            await add_user(container, "averyverylongusername", "averyverylongusername")
        async with container.sessionmaker() as db:
            assert await db.scalar(select(User.id)) is None


class TestCommonPasswordWithLowerMinimum:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"min_password_length": 8}

    async def test_common_password_is_refused_for_new_users(self, container: Container) -> None:
        assert "password1234" in common_passwords()
        with pytest.raises(PasswordRejected):
            await add_user(container, "erin", "password1234")
        await add_user(container, "erin", "password12345-unusual")


async def assert_pool_cap(
    hasher: PasswordHasher, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run many hashes at once and check that no more than `cap` ever run together."""
    lock = threading.Lock()
    running = peak = 0

    def slow_hash(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return "$fake$" + password

    monkeypatch.setattr(hasher._hash, "hash", slow_hash)
    results = await asyncio.gather(*(hasher.hash(str(i)) for i in range(cap * 4)))
    assert results == ["$fake$" + str(i) for i in range(cap * 4)]
    assert peak == cap


class TestOffTheEventLoop:
    async def test_loop_keeps_ticking_while_verifying(self) -> None:
        # An expensive stored hash makes a stalled loop obvious against scheduler jitter:
        # if a verify ran on the loop, one gap would last a whole verify.
        stored = argon2.PasswordHasher(time_cost=8, memory_cost=19456, parallelism=1).hash(PASSWORD)
        reference = argon2.PasswordHasher()
        durations = []
        for _ in range(3):
            started = time.perf_counter()
            reference.verify(stored, PASSWORD)
            durations.append(time.perf_counter() - started)
        one_verify = statistics.median(durations)

        hasher = PasswordHasher(concurrency=1)
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        try:
            await asyncio.sleep(0)
            results = await asyncio.gather(*(hasher.verify(PASSWORD, stored) for _ in range(4)))
        finally:
            done.set()
            await ticker
            hasher.close()
        assert all(ok for ok, _ in results)
        assert len(gaps) >= 10
        assert max(gaps) < 0.5 * one_verify, (max(gaps), one_verify)

    async def test_pool_is_capped_at_its_concurrency(
        self, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await assert_pool_cap(hasher, 2, monkeypatch)


class TestConfiguredConcurrency:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"password_hash_concurrency": 3}

    async def test_app_hasher_is_capped_at_password_hash_concurrency(
        self, container: Container, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert container.settings.password_hash_concurrency == 3
        await assert_pool_cap(container.hasher, 3, monkeypatch)
