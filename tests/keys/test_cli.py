"""`conductor-api keys ...` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sqlite3
import subprocess
from pathlib import Path

import asyncpg

from tests.conftest import TEST_KEK
from tests.test_cli import Cli, one_line_error

# A well-formed key-encryption key, but not the one the keys were sealed with.
WRONG_KEK = "d3Jvbmcta2V5LWVuY3J5cHRpb24ta2V5LTMyLWJ5dGVzIQ"


def test_list_rotate_revoke(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "data")
    assert cli("keys", "list").stdout.strip() == "no keys"
    published = cli("keys", "rotate")
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("key ") and "published; signs from" in published.stdout
    lines = [line.split("\t") for line in cli("keys", "list").stdout.splitlines()]
    assert sorted(line[2] for line in lines) == ["current", "next"]
    assert {line[1] for line in lines} == {"EdDSA"}
    now = cli("keys", "rotate", "--now")
    assert now.returncode == 0 and now.stdout.strip().endswith("is current")
    current = next(
        line[0]
        for line in (x.split("\t") for x in cli("keys", "list").stdout.splitlines())
        if line[2] == "current"
    )
    revoked = cli("keys", "revoke", current)
    assert revoked.returncode == 0
    assert revoked.stdout.startswith(f"key {current} revoked; key ")
    states = {x.split("\t")[0]: x.split("\t")[2] for x in cli("keys", "list").stdout.splitlines()}
    assert states[current] == "revoked" and list(states.values()).count("current") == 1
    assert "already revoked" in cli("keys", "revoke", current).stdout
    unknown = cli("keys", "revoke", "nope")
    one_line_error(unknown, "no key 'nope'")
    assert unknown.returncode == 1
    malformed = cli("keys", "revoke", "bad/kid!")
    one_line_error(malformed, "not a key id")
    assert malformed.returncode == 2
    # Another key-encryption key: one line naming it, and nothing is generated.
    wrong = cli("keys", "rotate", env={"KEY_ENCRYPTION_KEY": WRONG_KEK})
    one_line_error(wrong, "KEY_ENCRYPTION_KEY")
    assert wrong.returncode == 2
    assert len(cli("keys", "list").stdout.splitlines()) == len(states)


def test_a_rotation_with_another_algorithm_than_the_sets_is_refused(tmp_path: Path) -> None:
    """The servers run ES256; `keys rotate` run without their settings (EdDSA by default)
    would switch the set at once, with no publish delay: refused, and nothing changes."""
    cli = Cli(tmp_path / "data")
    es256 = {"JWT_ALGORITHM": "ES256"}
    assert cli("keys", "rotate", "--now", env=es256).returncode == 0
    before = cli("keys", "list").stdout
    current = next(x.split("\t")[0] for x in before.splitlines() if x.split("\t")[2] == "current")
    for args in (("keys", "rotate"), ("keys", "rotate", "--now"), ("keys", "revoke", current)):
        refused = cli(*args)
        one_line_error(refused, "JWT_ALGORITHM is EdDSA", "current key is ES256")
        assert refused.returncode == 1
        assert cli("keys", "list").stdout == before
    assert cli("keys", "rotate", env=es256).returncode == 0


def test_rotate_in_hs256_mode_is_refused(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "data")
    one_line_error(cli("keys", "rotate", env={"JWT_ALGORITHM": "HS256"}), "JWT_ALGORITHM")


def test_revoke_with_another_key_encryption_key_changes_nothing(tmp_path: Path) -> None:
    # Revoking the current key makes a new one: sealed under the wrong key, it would leave a
    # set that no KEY_ENCRYPTION_KEY opens whole, and no server could start.
    cli = Cli(tmp_path / "data")
    assert cli("keys", "rotate", "--now").returncode == 0
    before = cli("keys", "list").stdout
    current = next(x.split("\t")[0] for x in before.splitlines() if x.split("\t")[2] == "current")
    wrong = cli("keys", "revoke", current, env={"KEY_ENCRYPTION_KEY": WRONG_KEK})
    one_line_error(wrong, "KEY_ENCRYPTION_KEY")
    assert wrong.returncode == 2
    after = cli("keys", "list")
    assert after.returncode == 0, after.stderr
    assert after.stdout == before


def test_serve_in_hs256_mode_with_another_key_encryption_key_stops_in_one_line(
    tmp_path: Path,
) -> None:
    # HS256 signs without the key set, but the stored keys must still open: switching back
    # to EdDSA must not meet a set that this install's key cannot decrypt.
    cli = Cli(tmp_path / "data")
    assert cli("keys", "rotate").returncode == 0
    with socket.socket() as taken:  # were the check passed, serve would stop here instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        wrong = cli(
            "serve", "--port", port,
            env={"JWT_ALGORITHM": "HS256", "KEY_ENCRYPTION_KEY": WRONG_KEK},
        )  # fmt: skip
    one_line_error(wrong, "KEY_ENCRYPTION_KEY")
    assert wrong.returncode == 2


def test_a_second_instance_with_another_key_encryption_key_stops_with_nothing_stored_yet(
    tmp_path: Path,
) -> None:
    # HS256 mode and no TOTP secret yet: no signing key or secret to try the key on. The
    # first instance to start seals a check value; one with another key cannot open it.
    cli = Cli(tmp_path / "data")
    hs256 = {"JWT_ALGORITHM": "HS256"}
    with socket.socket() as taken:  # past the check, serve stops at the port instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        first = cli("serve", "--port", port, env=hs256)
        second = cli("serve", "--port", port, env={**hs256, "KEY_ENCRYPTION_KEY": WRONG_KEK})
        again = cli("serve", "--port", port, env=hs256)
    assert "KEY_ENCRYPTION_KEY" not in first.stderr and first.returncode != 0, first.stderr
    one_line_error(second, "KEY_ENCRYPTION_KEY")
    assert second.returncode == 2 and WRONG_KEK not in second.stderr
    assert "KEY_ENCRYPTION_KEY" not in again.stderr, again.stderr


CHANGED = ": not what the last start on this database had"


def _changed(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The settings a start's warning names (none without one)."""
    for line in result.stderr.splitlines():
        if CHANGED in line:
            return set(line.split(CHANGED)[0].split(" conductor_api ")[-1].split(", "))
    return set()


