"""The hash pool: its threads yield the CPU to requests; Argon2id buffers are reused while
hashes run and returned once the pool is idle.

Memory is measured in a fresh interpreter, as a server worker is: the allocator settings
apply to the threads a process starts after them."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conductor_api.security.passwords import HASH_NICENESS, HASH_THREAD_NAME, PasswordHasher

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's",
)

PROBE = """
import asyncio, json, resource, secrets
from conductor_api.security.passwords import IDLE_TRIM_SECONDS, PasswordHasher

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

async def main():
    hasher = PasswordHasher(concurrency=2)
    password = secrets.token_hex(16)
    before = rss_mib()
    stored = await hasher.hash(password)
    await asyncio.gather(*(hasher.verify(password, stored) for _ in range(4)))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    results = await asyncio.gather(*(hasher.verify(password, stored) for _ in range(10)))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    busy = rss_mib()
    await asyncio.sleep(IDLE_TRIM_SECONDS + 1)
    idle = rss_mib()
    hasher.close()
    print(json.dumps({"ok": all(ok for ok, _ in results), "faults": faults,
                      "before": before, "busy": busy, "idle": idle}))

asyncio.run(main())
"""


async def test_hashing_threads_run_below_the_event_loop() -> None:
    hasher = PasswordHasher(concurrency=2)
    try:
        await asyncio.gather(*(hasher.hash("x" * 16) for _ in range(2)))
        threads = [t for t in threading.enumerate() if t.name.startswith("pwhash")]
        assert threads
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        for thread in threads:
            assert thread.native_id is not None
            niceness = os.getpriority(os.PRIO_PROCESS, thread.native_id)
            assert niceness == min(19, mine + HASH_NICENESS)
    finally:
        hasher.close()


def _system_name(tid: int | None) -> str:
    """A thread's name as the system shows it."""
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


@pytest.mark.skipif(platform.system() != "Linux", reason="thread names in /proc are Linux's")
async def test_hashing_threads_carry_their_name_in_the_system() -> None:
    hasher = PasswordHasher(concurrency=2)
    try:
        await asyncio.gather(*(hasher.hash("x" * 16) for _ in range(2)))
        threads = [t for t in threading.enumerate() if t.name.startswith(HASH_THREAD_NAME)]
        assert len(threads) == 2
        for thread in threads:
            assert _system_name(thread.native_id) == HASH_THREAD_NAME
        # Only those: the event loop's thread keeps its own name.
        assert _system_name(threading.get_native_id()) != HASH_THREAD_NAME
    finally:
        hasher.close()


@pytest.fixture(scope="module")
def probe() -> dict[str, float]:
    """Ten verifies two at a time after a warm-up, then an idle pause, in a new process."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    result: dict[str, float] = json.loads(proc.stdout)
    return result


@glibc_only
def test_buffers_are_reused_between_hashes(probe: dict[str, float]) -> None:
    assert probe["ok"]
    # A fresh 19 MiB mapping per hash faults in ~4,900 pages; reused buffers almost none.
    assert probe["faults"] < 10 * 500


@glibc_only
def test_buffers_stay_while_hashes_run(probe: dict[str, float]) -> None:
    # Two hashing threads keep their 19 MiB each between hashes.
    assert probe["busy"] - probe["before"] > 30


@glibc_only
def test_buffers_go_back_when_the_pool_goes_idle(probe: dict[str, float]) -> None:
    assert probe["idle"] - probe["before"] < 8
