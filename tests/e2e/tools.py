"""Operator tools the deployment tests run for real (nginx, prometheus, promtool,
systemd-analyze): found, or the test is skipped (failed under CI, where `make test`
installs them)."""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str) -> str:
    """The path of `name`; skip the test when it is missing (fail under CI)."""
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )
    if found is None:
        message = f"{name} is not installed (`make tools` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def render(text: str, **values: str) -> str:
    """`$name` placeholders of a test-side template filled in (a missing one is an error)."""
    return string.Template(text).substitute(values)
