"""The key set's rules on SQLite and PostgreSQL: creation, rotation, retirement, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.config import Settings
from conductor_api.keys import crypto, service
from conductor_api.keys.models import SigningKey
from tests.keys.conftest import sessionmaker_for, stored_keys, wipe_keys

T = TypeVar("T")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEK = b"k" * 32
OTHER_KEK = b"o" * 32
Fn = Callable[[AsyncSession, crypto.KeyCipher, service.KeyPolicy, datetime], Awaitable[T]]


def policy(
    algorithm: str = "EdDSA", rotation_days: int = 30, ttl_minutes: int = 30
) -> service.KeyPolicy:
    """The default policy: 30-minute access tokens, 300 s publish delay."""
    return service.KeyPolicy(
        algorithm=algorithm,
        access_ttl=timedelta(minutes=ttl_minutes),
        publish=timedelta(seconds=300),
        rotation=timedelta(days=rotation_days) if rotation_days else None,
    )


@pytest.fixture
async def empty(settings: Settings) -> AsyncIterator[Settings]:
    """Settings on the run's database with no signing keys."""
    await wipe_keys(settings)
    yield settings
    await wipe_keys(settings)


async def run(
    settings: Settings, fn: Fn[T], *, at: datetime = NOW, kek: bytes = KEK,
    p: service.KeyPolicy | None = None,
) -> T:  # fmt: skip
    """`fn` in one committed transaction, as one instance would run it."""
    engine, sessions = sessionmaker_for(settings)
    try:
        async with sessions.begin() as db:
            return await fn(db, crypto.KeyCipher(kek), p or policy(), at)
    finally:
        await engine.dispose()


def states(rows: list[SigningKey]) -> list[tuple[str, str]]:
    """(state, algorithm) of each key, oldest first."""
    return [(r.state, r.algorithm) for r in rows]


