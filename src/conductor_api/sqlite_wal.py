"""SQLite's WAL checkpoints, off the event loop.

In WAL mode a commit appends the pages it changed to the `-wal` file; a checkpoint copies
them back into the database file and syncs both, so that the WAL can start over. By default
the connection whose commit takes the WAL past 1,000 pages runs the checkpoint itself, right
after that commit. A server's statements run on the event loop's own thread
(`db.InlineSqlite`), so that checkpoint would stop every request of the worker while it
reads and writes a thousand pages and waits for two fsyncs (tens of milliseconds when the
disk is busy). So the server's connections never checkpoint (`PRAGMA wal_autocheckpoint=0`,
`db.NO_AUTOCHECKPOINT`) and a `WalCheckpointer` thread per worker does it instead, a few
times a second: a PASSIVE checkpoint, which never waits for readers or the writer and never
makes them wait, and does nothing at all when the WAL holds nothing new; and, once the WAL
file passes `WAL_LIMIT_BYTES`, a TRUNCATE one that empties it (waiting a moment).

The command line (`conductor-api prune`, `users`, ...) keeps SQLite's default: it has no
requests to hold up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# How often a worker's checkpointer looks at the WAL. A login flood writes a few thousand
# pages a second at most, so a checkpoint copies about as much as SQLite's own would (1,000
# pages); an idle WAL costs a look at the shared-memory index.
CHECKPOINT_INTERVAL_SECONDS = 0.25
# A PASSIVE checkpoint copies the WAL back but never empties the file: SQLite writes it over
# from its start only once every reader has left it, and while the pruner's batches and
# every request's reads overlap that moment may never come (the file grew to 470 MB for a
# 109 MB database). Past this size the checkpointer waits for that moment instead, up to
# `TRUNCATE_WAIT_SECONDS` (writers wait meanwhile), and empties the file.
WAL_LIMIT_BYTES = 32 * 1024 * 1024
TRUNCATE_WAIT_SECONDS = 0.05
# After a truncation that found a reader still in the WAL (a backup, say), the next try.
TRUNCATE_RETRY_SECONDS = 10.0


class WalCheckpointer:
    """One thread with a connection of its own, checkpointing the WAL every `interval`."""

    def __init__(self, path: str, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._failing = False
        self._wal = Path(f"{path}-wal")
        self._truncate_after = 0.0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    async def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        self._stop.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    if conn is None:
                        # Read-write, never create: the database is the server's to make.
                        uri = f"{Path(self._path).resolve().as_uri()}?mode=rw"
                        # The busy timeout is for a truncation only (`_checkpoint`): a
                        # PASSIVE checkpoint never waits.
                        conn = sqlite3.connect(
                            uri, uri=True, isolation_level=None, timeout=TRUNCATE_WAIT_SECONDS
                        )
                    self._checkpoint(conn)
                except sqlite3.Error as e:
                    # Once per spell of failures: a checkpoint that cannot run now (a
                    # missing file, a full disk) runs at a later tick, and meanwhile the
                    # WAL only grows.
                    if not self._failing:
                        log.warning("WAL checkpoint failed: %s", e)
                    self._failing = True
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # Its row (busy, frames in the WAL, frames copied back) needs no reading: busy
        # means another process's checkpoint is running, which then does the work.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        self._failing = False
        if time.monotonic() >= self._truncate_after and self._wal_size() > WAL_LIMIT_BYTES:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                self._truncate_after = time.monotonic() + TRUNCATE_RETRY_SECONDS

    def _wal_size(self) -> int:
        try:
            return self._wal.stat().st_size
        except OSError:
            return 0