def test_a_start_names_the_shared_settings_the_last_start_had_otherwise(
    tmp_path: Path, empty_database_url: str
) -> None:
    # Each start names what differs from the start before (set so on purpose: a new refresh
    # secret signs everyone out); the same settings again name nothing, nor does the first
    # start on a database. Two machines on one database with the same KEY_ENCRYPTION_KEY
    # and no JWT secret set share the ones the first generated (see the test below).
    shared = {"DATABASE_URL": empty_database_url, "KEY_ENCRYPTION_KEY": TEST_KEK}
    explicit = {
        **shared,
        "JWT_SECRET_KEY": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET_KEY": secrets.token_urlsafe(32),
    }
    one, two = Cli(tmp_path / "one"), Cli(tmp_path / "two")
    with socket.socket() as taken:  # past the checks, serve stops at the port instead
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        def serve(cli: Cli, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            result = cli("serve", "--port", port, env=env)
            assert result.returncode != 0 and "address" in result.stderr.lower(), result.stderr
            assert "Traceback" not in result.stderr
            return result

        first = serve(one, shared)
        assert _changed(first) == set() and _changed(serve(one, shared)) == set()
        if empty_database_url.startswith("postgresql"):
            # Unchanged settings write nothing: a read-only database still gets that far.
            _read_only(empty_database_url, True)
            serve(one, shared)
            _read_only(empty_database_url, False)
        assert _changed(serve(two, shared)) == set()  # it took the first one's
        said = serve(two, explicit).stderr
        assert _changed(serve(two, explicit)) == set()
        assert _changed(serve(one, shared)) == {"JWT_REFRESH_SECRET_KEY"}
        moved = {**shared, "JWT_ISSUER": "elsewhere", "DPOP_MAX_SKEW_SECONDS": "120"}
        assert _changed(serve(one, moved)) == {"JWT_ISSUER", "DPOP_MAX_SKEW_SECONDS"}
        assert _changed(serve(one, {**moved, "KEY_PUBLISH_SECONDS": "600"})) == {
            "KEY_PUBLISH_SECONDS"
        }
        # The access secret counts only where it signs, in the HS* modes (its first record).
        hs256 = {**shared, "JWT_ALGORITHM": "HS256", "KEY_PUBLISH_SECONDS": "600"}
        assert _changed(serve(one, hs256)) == {"JWT_ISSUER", "DPOP_MAX_SKEW_SECONDS"}
        hs256_set = {**explicit, "JWT_ALGORITHM": "HS256", "KEY_PUBLISH_SECONDS": "600"}
        said += serve(two, hs256_set).stderr
        assert _changed(serve(one, hs256)) == {"JWT_REFRESH_SECRET_KEY", "JWT_SECRET_KEY"}
    for machine in ("one", "two"):
        generated = json.loads((tmp_path / machine / "secrets.json").read_text())
        assert not any(value in said + first.stderr for value in generated.values())


def test_instances_that_generated_their_jwt_secrets_share_the_first_ones(
    tmp_path: Path, empty_database_url: str
) -> None:
    """With only KEY_ENCRYPTION_KEY set alike, a second machine's generated JWT secrets
    give way to the first's, stored in the database sealed under that key: its secrets
    file is rewritten before its workers read it, and the first's tokens verify there. Its
    own key-encryption key stays its own setting."""
    shared = {"DATABASE_URL": empty_database_url, "KEY_ENCRYPTION_KEY": TEST_KEK}
    one, two = Cli(tmp_path / "one"), Cli(tmp_path / "two")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for cli in (one, two, two):
            result = cli("serve", "--port", port, env=shared)
            assert "address" in result.stderr.lower() and "Traceback" not in result.stderr
    first = json.loads((tmp_path / "one" / "secrets.json").read_text())
    second = json.loads((tmp_path / "two" / "secrets.json").read_text())
    for name in ("jwt_secret_key", "jwt_refresh_secret_key"):
        assert second[name] == first[name]
    assert second["key_encryption_key"] != first["key_encryption_key"]  # generated, unused
    assert oct((tmp_path / "two" / "secrets.json").stat().st_mode & 0o777) == "0o600"

    async def stored() -> list[bytes]:
        if empty_database_url.startswith("sqlite"):
            path = empty_database_url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                return [row[0] for row in conn.execute("SELECT sealed FROM generated_secrets")]
        conn = await asyncpg.connect(empty_database_url)
        try:
            return [row[0] for row in await conn.fetch("SELECT sealed FROM generated_secrets")]
        finally:
            await conn.close()

    sealed = asyncio.run(stored())
    assert len(sealed) == 2
    for value in (first["jwt_secret_key"], first["jwt_refresh_secret_key"]):
        assert all(value.encode() not in blob for blob in sealed)  # sealed, not in clear


def _read_only(database_url: str, on: bool) -> None:
    """Make every later transaction on the database read-only (as on a standby), or not."""

    async def go() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            name = await conn.fetchval("SELECT current_database()")
            await conn.execute("SET default_transaction_read_only = off")  # for this ALTER
            value = "on" if on else "off"
            await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only={value}')
        finally:
            await conn.close()

    asyncio.run(go())
