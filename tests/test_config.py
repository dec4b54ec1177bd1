"""Settings: names from the contract, generated secrets, one-line errors for bad values."""

from __future__ import annotations

import base64
import errno
import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest

from conductor_api.config import ConfigError, load_settings
from tests.conftest import TEST_KEK
from tests.e2e.server import clean_env, cli_path

# A good key-encryption key of 36 bytes: 48 characters, no padding.
KEK_48 = base64.urlsafe_b64encode(bytes(range(100, 136))).decode()
GOOD_A = secrets.token_urlsafe(32)
GOOD_B = secrets.token_urlsafe(32)

BAD_VALUES = [
    ({"JWT_SECRET_KEY": "short", "JWT_REFRESH_SECRET_KEY": GOOD_B}, "JWT_SECRET_KEY"),
    ({"JWT_SECRET_KEY": GOOD_A, "JWT_REFRESH_SECRET_KEY": "tiny"}, "JWT_REFRESH_SECRET_KEY"),
    ({"JWT_SECRET_KEY": GOOD_A, "JWT_REFRESH_SECRET_KEY": GOOD_A}, "JWT_REFRESH_SECRET_KEY"),
    ({"JWT_SECRET_KEY": GOOD_A}, "JWT_REFRESH_SECRET_KEY"),
    ({"DATABASE_URL": "mysql://root@localhost/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
    # A SQLite URL without a file, or with parameters (the file is opened by path in more
    # than one place); a port out of range; a parameter asyncpg.connect() does not take.
    ({"DATABASE_URL": "sqlite://"}, "DATABASE_URL"),
    ({"DATABASE_URL": "sqlite:///:memory:"}, "DATABASE_URL"),
    ({"DATABASE_URL": "sqlite:///data/conductor.db?timeout=5"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:99999/db"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1/db?sslmode=require"}, "DATABASE_URL"),
    # asyncpg's own refusal came at the first connection, naming `sslmode`.
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1/db?ssl=bogus"}, "DATABASE_URL"),
    # An unencoded @ in the password: the host was `ss@127.0.0.1`, found by no DNS.
    ({"DATABASE_URL": "postgresql://app:p@ss@127.0.0.1/db"}, "DATABASE_URL"),
    # No database name: asyncpg would use the user's, and migrate whatever database that is.
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1/"}, "DATABASE_URL"),
    ({"DATABASE_URL": "postgresql://"}, "DATABASE_URL"),
    ({"ANDROID_API_HOST": "999.1.1.1"}, "ANDROID_API_HOST"),
    ({"ANDROID_API_HOST": ""}, "ANDROID_API_HOST"),
    ({"ANDROID_API_HOST": "host name with spaces"}, "ANDROID_API_HOST"),
    ({"METRICS_HOST": "-bad-.example"}, "METRICS_HOST"),
    # Settings that do nothing without another one.
    ({"METRICS_HOST": "10.0.0.5"}, "METRICS_HOST"),
    ({"WEBAUTHN_ORIGINS": "https://conductor.example"}, "WEBAUTHN_ORIGINS"),
    ({"WEBAUTHN_RP_NAME": "Conductor Beta"}, "WEBAUTHN_RP_NAME"),
    ({"WEBAUTHN_CHALLENGE_SECONDS": "120"}, "WEBAUTHN_CHALLENGE_SECONDS"),
    ({"KEY_ENCRYPTION_KEY": "A" * 43}, "KEY_ENCRYPTION_KEY"),
    ({"ACCESS_TOKEN_EXPIRE_MINUTES": "-5"}, "ACCESS_TOKEN_EXPIRE_MINUTES"),
    ({"REFRESH_TOKEN_EXPIRE_DAYS": "-1"}, "REFRESH_TOKEN_EXPIRE_DAYS"),
    ({"SESSION_MAX_DAYS": "0"}, "SESSION_MAX_DAYS"),
    ({"REFRESH_REUSE_GRACE_SECONDS": "-1"}, "REFRESH_REUSE_GRACE_SECONDS"),
    ({"LOCKOUT_MINUTES": "abc"}, "LOCKOUT_MINUTES"),
    ({"MIN_PASSWORD_LENGTH": "6"}, "MIN_PASSWORD_LENGTH"),
    ({"CORS_ORIGINS": "*"}, "CORS_ORIGINS"),
    ({"CORS_ORIGINS": "https://ok.example,ftp://bad"}, "CORS_ORIGINS"),
    ({"CORS_ORIGINS": "https://example.com/path"}, "CORS_ORIGINS"),
    ({"TRUSTED_PROXIES": "10.0.0.1,not-an-ip"}, "TRUSTED_PROXIES"),
    ({"ANDROID_API_PORT": "70000"}, "ANDROID_API_PORT"),
    # Bounds past which a setting switches a protection off (issue 9, item 14).
    ({"REFRESH_REUSE_GRACE_SECONDS": "99999999"}, "REFRESH_REUSE_GRACE_SECONDS"),
    ({"REFRESH_REUSE_GRACE_SECONDS": "61"}, "REFRESH_REUSE_GRACE_SECONDS"),
    ({"ACCESS_TOKEN_EXPIRE_MINUTES": "1000000000"}, "ACCESS_TOKEN_EXPIRE_MINUTES"),
    ({"ACCESS_TOKEN_EXPIRE_MINUTES": "1441"}, "ACCESS_TOKEN_EXPIRE_MINUTES"),
    ({"REFRESH_TOKEN_EXPIRE_DAYS": "366"}, "REFRESH_TOKEN_EXPIRE_DAYS"),
    ({"SESSION_MAX_DAYS": "3651"}, "SESSION_MAX_DAYS"),
    ({"MAX_FAILED_LOGIN_ATTEMPTS": "1000001"}, "MAX_FAILED_LOGIN_ATTEMPTS"),
    ({"LOCKOUT_MINUTES": "1441"}, "LOCKOUT_MINUTES"),
    ({"MAX_FAILED_LOGINS_PER_IP": "1000001"}, "MAX_FAILED_LOGINS_PER_IP"),
    ({"PASSWORD_HASH_CONCURRENCY": "257"}, "PASSWORD_HASH_CONCURRENCY"),
    ({"DATABASE_TIMEOUT_SECONDS": "301"}, "DATABASE_TIMEOUT_SECONDS"),
    ({"MAX_BODY_BYTES": "16777217"}, "MAX_BODY_BYTES"),
    # Whole numbers in digits: not Python's `1_000`, not a float's `8000.0`.
    ({"METRICS_PORT": "1_000"}, "METRICS_PORT"),
    ({"ANDROID_API_PORT": "8000.0"}, "ANDROID_API_PORT"),
    ({"LOCKOUT_MINUTES": "1e1"}, "LOCKOUT_MINUTES"),
    ({"TRUSTED_PROXIES": "0.0.0.0/0"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "10.0.0.1,::/0"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "0.0.0.0/1,128.0.0.0/1"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "::ffff:0:0/96"}, "TRUSTED_PROXIES"),
    # Not every address, but every ordinary client's: more than a /8 (v4) or /32 (v6) public.
    ({"TRUSTED_PROXIES": "2000::/3"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "0.0.0.0/1"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "34.0.0.0/8,35.0.0.0/8"}, "TRUSTED_PROXIES"),
    ({"TRUSTED_PROXIES": "2600::/31"}, "TRUSTED_PROXIES"),
    ({"JWT_AUDIENCE": ""}, "JWT_AUDIENCE"),
    ({"JWT_ISSUER": "   "}, "JWT_ISSUER"),
    ({"JWT_SECRET_KEY": "a" * 48, "JWT_REFRESH_SECRET_KEY": GOOD_B}, "JWT_SECRET_KEY"),
    (
        {"JWT_SECRET_KEY": GOOD_A, "JWT_REFRESH_SECRET_KEY": "refresh-" + "b" * 40},
        "JWT_REFRESH_SECRET_KEY",
    ),
    ({"JWT_SECRET_KEY": "abcdefghijk" * 4, "JWT_REFRESH_SECRET_KEY": GOOD_B}, "JWT_SECRET_KEY"),
    ({"EVENT_RETENTION_DAYS": "0"}, "EVENT_RETENTION_DAYS"),
    ({"SESSION_RETENTION_DAYS": "-1"}, "SESSION_RETENTION_DAYS"),
    ({"PRUNE_INTERVAL_SECONDS": "soon"}, "PRUNE_INTERVAL_SECONDS"),
    ({"PRUNE_BATCH_SIZE": "1000000"}, "PRUNE_BATCH_SIZE"),
    ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ({"METRICS_PORT": "http"}, "METRICS_PORT"),
    # The metrics listener never shares the API's port.
    ({"METRICS_PORT": "8000"}, "METRICS_PORT"),
    ({"METRICS_PORT": "9100", "ANDROID_API_PORT": "9100"}, "METRICS_PORT"),
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Conductor variable from the outer environment; a fresh working directory."""
    for name in list(os.environ):
        if name.startswith(("JWT_", "ANDROID_API_", "CONDUCTOR_", "DATABASE_", "CORS_", "KEY_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONDUCTOR_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


class TestContractNames:
    def test_defaults(self, env: Path) -> None:
        s = load_settings()
        assert s.android_api_host == "127.0.0.1"
        assert s.android_api_port == 8000
        assert s.access_token_expire_minutes == 30
        assert s.refresh_token_expire_days == 7
        assert s.session_max_days == 90
        assert s.refresh_reuse_grace_seconds == 10
        assert s.min_password_length == 15
        assert s.max_failed_login_attempts == 5
        assert s.lockout_minutes == 15
        assert s.max_failed_logins_per_ip == 50
        assert s.allow_registration is False
        assert s.cors_origins == []
        assert s.is_sqlite
        assert s.sqlalchemy_url.endswith("/data/conductor.db")

    def test_environment_names(self, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ANDROID_API_HOST", "0.0.0.0")
        monkeypatch.setenv("ANDROID_API_PORT", "9001")
        monkeypatch.setenv("CORS_ORIGINS", "https://a.example, http://localhost:3000")
        monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8,::1")
        monkeypatch.setenv("ALLOW_REGISTRATION", "true")
        monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/test")
        s = load_settings()
        assert (s.android_api_host, s.android_api_port) == ("0.0.0.0", 9001)
        assert s.cors_origins == ["https://a.example", "http://localhost:3000"]
        assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
        assert s.allow_registration is True
        assert s.sqlalchemy_url == "postgresql+asyncpg://postgres@127.0.0.1/test"

    def test_dotenv_file_is_read(self, env: Path) -> None:
        (env / ".env").write_text("ACCESS_TOKEN_EXPIRE_MINUTES=12\nLOCKOUT_MINUTES=3\n")
        s = load_settings()
        assert (s.access_token_expire_minutes, s.lockout_minutes) == (12, 3)

    def test_sqlite_url_is_accepted_as_pasted(self, env: Path) -> None:
        s = load_settings(database_url=f"sqlite:///{env}/other.db")
        assert s.sqlalchemy_url == f"sqlite+aiosqlite:///{env}/other.db"


class TestGeneratedSecrets:
    def test_first_load_generates_owner_only_file_and_later_loads_reuse_it(self, env: Path) -> None:
        first = load_settings()
        path = env / "data" / "secrets.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(first.access_secret) >= 32
        assert first.access_secret != first.refresh_secret
        second = load_settings()
        assert (second.access_secret, second.refresh_secret) == (
            first.access_secret,
            first.refresh_secret,
        )
        assert json.loads(path.read_text())["jwt_secret_key"] == first.access_secret
        assert second.kek == first.kek and len(first.kek) == 32

    def test_a_read_only_data_directory_with_its_secrets_is_read(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = load_settings()

        def read_only(*_: object) -> None:
            raise OSError(errno.EROFS, "Read-only file system")

        # Whatever would write there fails (the tests run as root: a mode would not).
        monkeypatch.setattr("conductor_api.config._write_draft", read_only)
        monkeypatch.setattr("conductor_api.config.make_private_dir", read_only)
        again = load_settings()
        assert (again.access_secret, again.kek) == (first.access_secret, first.kek)

    def test_a_blank_data_directory_is_the_default(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A template's `CONDUCTOR_DATA_DIR=` left blank: ./data, not the working directory.
        monkeypatch.setenv("CONDUCTOR_DATA_DIR", "")
        s = load_settings()
        assert s.conductor_data_dir == Path("data")
        assert (env / "data" / "secrets.json").exists()
        assert not (env / "secrets.json").exists()

    def test_explicit_secrets_write_no_file(self, env: Path) -> None:
        s = load_settings(
            jwt_secret_key=GOOD_A, jwt_refresh_secret_key=GOOD_B, key_encryption_key=TEST_KEK
        )
        assert s.access_secret == GOOD_A
        assert not (env / "data" / "secrets.json").exists()

    def test_corrupt_secrets_file_is_one_clear_error(self, env: Path) -> None:
        (env / "data").mkdir()
        (env / "data" / "secrets.json").write_text("{not json")
        with pytest.raises(ConfigError, match="CONDUCTOR_DATA_DIR"):
            load_settings()

    def test_a_secrets_file_with_one_key_twice_is_refused(self, env: Path) -> None:
        # Hand-edited: the same rule as for the settings, which must differ.
        (env / "data").mkdir()
        same = GOOD_A
        (env / "data" / "secrets.json").write_text(
            json.dumps({"jwt_secret_key": same, "jwt_refresh_secret_key": same})
        )
        with pytest.raises(ConfigError, match=r"CONDUCTOR_DATA_DIR: .*equals") as refused:
            load_settings()
        assert same not in str(refused.value)


class TestSecretsNeverEchoed:
    @pytest.mark.parametrize(
        "url",
        [
            "mysql://root:Secret@db/prod",
            "postgresql://root:Secret@127.0.0.1:abc/prod",
            "oracle://root:Secret@db:1521/prod",
            "postgresql://root@127.0.0.1/prod?password=Secret",
            "postgresql://root@127.0.0.1/prod?ssl=require&sslpassword=Secret",
        ],
    )
    def test_database_password_is_redacted(self, tmp_path: Path, url: str) -> None:
        result = subprocess.run(
            [cli_path(), "migrate"],
            env=clean_env(CONDUCTOR_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("conductor-api: error: DATABASE_URL:"), lines[0]
        assert "Secret" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr

    def test_redacted_value_still_helps(self, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "mysql://root:Secret@db/prod")
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert "mysql://root:***@db/prod" in str(raised.value)
        monkeypatch.setenv("DATABASE_URL", "postgresql://root@db/prod?password=Secret&ssl=on")
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert "postgresql://root@db/prod?password=***&ssl=on" in str(raised.value)

    @pytest.mark.parametrize(
        "name",
        [
            "ACCESS_TOKEN_EXPIRE_MINUTES",
            "REFRESH_TOKEN_EXPIRE_DAYS",
            "DEVICE_TOKEN_DAYS",
            "MIN_PASSWORD_LENGTH",
            "PASSWORD_HASH_CONCURRENCY",
        ],
    )
    def test_a_setting_that_holds_no_secret_shows_its_value(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        # The README's and docs/api.md's example: only *SECRET*/*KEY* values are hidden.
        monkeypatch.setenv(name, "-5")
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert str(raised.value).startswith(f"{name}: "), raised.value
        assert str(raised.value).endswith(" (got '-5')"), raised.value

    def test_weak_secret_refusal_shows_no_part_of_it(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("JWT_SECRET_KEY", "placeholder-" + "z" * 40)
        monkeypatch.setenv("JWT_REFRESH_SECRET_KEY", GOOD_B)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert "zzz" not in str(raised.value) and "placeholder" not in str(raised.value)


class TestAcceptedValues:
    def test_bounds_themselves_are_accepted(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("REFRESH_REUSE_GRACE_SECONDS", "60")
        monkeypatch.setenv("ACCESS_TOKEN_EXPIRE_MINUTES", "1440")
        # Private networks of any size, and at most a /8 (v4) and a /32 (v6) of public ones.
        monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8,fc00::/7,34.0.0.0/8,2600::/32")
        s = load_settings(jwt_secret_key=GOOD_A, jwt_refresh_secret_key=GOOD_B)
        assert (s.refresh_reuse_grace_seconds, s.access_token_expire_minutes) == (60, 1440)
        assert len(s.trusted_proxies) == 4

    @pytest.mark.parametrize(
        ("value", "kept"),
        [
            ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("[::1]", "::1"), ("localhost", "localhost"),
            ("api.internal.example", "api.internal.example"), (" 10.0.0.5 ", "10.0.0.5"),
        ],
    )  # fmt: skip
    def test_listen_hosts(self, env: Path, value: str, kept: str) -> None:
        s = load_settings(android_api_host=value, metrics_host=value, metrics_port=9464)
        assert (s.android_api_host, s.metrics_host) == (kept, kept)

    def test_random_hex_secrets_are_accepted(self, env: Path) -> None:
        s = load_settings(jwt_secret_key=secrets.token_hex(32), jwt_refresh_secret_key=GOOD_B)
        assert len(s.access_secret) == 64


# The settings whose empty value (`NAME=`) is their default: docs/api.md, "Configuration".
EMPTY_IS_THE_DEFAULT = {
    "JWT_SECRET_KEY", "JWT_REFRESH_SECRET_KEY", "KEY_ENCRYPTION_KEY", "DATABASE_URL",
    "CORS_ORIGINS", "TRUSTED_PROXIES", "WEBAUTHN_ORIGINS", "ANDROID_CERT_FINGERPRINTS",
    "METRICS_PORT", "WEBAUTHN_RP_ID", "ANDROID_PACKAGE_NAME", "CONDUCTOR_DATA_DIR",
}  # fmt: skip


class TestSettingsThatNeedAnother:
    @pytest.mark.parametrize(
        ("name", "value", "needs"),
        [
            ("METRICS_HOST", "10.0.0.5", "METRICS_PORT"),
            ("WEBAUTHN_ORIGINS", "https://conductor.example", "WEBAUTHN_RP_ID"),
            ("WEBAUTHN_RP_NAME", "Conductor Beta", "WEBAUTHN_RP_ID"),
            ("WEBAUTHN_CHALLENGE_SECONDS", "120", "WEBAUTHN_RP_ID"),
        ],
    )
    def test_alone_it_is_one_line_saying_what_is_missing(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, needs: str
    ) -> None:
        """Set alone, it would do nothing (metrics and passkeys are off): refused with the
        setting it needs; with that one set too, taken."""
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        off = "metrics" if needs == "METRICS_PORT" else "passkeys"
        assert str(raised.value) == f"{name}: set {needs} too ({off} are off without it)"
        if needs == "METRICS_PORT":
            monkeypatch.setenv("METRICS_PORT", "9464")
        else:
            monkeypatch.setenv("WEBAUTHN_RP_ID", "conductor.example")
            monkeypatch.setenv("WEBAUTHN_ORIGINS", "https://conductor.example")
        settings = load_settings()
        assert str(getattr(settings, name.lower())).strip("[]'") == value

    def test_the_empty_list_alone_is_the_default(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("WEBAUTHN_ORIGINS", "")
        assert load_settings().passkeys_on is False


class TestEmptyValues:
    def test_empty_is_the_default_only_where_the_default_is_nothing(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every setting, each on its own set to the empty string: the ones documented as
        taking it for their default start with the default; every other is refused with
        one line naming it."""
        defaults = load_settings()
        names = [field.upper() for field in type(defaults).model_fields]
        assert set(names) >= EMPTY_IS_THE_DEFAULT
        for name in names:
            with monkeypatch.context() as patch:
                patch.setenv(name, "")
                if name in EMPTY_IS_THE_DEFAULT:
                    settings = load_settings()
                    field = name.lower()
                    if name.endswith("_KEY"):
                        continue  # generated: read from secrets.json, checked elsewhere
                    if name == "CONDUCTOR_DATA_DIR":  # ./data, here the working directory's
                        assert settings.conductor_data_dir.resolve() == env / "data"
                        continue
                    assert getattr(settings, field) == getattr(defaults, field), name
                else:
                    with pytest.raises(ConfigError) as raised:
                        load_settings()
                    assert str(raised.value).startswith(f"{name}: "), str(raised.value)


class TestBadValues:
    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("postgresql://postgres@127.0.0.1/db?ssl=bogus", "ssl must be one of disable, "),
            ("postgresql://app:p@ss@127.0.0.1/db", "an @ in the user or password must be "),
        ],
    )
    def test_a_database_url_the_driver_would_refuse_says_why(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, url: str, says: str
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        assert str(raised.value).startswith(f"DATABASE_URL: {says}"), str(raised.value)
        # ssl=require and an encoded @ are taken.
        monkeypatch.setenv("DATABASE_URL", "postgresql://app:p%40ss@127.0.0.1/db?ssl=require")
        assert load_settings().database_url

    @pytest.mark.parametrize(("values", "variable"), BAD_VALUES)
    def test_load_settings_names_the_variable(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, str], variable: str
    ) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        message = str(raised.value)
        assert message.startswith(variable + ":"), message
        assert "\n" not in message
        # A secret's value is never echoed back.
        assert GOOD_A not in message and "'short'" not in message and "'tiny'" not in message

    @pytest.mark.parametrize(("values", "variable"), BAD_VALUES)
    def test_serve_stops_with_one_line(
        self, tmp_path: Path, values: dict[str, str], variable: str
    ) -> None:
        env = clean_env(CONDUCTOR_DATA_DIR=str(tmp_path / "data"), **values)
        result = subprocess.run(
            [cli_path(), "serve", "--port", "1"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert variable in lines[0]
        assert "Traceback" not in result.stderr + result.stdout
        assert not (tmp_path / "data" / "conductor.db").exists()


class TestKeyEncryptionKey:
    def test_a_secrets_file_from_before_gets_one_added(self, env: Path) -> None:
        (env / "data").mkdir()
        path = env / "data" / "secrets.json"
        old = {"jwt_secret_key": GOOD_A, "jwt_refresh_secret_key": GOOD_B}
        path.write_text(json.dumps(old))
        first = load_settings()
        assert (first.access_secret, first.refresh_secret) == (GOOD_A, GOOD_B)
        assert len(first.kek) >= 32
        assert load_settings().kek == first.kek
        assert json.loads(path.read_text())["jwt_secret_key"] == GOOD_A

    @pytest.mark.parametrize(
        "value",
        [
            "c2hvcnQ",
            "not base64 at all!!",
            # A good key with characters outside base64url, which a decoder would drop.
            KEK_48 + "!",
            KEK_48[:20] + " " + KEK_48[20:],
            "+" + KEK_48[1:],
        ],
    )
    def test_a_bad_one_is_one_line_naming_it_without_its_value(self, env: Path, value: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(key_encryption_key=value)
        assert "KEY_ENCRYPTION_KEY" in str(caught.value)
        assert value not in str(caught.value)
