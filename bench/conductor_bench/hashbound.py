"""The hash bound: how many Argon2id verifies per second the server's own hasher does."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from conductor_bench.common import BenchError
from conductor_bench.system import cores

# The server's own `PasswordHasher` (its thread pool, its allocator settings), sized as
# `serve` sizes it (PASSWORD_HASH_CONCURRENCY, one thread per core by default), given
# every verify at once after a warm-up, in a process of its own with nothing else to do.
HASH_BOUND_CODE = """
import asyncio, secrets, sys, time
from conductor_api.config import Settings
from conductor_api.security.passwords import PasswordHasher

async def main(rounds):
    pool = Settings().password_hash_concurrency
    hasher = PasswordHasher(pool)
    password = secrets.token_hex(16)
    stored = await hasher.hash(password)
    await asyncio.gather(*(hasher.verify(password, stored) for _ in range(pool)))
    wall, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(hasher.verify(password, stored) for _ in range(rounds)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert all(ok for ok, _ in results)
    hasher.close()
    print(pool, wall, cpu)

asyncio.run(main(int(sys.argv[1])))
"""


@dataclass
class HashBound:
    pool: int  # hashing threads
    rounds: int  # verifies timed
    wall_s: float  # for all of them
    cpu_s: float  # CPU time of the process meanwhile

    @property
    def rate(self) -> float:
        """Verifies per second, as timed."""
        return self.rounds / self.wall_s

    @property
    def cores(self) -> int:
        """The cores the timing hashed on: one per thread, as many as the machine has."""
        return min(self.pool, cores())

    @property
    def cpu_rate(self) -> float:
        """Verifies per second had no other process taken CPU, from the CPU time."""
        return self.cores * self.rounds / self.cpu_s

    @property
    def disturbed(self) -> bool:
        """Other processes took CPU from the timing: the wall-time rate would be low."""
        return self.rate * 1.15 < self.cpu_rate

    @property
    def bound(self) -> float:
        """Logins per second at best: the timed rate, or the CPU-time rate if disturbed."""
        return self.cpu_rate if self.disturbed else self.rate


def measure(python: str, rounds: int, env: dict[str, str]) -> HashBound:
    """Time `rounds` verifies with the server's hasher, in the server's Python and settings."""
    proc = subprocess.run(
        [python, "-c", HASH_BOUND_CODE, str(rounds)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"timing Argon2id with {python} failed: {err}")
    pool, wall, cpu = proc.stdout.split()
    return HashBound(int(pool), rounds, float(wall), float(cpu))
