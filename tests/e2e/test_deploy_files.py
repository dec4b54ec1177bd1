"""The files an operator copies from deploy/: the systemd unit passes `systemd-analyze
verify` with its hardening in place, the alert rules pass `promtool check rules`, the
Prometheus config `promtool check config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.tools import DEPLOY, tool

UNIT = DEPLOY / "conductor-api.service"


def unit_settings() -> dict[str, str]:
    """The unit's `Key=value` lines (the last one of each key)."""
    pairs = [
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    return {k.strip(): v.strip() for k, v in pairs}


class TestSystemdUnit:
    def test_hardening_and_state_directory(self) -> None:
        s = unit_settings()
        assert s["User"] == s["Group"] == "conductor-api"
        assert s["StateDirectory"] == "conductor-api"
        assert s["StateDirectoryMode"] == "0700"
        assert s["Environment"] == "CONDUCTOR_DATA_DIR=/var/lib/conductor-api"
        for key, value in {
            "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
            "PrivateTmp": "yes", "KillSignal": "SIGTERM", "CapabilityBoundingSet": "",
            # serve's status for a setting error: no restart loop on it.
            "Restart": "on-failure", "RestartPreventExitStatus": "2",
        }.items():  # fmt: skip
            assert s[key] == value, key
        assert "conductor-api serve" in s["ExecStart"]

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        analyze = tool("systemd-analyze")
        # The unit names /opt/conductor-api; verify checks that ExecStart exists, so it is
        # pointed at this checkout's command, the only change.
        binary = Path(sys.executable).parent / "conductor-api"
        text = UNIT.read_text().replace("/opt/conductor-api/.venv/bin/conductor-api", str(binary))
        unit = tmp_path / "conductor-api.service"
        unit.write_text(text)
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        # Unknown or misspelt keys are only warnings: none may appear.
        assert "conductor-api.service" not in result.stderr, result.stderr


class TestPrometheusFiles:
    def test_promtool_checks_the_rules(self) -> None:
        promtool = tool("promtool")
        result = subprocess.run(
            [promtool, "check", "rules", str(DEPLOY / "conductor-api.rules.yml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 3 rules found" in result.stdout + result.stderr

    def test_promtool_checks_the_config(self) -> None:
        promtool = tool("promtool")
        result = subprocess.run(
            [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
