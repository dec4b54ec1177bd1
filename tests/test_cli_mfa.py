"""The operator and the second factor: `users list` shows it, `users reset-mfa` turns it
off, voids the recovery codes and revokes every session; a KEY_ENCRYPTION_KEY that does not
open the stored secrets stops `serve` with one line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import PASSWORD, TEST_KEK, bearer
from tests.mfa.helpers import MFA, enable_totp, mfa_status
from tests.operator import cli, login, server_on


class TestResetMfa:
    async def test_list_then_reset(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        created = cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        async with server_on(data) as client:
            access = (await login(client)).json()["access_token"]
            await enable_totp(client, access, datetime.now(UTC))
            pending = await login(client)
            assert pending.status_code == 403, pending.text

        listed = cli(data, "users", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            "alice\tactive\tnot locked\t1 sessions\ttotp\t0 passkeys"
        ]

        reset = cli(data, "users", "reset-mfa", "ALICE")
        assert reset.returncode == 0, reset.stderr
        assert reset.stdout.strip() == "alice second factor reset; 1 sessions revoked"
        # Standard error is for errors: the event is in the database, not a stray log line.
        assert reset.stderr == ""
        assert cli(data, "users", "list").stdout.splitlines() == [
            "alice\tactive\tnot locked\t0 sessions\tno second factor\t0 passkeys"
        ]
        async with server_on(data) as client:
            # Every session is gone, and the next sign-in is one step again.
            assert (await client.get(MFA, headers=bearer(access))).status_code == 401
            fresh = await login(client)
            assert fresh.status_code == 200, fresh.text
            status = await mfa_status(client, fresh.json()["access_token"])
            assert status == {"totp": False, "recovery_codes_left": 0, "passkeys": 0}

        again = cli(data, "users", "reset-mfa", "alice")
        assert again.stdout.strip() == "alice had no second factor; 1 sessions revoked"
        unknown = cli(data, "users", "reset-mfa", "nobody")
        assert unknown.returncode == 1
        assert unknown.stderr.strip().splitlines() == [
            "conductor-api: error: No user named 'nobody'"
        ]

    async def test_serve_with_another_key_stops_in_one_line(self, tmp_path: Path) -> None:
        data = tmp_path / "data"
        cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        async with server_on(data) as client:
            access = (await login(client)).json()["access_token"]
            await enable_totp(client, access, datetime.now(UTC))
        other = "b3RoZXIta2V5LWVuY3J5cHRpb24ta2V5LWZvci10aGUtdGVzdHM"
        result = cli(data, "serve", "--port", "1", kek=other)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("conductor-api: error: KEY_ENCRYPTION_KEY:")
        assert other not in result.stderr and TEST_KEK not in result.stderr
        assert "Traceback" not in result.stderr
