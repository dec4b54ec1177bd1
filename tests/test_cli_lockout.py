"""The operator's view of lockouts: `users list` says until when a name is locked, and
`users unlock` clears it, on the database file the server uses."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conductor_api.app import create_app
from conductor_api.auth.models import LoginThrottle
from tests.conftest import PASSWORD, make_settings
from tests.operator import cli, login, server_on

WRONG = "wrong password, but long enough"
LOCKED = re.compile(
    r"^alice\tactive\tlocked until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\t0 sessions"
    r"\tno second factor\t0 passkeys$"
)


class TestUnlock:
    async def test_list_shows_the_lock_and_unlock_clears_it(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        created = cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr

        async with server_on(data) as client:
            for name in ("alice", "ghost"):
                for _ in range(5):
                    assert (await login(client, name, WRONG)).status_code == 401
            locked = await login(client, "alice", PASSWORD)
            assert locked.status_code == 429, locked.text
            assert locked.json()["code"] == "account_locked"
        locked_at = datetime.now(UTC)

        listed = cli(data, "users", "list")
        assert listed.returncode == 0, listed.stderr
        match = LOCKED.match(listed.stdout.strip())
        assert match is not None, listed.stdout
        until = datetime.fromisoformat(match[1])
        assert locked_at + timedelta(minutes=14) < until <= locked_at + timedelta(minutes=15)

        # The name as the operator types it: the lock's key is case-insensitive.
        unlocked = cli(data, "users", "unlock", "ALICE")
        assert unlocked.returncode == 0, unlocked.stderr
        assert unlocked.stdout.strip() == "ALICE unlocked"
        assert unlocked.stderr == ""

        listed = cli(data, "users", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            "alice\tactive\tnot locked\t0 sessions\tno second factor\t0 passkeys"
        ]

        async with server_on(data) as client:
            assert (await login(client, "alice", PASSWORD)).status_code == 200
            # Unlocking one name leaves the others locked.
            ghost = await login(client, "ghost", PASSWORD)
            assert ghost.status_code == 429
            assert ghost.json()["code"] == "account_locked"

        # Unknown names are locked like real ones, and unlocked the same way.
        ghost_unlocked = cli(data, "users", "unlock", "ghost")
        assert ghost_unlocked.returncode == 0, ghost_unlocked.stderr
        assert ghost_unlocked.stdout.strip() == "ghost unlocked"
        nobody = cli(data, "users", "unlock", "nobody")
        assert nobody.returncode == 0, nobody.stderr
        assert nobody.stdout.strip() == "nobody was not locked"
        async with server_on(data) as client:
            assert (await login(client, "ghost", PASSWORD)).status_code == 401


class TestUnlockDeviceTokens:
    async def test_unlock_clears_a_locked_device_token_of_the_user(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        created = cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr

        def with_token(password: str, token: str) -> dict[str, str]:
            return {
                "username": "alice",
                "password": password,
                "device_name": "Pixel",
                "device_token": token,
            }

        async with server_on(data) as client:
            first = await login(client, "alice", PASSWORD)
            assert first.status_code == 200, first.text
            token = first.json()["device_token"]
            # The phone's own wrong guesses lock its device token, not the name.
            for _ in range(5):
                wrong = await client.post("/api/v1/auth/login", json=with_token(WRONG, token))
                assert wrong.status_code == 401, wrong.text
            locked = await client.post("/api/v1/auth/login", json=with_token(PASSWORD, token))
            assert locked.status_code == 429, locked.text
            assert locked.json()["code"] == "account_locked"

        unlocked = cli(data, "users", "unlock", "alice")
        assert unlocked.returncode == 0, unlocked.stderr
        assert unlocked.stdout.strip() == "alice unlocked"

        async with server_on(data) as client:
            again = await client.post("/api/v1/auth/login", json=with_token(PASSWORD, token))
            assert again.status_code == 200, again.text
            assert again.json()["device_token"] == token
        # Nothing was left locked to clear a second time.
        twice = cli(data, "users", "unlock", "alice")
        assert twice.returncode == 0, twice.stderr
        assert twice.stdout.strip() == "alice was not locked"


class TestUnlockStaleSlots:
    async def test_unlock_clears_the_slots_of_a_process_killed_mid_check(
        self, tmp_path: Path
    ) -> None:
        data = tmp_path / "data"
        created = cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        # What a worker killed during a burst of wrong passwords leaves: five checks that
        # never gave their slots back (stale only in a minute), so every slot is taken.
        app = create_app(make_settings(data, None))
        async with app.router.lifespan_context(app):
            now = datetime.now(UTC)
            async with app.state.container.sessionmaker.begin() as db:
                db.add(
                    LoginThrottle(
                        scope="user",
                        key="alice",
                        failures=0,
                        window_started_at=now,
                        locked_until=None,
                        pending=5,
                        pending_until=now + timedelta(minutes=1),
                    )
                )

        unlocked = cli(data, "users", "unlock", "alice")
        assert unlocked.returncode == 0, unlocked.stderr
        assert unlocked.stdout.strip() == "alice unlocked"
        async with server_on(data) as client:
            assert (await login(client, "alice", PASSWORD)).status_code == 200
