"""Paths, targets, scenario names, and the one error type of the benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
HOST = "127.0.0.1"  # the only address this harness ever sends load to
MIB = 1024 * 1024

# Targets from the benchmark issues (the performance-at-scale round raised (b) and (c)).
TARGET_ME_RATIO = 0.7
TARGET_REFRESH_RATIO = 0.3
TARGET_LOGIN_OF_BOUND = 0.85
TARGET_PROBE_P99_MS = 50.0
TARGET_WORKER_RSS_MIB = 120.0
# /auth/me with 2 workers against 1, on each database (SO_REUSEPORT socket per worker).
TARGET_SCALING = 1.7

BUSY_CORES = 0.25  # other processes' CPU above which a scenario is flagged as disturbed

# The server's Argon2id parameters (src/conductor_api/security/passwords.py).
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

SCENARIOS = {
    "a": "a. GET /health/live (ceiling)",
    "b": "b. GET /api/v1/auth/me",
    "c": "c. POST /api/v1/auth/refresh",
    "d": "d. POST /api/v1/auth/login",
    "e": "e. GET /health/live, steady, during (d)",
    "f": "f. mixed load",
}


class BenchError(Exception):
    """Something stopped the benchmark; the message is the one line the user sees."""


def failure_line(error: BaseException) -> str:
    """The one line a run that stopped on `error` prints: never a traceback."""
    if isinstance(error, BenchError):
        return f"bench: error: {error}"
    if isinstance(error, KeyboardInterrupt):
        return "bench: error: interrupted"
    return f"bench: error: unexpected {type(error).__name__}: {error}".replace("\n", " ")


def failure_status(error: BaseException) -> int:
    """The exit status of a run that stopped on `error`."""
    return 130 if isinstance(error, KeyboardInterrupt) else 1


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
