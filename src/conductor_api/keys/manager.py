"""Keeps one process's `KeyRing` in step with the database: at start, at a bounded interval,
and (rate-limited) when a token names a kid this process has not seen yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.clock import Clock
from conductor_api.config import ConfigError, Settings
from conductor_api.errors import ServiceUnavailable
from conductor_api.keys import crypto, repository, service
from conductor_api.keys.ring import KeyRing

log = logging.getLogger("conductor_api.keys")
# A token with an unknown kid re-reads the key set at most this often per process: enough to
# follow a rotation made elsewhere at once, too rare for forged kids to load the database.
UNKNOWN_KID_RELOAD_SECONDS = 1.0
# What a database that does not answer raises (a DBAPIError wraps the driver's).
_DATABASE_DOWN = (sa_exc.DBAPIError, OSError, TimeoutError)
WRONG_KEK = (
    "KEY_ENCRYPTION_KEY: does not decrypt the signing keys stored in the database "
    "(they belong to another key); set the KEY_ENCRYPTION_KEY of the instances that made them"
)


class KeyManager:
    """Loads, maintains and re-reads the key set for one process."""

    def __init__(
        self, settings: Settings, clock: Clock, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.ring = KeyRing(settings.jwt_algorithm)
        self._cipher = crypto.KeyCipher(settings.kek)
        self._policy = service.KeyPolicy.of(settings)
        self._interval = settings.key_refresh_seconds
        self._clock = clock
        self._sessionmaker = sessionmaker
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last_unknown_read = 0.0
        self._loaded = False

    async def start(self) -> None:
        """Make sure a current key exists, check that every stored key opens, load the set;
        a wrong KEY_ENCRYPTION_KEY raises `ConfigError` before anything is generated.

        A database that does not answer does not stop the start: a worker that uvicorn
        restarts during an outage must come up and answer 503s like its siblings, not take
        the server down. The set is then loaded by the background loop, retried every
        second (`serve` itself checked the key set before starting any worker)."""
        try:
            await self.maintain()
        except _DATABASE_DOWN as e:
            log.warning("signing keys not loaded at start: %s; retrying", type(e).__name__)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def maintain(self, *, take_over: bool = True) -> None:
        """Apply the rotation rules now and reload (`service.maintain`)."""
        for attempt in range(3):
            try:
                async with self._sessionmaker.begin() as db:
                    rows = await service.maintain(
                        db, self._cipher, self._policy, self._now(), take_over=take_over
                    )
                    self.ring.replace(rows, self._cipher)
                self._loaded = True
                return
            except crypto.KeyDecryptionError:
                raise ConfigError(WRONG_KEK) from None
            except sa_exc.IntegrityError:
                # Another instance changed the set at the same moment: read theirs.
                if attempt == 2:
                    raise

    async def refresh(self) -> None:
        """Re-read the key set; apply the rules only when something is due."""
        async with self._lock:
            async with self._sessionmaker.begin() as db:
                rows = await repository.all_keys(db)
                due = service.due(rows, self._policy, self._now())
                if not due:  # `maintain` records it otherwise
                    await service.record_lifetime(db, rows, self._policy)
            if due:
                await self.maintain(take_over=False)
            else:
                self.ring.replace(rows, self._cipher)
                self._loaded = True

    async def reload_for_unknown_kid(self, kid: str) -> bool:
        """Re-read the set for a kid not seen yet, unless that was done just now; whether
        the kid is known afterwards."""
        # Only reads made for unknown kids count: one the periodic loop made a moment ago
        # may have missed a key made current elsewhere with --now.
        if time.monotonic() - self._last_unknown_read < UNKNOWN_KID_RELOAD_SECONDS:
            # A reload in progress (or just done) answers for this kid too.
            async with self._lock:
                return self._known(kid)
        # Marked before the read starts, so that callers arriving meanwhile wait for it
        # (on the lock) instead of starting reads of their own.
        self._last_unknown_read = time.monotonic()
        try:
            await self.refresh()
        except (crypto.KeyDecryptionError, ConfigError):
            log.error("a stored signing key does not decrypt under KEY_ENCRYPTION_KEY")
            return False
        return self._known(kid)

    @property
    def loaded(self) -> bool:
        """Whether the key set has been read at least once (not while the database has been
        down since this process started)."""
        return self._loaded

    def _known(self, kid: str) -> bool:
        if not self._loaded and not self.ring.knows(kid):
            # Never loaded (the database was down at start): which kids are genuine is not
            # known yet, so the answer is "try again", not "invalid token".
            raise ServiceUnavailable()
        return self.ring.knows(kid)

    async def _loop(self) -> None:
        while True:
            try:
                wait = self._interval if self._loaded else 1.0
                await asyncio.wait_for(self._stopping.wait(), wait)
                return
            except TimeoutError:
                pass
            try:
                if self._loaded:
                    await self.refresh()
                else:
                    await self.maintain()
            except Exception as e:  # the database may be down; the old set stays in use
                log.warning("signing keys not re-read: %s", type(e).__name__)

    def _now(self) -> datetime:
        return self._clock.now()

    async def close(self) -> None:
        """Stop the periodic re-read; a re-read under way finishes first, since cancelling
        it mid-statement could leave its SQLite transaction open on a stray connection."""
        if self._task is not None:
            self._stopping.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None
