"""The pruner that `serve` runs every `PRUNE_INTERVAL_SECONDS` in each worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_api.retention.pruner import Pruner

log = logging.getLogger("conductor_api.retention")


def describe(deleted: dict[str, int]) -> str:
    """`12 security_events, 3 sessions, 0 login_throttles`."""
    return ", ".join(f"{count} {table}" for table, count in deleted.items())


class PeriodicPruner:
    """Runs `pruner` every `interval` seconds until stopped; a failed round is logged and
    the next one tried (the database may be down for a while)."""

    def __init__(self, pruner: Pruner, interval: float, own: AsyncEngine | None = None) -> None:
        self._pruner = pruner
        self._interval = interval
        # An engine made for this pruner alone, disposed when it stops.
        self._own = own
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds that did the work (not skipped for another pruner)

    def start(self) -> None:
        """Start the loop on the running event loop."""
        self._task = asyncio.create_task(self._loop(), name="pruner")

    async def stop(self) -> None:
        """Cancel the loop and wait for it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own is not None:
            await self._own.dispose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                deleted = await self._pruner.run()
            except Exception as e:  # pruning must never take the server down
                log.warning("prune failed: %s", type(e).__name__)
                continue
            if deleted is None:
                log.debug("prune skipped: another pruner is working")
                continue
            self.rounds += 1
            log.info("pruned %s", describe(deleted))
