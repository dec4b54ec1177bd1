"""Waiting for a slot of a limit: bounded, woken in turn by the checks of this process."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

R = TypeVar("R")


class Turns:
    """Attempts beyond a limit wait their turn instead of being refused while the earlier
    ones are checked. A check that gives a slot back in this process wakes the longest
    waiter of its key (one, not all: a herd of waiters would each hit the database);
    slots given back by other processes are seen by polling with a growing, jittered
    delay."""

    FIRST_DELAY = 0.05
    MAX_DELAY = 0.5

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self._waiters: dict[tuple[str, str], deque[asyncio.Future[None]]] = {}

    async def until(
        self, scope: str, key: str, attempt: Callable[[], Awaitable[R | None]]
    ) -> R | None:
        """Run `attempt` until it returns a result, at most `wait_seconds` (monotonic time:
        the injected clock may be frozen); None when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        delay = self.FIRST_DELAY
        while True:
            result = await attempt()
            remaining = deadline - loop.time()
            if result is not None or remaining <= 0:
                return result
            # Jitter, not secrecy: waiters on other processes should not poll in step.
            pause = min(remaining, delay * random.uniform(0.5, 1))  # noqa: S311
            await self._wait((scope, key), pause)
            delay = min(delay * 2, self.MAX_DELAY)

    async def _wait(self, name: tuple[str, str], pause: float) -> None:
        turn = asyncio.get_running_loop().create_future()
        queue = self._waiters.setdefault(name, deque())
        queue.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), pause)
        except TimeoutError:
            pass
        finally:
            if not turn.done():
                turn.cancel()
            if turn in queue:
                queue.remove(turn)
            if not queue:
                self._waiters.pop(name, None)

    def next(self, scope: str, key: str) -> None:
        """A slot of `key` was given back here (or a waiter was refused, which the next one
        should learn at once): wake the longest waiter."""
        queue = self._waiters.get((scope, key))
        while queue:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
