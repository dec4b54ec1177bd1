"""DPoP's settings are validated like the others: one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from conductor_api.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("name", "value"),
    [("dpop_max_skew_seconds", "0"), ("dpop_max_skew_seconds", "601"), ("require_dpop", "maybe")],
)
def test_bad_values_stop_with_one_line(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(conductor_data_dir=tmp_path, _env_file=None, **{name: value})
    message = str(e.value)
    assert message.startswith(name.upper() + ":") and "\n" not in message


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(conductor_data_dir=tmp_path, _env_file=None)
    assert settings.dpop_max_skew_seconds == 60
    assert not settings.dpop_require_nonce and not settings.require_dpop
