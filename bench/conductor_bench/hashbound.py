"""The hash bound: how many Argon2id verifies per second the server's own hasher does."""

from __future__ import annotations

import subprocess

from conductor_bench.common import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    BenchError,
)

HASH_BOUND_CODE = """
import secrets, statistics, sys, time
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
h = PasswordHash((Argon2Hasher(memory_cost=int(sys.argv[1]), time_cost=int(sys.argv[2]),
                               parallelism=int(sys.argv[3])),))
pw = secrets.token_hex(16)
stored = h.hash(pw)
wall, cpu = [], []
for _ in range(int(sys.argv[4])):
    t, c = time.perf_counter(), time.thread_time()
    ok, _new = h.verify_and_update(pw, stored)
    cpu.append(time.thread_time() - c)
    wall.append(time.perf_counter() - t)
    assert ok
print(statistics.median(wall), statistics.median(cpu))
"""


def verify_seconds(python: str, rounds: int) -> tuple[float, float]:
    """Median wall time and median CPU time of one Argon2id verify with the server's
    parameters (pwdlib's `verify_and_update`, as the server calls it), on one core."""
    args = [str(ARGON2_MEMORY_KIB), str(ARGON2_TIME_COST), str(ARGON2_PARALLELISM), str(rounds)]
    proc = subprocess.run(
        [python, "-c", HASH_BOUND_CODE, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"timing Argon2id with {python} failed: {err}")
    wall, cpu = (float(x) for x in proc.stdout.split())
    return wall, cpu
