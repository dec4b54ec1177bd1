"""The hash queue gauge: hashes waiting for a thread, back to 0 when they ran or were
cancelled while waiting."""

from __future__ import annotations

import asyncio

from conductor_api.metrics.service import Metrics
from conductor_api.security.passwords import PasswordHasher
from tests.metrics.scrape import Scrape


def queue(metrics: Metrics) -> float:
    """The gauge's value."""
    return Scrape(metrics.render().decode()).value("conductor_password_hash_queue")


async def test_waiting_hashes_are_counted_until_a_thread_takes_them() -> None:
    metrics = Metrics()
    hasher = PasswordHasher(1, metrics)
    try:
        jobs = [asyncio.ensure_future(hasher.hash(f"password {i}")) for i in range(4)]
        await asyncio.sleep(0)  # every job submitted; one thread takes one at a time
        assert queue(metrics) >= 3
        await asyncio.gather(*jobs)
        assert queue(metrics) == 0
        s = Scrape(metrics.render().decode())
        assert s.value("conductor_password_hash_seconds_count") == 4
    finally:
        hasher.close()


async def test_a_hash_cancelled_while_waiting_leaves_the_queue() -> None:
    metrics = Metrics()
    hasher = PasswordHasher(1, metrics)
    try:
        running = asyncio.ensure_future(hasher.hash("first password"))
        waiting = asyncio.ensure_future(hasher.hash("second password"))
        await asyncio.sleep(0)
        waiting.cancel()
        await running
        await asyncio.sleep(0.05)  # the cancelled future's callback
        assert queue(metrics) == 0
        # Only the hash that ran was timed.
        assert Scrape(metrics.render().decode()).value("conductor_password_hash_seconds_count") == 1
    finally:
        hasher.close()