class TestMaintain:
    async def test_first_start_makes_one_sealed_current_key(self, empty: Settings) -> None:
        await run(empty, service.maintain)
        await run(empty, service.maintain)  # idempotent
        rows = await stored_keys(empty)
        assert states(rows) == [("current", "EdDSA")]
        key = rows[0]
        assert key.activated_at == NOW and key.private_key is not None
        assert isinstance(crypto.KeyCipher(KEK).open(key.kid, key.private_key), crypto.PrivateKey)
        with pytest.raises(crypto.KeyDecryptionError):
            crypto.KeyCipher(OTHER_KEK).open(key.kid, key.private_key)
        # The kid is the associated data: a sealed key moved to another row does not open.
        with pytest.raises(crypto.KeyDecryptionError):
            crypto.KeyCipher(KEK).open("20261125_other", key.private_key)

    async def test_a_wrong_kek_is_refused_and_generates_nothing(self, empty: Settings) -> None:
        await run(empty, service.maintain)
        with pytest.raises(crypto.KeyDecryptionError):
            await run(empty, service.maintain, kek=OTHER_KEK, at=NOW + timedelta(days=90))
        assert states(await stored_keys(empty)) == [("current", "EdDSA")]

    async def test_rotation_publish_promote_retire(self, empty: Settings) -> None:
        await run(empty, service.maintain)
        day29 = NOW + timedelta(days=29)
        assert not service.due(await stored_keys(empty), policy(), day29)
        day30 = NOW + timedelta(days=30)
        assert service.due(await stored_keys(empty), policy(), day30)
        await run(empty, service.maintain, at=day30)
        rows = await stored_keys(empty)
        assert states(rows) == [("current", "EdDSA"), ("next", "EdDSA")]
        assert rows[1].sign_after == day30 + timedelta(seconds=300)
        await run(empty, service.maintain, at=day30 + timedelta(seconds=299))
        assert [r.state for r in await stored_keys(empty)] == ["current", "next"]
        await run(empty, service.maintain, at=day30 + timedelta(seconds=300))
        rows = await stored_keys(empty)
        assert [r.state for r in rows] == ["previous", "current"]
        assert rows[0].private_key is not None
        # Retired once every token it signed has expired (30 min), plus the re-read margin.
        ended = day30 + timedelta(seconds=300)
        await run(empty, service.maintain, at=ended + timedelta(minutes=30))
        assert [r.state for r in await stored_keys(empty)] == ["previous", "current"]
        await run(empty, service.maintain, at=ended + timedelta(minutes=31))
        rows = await stored_keys(empty)
        assert [r.state for r in rows] == ["retired", "current"]
        assert rows[0].private_key is None and rows[0].retired_at is not None

    async def test_a_key_outlives_the_longest_tokens_it_signed_after_a_shorter_restart(
        self, empty: Settings
    ) -> None:
        """Signed with 30-minute tokens, then rotated at once and the instance restarted
        with 1-minute ones: the old key stays published until the 30-minute tokens expire."""
        await run(empty, service.maintain)  # an instance with 30-minute tokens starts
        assert [r.access_ttl_seconds for r in await stored_keys(empty)] == [1800]

        async def rotate_now(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> None:
            await service.rotate(db, c, p, at, at_once=True)

        short = policy(ttl_minutes=1)
        rotated = NOW + timedelta(minutes=5)
        await run(empty, rotate_now, p=short, at=rotated)
        rows = await stored_keys(empty)
        assert (rows[0].state, rows[0].access_ttl_seconds) == ("previous", 1800)
        for minutes in (2, 30):
            await run(empty, service.maintain, p=short, at=rotated + timedelta(minutes=minutes))
            assert [r.state for r in await stored_keys(empty)] == ["previous", "current"]
        await run(empty, service.maintain, p=short, at=rotated + timedelta(minutes=31))
        assert [r.state for r in await stored_keys(empty)] == ["retired", "current"]

    async def test_the_recorded_lifetime_only_grows(self, empty: Settings) -> None:
        await run(empty, service.maintain, p=policy(ttl_minutes=60))
        await run(empty, service.maintain, p=policy(ttl_minutes=1))
        assert [r.access_ttl_seconds for r in await stored_keys(empty)] == [3600]

    async def test_rotation_days_zero_never_rotates(self, empty: Settings) -> None:
        never = policy(rotation_days=0)
        await run(empty, service.maintain, p=never)
        await run(empty, service.maintain, p=never, at=NOW + timedelta(days=3650))
        assert [r.state for r in await stored_keys(empty)] == ["current"]

    async def test_algorithm_change_makes_a_key_of_the_new_one_current(
        self, empty: Settings
    ) -> None:
        await run(empty, service.maintain)
        await run(empty, service.maintain, p=policy("ES256"), at=NOW + timedelta(minutes=1))
        assert states(await stored_keys(empty)) == [("previous", "EdDSA"), ("current", "ES256")]


class TestRotate:
    async def test_rotate_publishes_a_next_key_and_a_second_rotate_keeps_it(
        self, empty: Settings
    ) -> None:
        async def rotate(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> str:
            return (await service.rotate(db, c, p, at, at_once=False)).kid

        first = await run(empty, rotate)
        assert await run(empty, rotate) == first
        rows = await stored_keys(empty)
        assert sorted((r.state, r.kid == first) for r in rows) == [
            ("current", False),
            ("next", True),
        ]

    async def test_rotate_now_makes_the_new_key_current(self, empty: Settings) -> None:
        async def rotate(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> str:
            return (await service.rotate(db, c, p, at, at_once=True)).kid

        kid = await run(empty, rotate)
        rows = await stored_keys(empty)
        assert sorted((r.state, r.kid == kid) for r in rows) == [
            ("current", True),
            ("previous", False),
        ]

    async def test_two_instances_rotating_at_once_end_with_one_current_key(
        self, empty: Settings
    ) -> None:
        async def rotate(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> str:
            return (await service.rotate(db, c, p, at, at_once=True)).kid

        await asyncio.gather(*(run(empty, service.maintain) for _ in range(3)))
        assert [r.state for r in await stored_keys(empty)] == ["current"]
        await asyncio.gather(*(run(empty, rotate) for _ in range(3)))
        rows = await stored_keys(empty)
        assert [r.state for r in rows].count("current") == 1
        assert [r.state for r in rows].count("next") == 0

    async def test_the_database_refuses_a_second_current_key(self, empty: Settings) -> None:
        await run(empty, service.maintain)

        async def second(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> None:
            private = crypto.generate("EdDSA")
            db.add(
                SigningKey(
                    kid="20261125_second", algorithm="EdDSA", state="current",
                    public_key=crypto.public_pem(private), private_key=None,
                    created_at=at, sign_after=at,
                )
            )  # fmt: skip
            await db.flush()

        with pytest.raises(sa_exc.IntegrityError):
            await run(empty, second)


class TestRevoke:
    async def test_revoking_the_current_key_makes_a_new_one_current(self, empty: Settings) -> None:
        await run(empty, service.maintain)
        kid = (await stored_keys(empty))[0].kid

        async def revoke(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> Any:
            return await service.revoke(db, c, p, kid, at)

        assert await run(empty, revoke) is not None
        rows = {r.kid: r for r in await stored_keys(empty)}
        assert sorted(r.state for r in rows.values()) == ["current", "revoked"]
        assert rows[kid].state == "revoked"
        assert rows[kid].private_key is None and rows[kid].revoked_at == NOW
        # Again: already revoked, nothing changes.
        await run(empty, revoke)
        assert sorted(r.state for r in await stored_keys(empty)) == ["current", "revoked"]

    async def test_revoking_a_previous_key_keeps_the_current(self, empty: Settings) -> None:
        async def rotate(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> Any:
            return await service.rotate(db, c, p, at, at_once=True)

        await run(empty, rotate)
        old = next(r.kid for r in await stored_keys(empty) if r.state == "previous")

        async def revoke(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> Any:
            return await service.revoke(db, c, p, old, at)

        await run(empty, revoke)
        rows = {r.kid: r.state for r in await stored_keys(empty)}
        assert rows.pop(old) == "revoked"
        assert list(rows.values()) == ["current"]

    async def test_unknown_kid(self, empty: Settings) -> None:
        async def revoke(db: AsyncSession, c: crypto.KeyCipher, p: Any, at: datetime) -> Any:
            return await service.revoke(db, c, p, "nope", at)

        assert await run(empty, revoke) is None
