"""The signing-key settings and the generated key-encryption key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conductor_api.config import ConfigError, decode_kek, load_settings

LEGACY = {"jwt_secret_key": "a" * 64, "jwt_refresh_secret_key": "b" * 64}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Conductor variable from the outer environment; a data directory of the test's."""
    for name in list(os.environ):
        if name.startswith(("JWT_", "CONDUCTOR_", "DATABASE_", "KEY_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONDUCTOR_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


class TestDefaults:
    def test_eddsa_and_the_rotation_defaults(self, env: Path) -> None:
        s = load_settings()
        assert s.jwt_algorithm == "EdDSA" and s.asymmetric
        assert (s.key_publish_seconds, s.key_rotation_days) == (300, 30)
        assert s.key_refresh_seconds <= 60


class TestGeneratedKey:
    def test_first_start_writes_a_32_byte_key_beside_the_jwt_secrets(self, env: Path) -> None:
        first = load_settings()
        path = env / "secrets.json"
        stored = json.loads(path.read_text())
        assert len(decode_kek(stored["key_encryption_key"]) or b"") == 32
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert first.kek == load_settings().kek

    def test_a_secrets_file_from_before_gets_a_key_added_and_keeps_its_secrets(
        self, env: Path
    ) -> None:
        env.mkdir()
        (env / "secrets.json").write_text(json.dumps(LEGACY))
        s = load_settings()
        stored = json.loads((env / "secrets.json").read_text())
        assert {k: stored[k] for k in LEGACY} == LEGACY
        assert s.access_secret == LEGACY["jwt_secret_key"]
        assert decode_kek(stored["key_encryption_key"]) == s.kek
        assert load_settings().kek == s.kek
        assert stat.S_IMODE((env / "secrets.json").stat().st_mode) == 0o600

    def test_the_environment_wins(self, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        kek = "ZW52aXJvbm1lbnQta2V5LWVuY3J5cHRpb24ta2V5LTMy"
        monkeypatch.setenv("KEY_ENCRYPTION_KEY", kek)
        assert load_settings().kek == decode_kek(kek)


class TestBadValues:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("KEY_ENCRYPTION_KEY", "short-secret-value"),
            ("KEY_ENCRYPTION_KEY", "!!!!" * 12),
            ("JWT_ALGORITHM", "RS256"),
            ("JWT_ALGORITHM", "none"),
            ("KEY_REFRESH_SECONDS", "61"),
            ("KEY_REFRESH_SECONDS", "0.001"),  # a query a millisecond: half a core, idle
            ("KEY_PUBLISH_SECONDS", "-1"),
            ("KEY_PUBLISH_SECONDS", "29"),  # below KEY_REFRESH_SECONDS (30)
            ("KEY_ROTATION_DAYS", "-1"),
        ],
    )
    def test_one_line_naming_the_variable(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        message = str(raised.value)
        assert message.startswith(name + ":"), message
        assert "\n" not in message
        if name == "KEY_ENCRYPTION_KEY":
            assert value not in message
