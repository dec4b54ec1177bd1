"""The operator's view of passkeys: `users list` counts them, `users reset-mfa` leaves them
(and the passkey still signs in), `users disable` refuses their sign-in with 403; and each
bad passkey setting stops the process with one line naming it."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conductor_api.config import ConfigError, load_settings
from tests.conftest import PASSWORD
from tests.e2e.server import clean_env, cli_path
from tests.mfa.helpers import enable_totp
from tests.operator import cli, login, server_on
from tests.passkeys.authenticator import Authenticator
from tests.passkeys.helpers import ANDROID_ORIGIN, ON, add_passkey, passkey_login, register


class TestOperator:
    async def test_list_counts_passkeys_and_reset_mfa_keeps_them_and_disable_refuses(
        self, tmp_path: Path
    ) -> None:
        data = tmp_path / "data"
        created = cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        phone = Authenticator()
        async with server_on(data, **ON) as client:
            access = (await login(client)).json()["access_token"]
            await add_passkey(client, access, phone)
            await add_passkey(client, access, Authenticator())
            await enable_totp(client, access, datetime.now(UTC))
        listed = cli(data, "users", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == [
            "alice\tactive\tnot locked\t1 sessions\ttotp\t2 passkeys"
        ]

        reset = cli(data, "users", "reset-mfa", "alice")
        assert reset.returncode == 0, reset.stderr
        assert cli(data, "users", "list").stdout.splitlines() == [
            "alice\tactive\tnot locked\t0 sessions\tno second factor\t2 passkeys"
        ]
        async with server_on(data, **ON) as client:
            signed_in = await passkey_login(client, phone)
            assert signed_in.status_code == 200, signed_in.text

        assert cli(data, "users", "disable", "alice").returncode == 0
        async with server_on(data, **ON) as client:
            refused = await passkey_login(client, phone)
            assert refused.status_code == 403
            assert refused.json()["code"] == "account_disabled"

    async def test_the_operator_lists_and_removes_a_users_passkeys(self, tmp_path: Path) -> None:
        # An account taken over: the intruder added a passkey with a stolen token, and a new
        # password would not take it away. The operator finds it and removes it.
        data = tmp_path / "data"
        cli(data, "users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        owners, intruders = Authenticator(), Authenticator()
        async with server_on(data, **ON) as client:
            access = (await login(client)).json()["access_token"]
            assert (await register(client, access, owners, name="Pixel 8")).status_code == 201
            assert (await register(client, access, intruders, name="Galaxy")).status_code == 201
            assert (await passkey_login(client, owners)).status_code == 200
        listed = cli(data, "passkeys", "list", "alice")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert [line.split("\t")[1] for line in lines] == ["Pixel 8", "Galaxy"]
        assert "last used never" not in lines[0] and lines[1].endswith("last used -")
        intruder_id = lines[1].split("\t")[0]

        removed = cli(data, "passkeys", "remove", intruder_id)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.strip() == f"passkey {intruder_id} of alice removed"
        assert len(cli(data, "passkeys", "list", "alice").stdout.splitlines()) == 1
        again = cli(data, "passkeys", "remove", intruder_id)
        assert again.returncode == 1 and again.stderr.strip().endswith(f"no passkey {intruder_id}")
        bad = cli(data, "passkeys", "remove", "not-an-id")
        assert bad.returncode == 2 and "not a passkey id" in bad.stderr
        async with server_on(data, **ON) as client:
            assert (await passkey_login(client, intruders)).status_code == 401
            assert (await passkey_login(client, owners)).status_code == 200
            access = (await login(client)).json()["access_token"]
            events = await client.get(
                "/api/v1/auth/events", headers={"Authorization": f"Bearer {access}"}
            )
            assert "passkey_removed" in [e["type"] for e in events.json()]


BAD = [
    ({"webauthn_rp_id": "https://conductor.example"}, "WEBAUTHN_RP_ID: not a domain"),
    # WebAuthn and Credential Manager take no IP address for an RP ID.
    ({"webauthn_rp_id": "192.0.2.1"}, "WEBAUTHN_RP_ID: not a domain"),
    ({"webauthn_rp_id": "Conductor.Example"}, "WEBAUTHN_RP_ID: write the domain in lower case"),
    ({"webauthn_rp_id": "com"}, "WEBAUTHN_RP_ID: a top-level domain alone"),
    ({"webauthn_rp_id": "conductor.example"}, "WEBAUTHN_ORIGINS: required"),
    (
        {"webauthn_rp_id": "conductor.example", "webauthn_origins": "https://evil.example"},
        "WEBAUTHN_ORIGINS: https://evil.example is not on WEBAUTHN_RP_ID",
    ),
    ({"webauthn_origins": "http://conductor.example"}, "WEBAUTHN_ORIGINS: each must be"),
    ({"webauthn_origins": "https://me@conductor.example"}, "WEBAUTHN_ORIGINS: each must be"),
    ({"webauthn_origins": "android:apk-key-hash:abc"}, "WEBAUTHN_ORIGINS: an Android origin"),
    # Credential Manager sends the hash in unpadded base64url: any other spelling of the
    # same 32 bytes would never match it.
    *[
        ({"webauthn_origins": "android:apk-key-hash:" + hash_}, "WEBAUTHN_ORIGINS: an Android")
        for hash_ in (
            base64.b64encode(b"\xfb" * 32).decode().rstrip("="),  # standard base64: + and /
            ANDROID_ORIGIN.removeprefix("android:apk-key-hash:") + "=",  # padded
            ANDROID_ORIGIN.removeprefix("android:apk-key-hash:")[:-1] + "_",  # not canonical
        )
    ],
    ({"android_cert_fingerprints": "AB:CD"}, "ANDROID_CERT_FINGERPRINTS: each must be"),
    ({"android_cert_fingerprints": ":".join(["GG"] * 32)}, "ANDROID_CERT_FINGERPRINTS"),
    ({"android_package_name": "1com.example"}, "ANDROID_PACKAGE_NAME: not an Android package"),
    ({"android_package_name": "conductor"}, "ANDROID_PACKAGE_NAME: not an Android package"),
    (
        {**ON, "android_cert_fingerprints": ""},
        "ANDROID_CERT_FINGERPRINTS: set both ANDROID_PACKAGE_NAME and",
    ),
    # Passkeys off: the half-set pair is refused now, not the day they are turned on.
    (
        {"android_package_name": "com.example.conductor"},
        "ANDROID_CERT_FINGERPRINTS: set both ANDROID_PACKAGE_NAME and",
    ),
    ({"webauthn_challenge_seconds": "5"}, "WEBAUTHN_CHALLENGE_SECONDS"),
]


class TestSettings:
    @pytest.mark.parametrize(("values", "message"), BAD, ids=[m for _, m in BAD])
    def test_a_bad_value_is_one_line_naming_it(
        self, tmp_path: Path, values: dict[str, str], message: str
    ) -> None:
        with pytest.raises(ConfigError) as raised:
            load_settings(_env_file=None, conductor_data_dir=tmp_path, **values)
        assert str(raised.value).startswith(message), str(raised.value)
        assert "\n" not in str(raised.value)

    def test_good_values(self, tmp_path: Path) -> None:
        settings = load_settings(_env_file=None, conductor_data_dir=tmp_path, **ON)
        assert settings.passkeys_on
        assert settings.android_cert_fingerprints == [ON["android_cert_fingerprints"].upper()]
        assert load_settings(_env_file=None, conductor_data_dir=tmp_path).passkeys_on is False

    def test_localhost_is_the_one_single_label_rp_id(self, tmp_path: Path) -> None:
        # For development: browsers take https://localhost as a secure context.
        values = {"webauthn_rp_id": "localhost", "webauthn_origins": "https://localhost:8443"}
        settings = load_settings(_env_file=None, conductor_data_dir=tmp_path, **values)
        assert settings.webauthn_rp_id == "localhost"

    def test_https_origins_are_spelled_as_a_browser_sends_them(self, tmp_path: Path) -> None:
        # Origins are compared as strings: lower case, no default port, no trailing slash.
        origins = "https://Conductor.EXAMPLE:443/,HTTPS://app.conductor.example:8443"
        settings = load_settings(
            _env_file=None, conductor_data_dir=tmp_path, **{**ON, "webauthn_origins": origins}
        )
        assert settings.webauthn_origins == [
            "https://conductor.example", "https://app.conductor.example:8443"
        ]  # fmt: skip

    def test_serve_stops_at_start_with_the_line(self, tmp_path: Path) -> None:
        import subprocess

        result = subprocess.run(
            [cli_path(), "serve"],
            env=clean_env(CONDUCTOR_DATA_DIR=str(tmp_path), ANDROID_CERT_FINGERPRINTS="AB:CD"),
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.startswith("conductor-api: error: ANDROID_CERT_FINGERPRINTS: ")
        assert len(result.stderr.strip().splitlines()) == 1
