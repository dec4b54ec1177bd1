"""The refresh token's compare-and-swap, the one write of every refresh.

On SQLite it is one UPDATE on the event loop's thread (`db.Autocommit`). On PostgreSQL
the refreshes that arrive while a swap is out share the next one: one UPDATE joined to
the arrays of their sessions, tokens and times. Each row still applies only if its
presented token is current, the session live and the user active, as alone; a batch is
one transaction and one commit, so the database's work, the driver's and the wake-ups
per refresh shrink as load grows (measured: a third of the client's and of the
database's CPU per swap, at 16 refreshes in flight).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import NamedTuple, Protocol

import asyncpg

from conductor_api.config import Settings
from conductor_api.db import ASYNCPG_UNAVAILABLE, Autocommit, RawPool, fetch_bounded
from conductor_api.errors import ServiceUnavailable
from conductor_api.sessions import repository


class Swap(NamedTuple):
    """One refresh's swap: the presented token's digest is replaced by the child's, at
    `now`, if it is still the session's current one (and the session began after
    `started_after`: SESSION_MAX_DAYS as it is set now, which may be lower than at its
    login)."""

    session_id: uuid.UUID
    user_id: uuid.UUID
    presented_hash: str
    child_hash: str
    now: datetime
    expires_at: datetime
    started_after: datetime


class Rotations(Protocol):
    """Applies swaps."""

    async def swap(self, swap: Swap) -> bool:
        """Whether the swap applied (the presented token was current, the session live
        and its user active). A database that does not answer raises (a 503)."""
        ...


class StatementRotations:
    """One statement per swap, atomic on its own (SQLite)."""

    def __init__(self, autocommit: Autocommit) -> None:
        self._autocommit = autocommit

    async def swap(self, swap: Swap) -> bool:
        """See `Rotations.swap`."""
        statement, params = repository.rotate_if_current(
            swap.session_id, swap.user_id, swap.presented_hash, swap.child_hash, swap.now,
            swap.expires_at, swap.started_after,
        )  # fmt: skip
        return await self._autocommit.first(statement, params) is not None


# The same conditions as `repository.ROTATE_IF_CURRENT`, for many sessions at once. The
# sessions are locked first, in the order of their ids: two batches (of two workers) that
# share sessions wait for each other rather than deadlock.
POSTGRES_SQL = (
    "WITH locked AS (SELECT id FROM sessions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) "
    "UPDATE sessions AS s SET refresh_token_hash = v.child, previous_token_hash = v.presented, "
    "rotated_at = v.now, expires_at = v.expires, last_used_at = v.now, "
    "generation = s.generation + 1 "
    "FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::varchar[], $5::timestamptz[], "
    "$6::timestamptz[], $7::timestamptz[]) AS v(id, user_id, presented, child, now, expires, "
    "started_after), locked "
    "WHERE s.id = v.id AND s.id = locked.id AND s.user_id = v.user_id "
    "AND s.refresh_token_hash = v.presented AND s.revoked_at IS NULL "
    "AND s.absolute_expires_at > v.now AND s.created_at > v.started_after "
    "AND EXISTS (SELECT 1 FROM users AS u WHERE u.id = v.user_id AND u.is_active) "
    "RETURNING s.id"
)

# A batch that lost a deadlock (with another transaction that locked the same sessions in
# the other order, such as a revocation of every session of a user) is sent again.
_DEADLOCK_TRIES = 3


class PostgresRotations:
    """Swaps on the principal loader's `RawPool`, coalesced: at most one statement is
    out at a time; the swaps that arrive meanwhile go together in the next.

    A session appears at most once in a statement (a row updated twice by one UPDATE
    takes only one of its changes): a second swap of a session already waiting goes in
    the statement after, so it sees the first one's result, as if sent alone after it.
    """

    def __init__(self, pool: RawPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._out = False
        self._waiting: dict[uuid.UUID, tuple[Swap, asyncio.Future[bool]]] = {}
        self._later: list[tuple[Swap, asyncio.Future[bool]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def swap(self, swap: Swap) -> bool:
        """See `Rotations.swap`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._waiting and not self._out:
            loop.call_soon(self._dispatch)
        if swap.session_id in self._waiting:
            self._later.append((swap, future))
        else:
            self._waiting[swap.session_id] = (swap, future)
        return await future

    def _dispatch(self) -> None:
        if not self._waiting or self._out:
            return
        batch, self._waiting = self._waiting, {}
        later, self._later = self._later, []
        for swap, future in later:
            if swap.session_id in self._waiting:
                self._later.append((swap, future))
            else:
                self._waiting[swap.session_id] = (swap, future)
        self._out = True
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: dict[uuid.UUID, tuple[Swap, asyncio.Future[bool]]]) -> None:
        try:
            swapped = await self._apply([swap for swap, _ in batch.values()])
        except BaseException as e:
            error = ServiceUnavailable() if isinstance(e, ASYNCPG_UNAVAILABLE) else e
            failed = list(batch.values())
            if isinstance(e, (OSError, TimeoutError)):
                # No answer: the swaps that waited for this one waited for the database
                # as long as it may take, and are answered now, not after a statement of
                # their own times out too (as the principal loader does).
                failed += [*self._waiting.values(), *self._later]
                self._waiting, self._later = {}, []
            for _, future in failed:
                if not future.done():
                    future.set_exception(error)
            if error is e:
                raise
            return
        finally:
            self._out = False
            self._dispatch()
        for session_id, (_, future) in batch.items():
            if not future.done():
                future.set_result(session_id in swapped)

    async def _apply(self, swaps: list[Swap]) -> set[uuid.UUID]:
        columns = [list(column) for column in zip(*swaps, strict=True)]
        tries = 1
        while True:
            try:
                rows = await fetch_bounded(self._pool, POSTGRES_SQL, *columns, bound=self._timeout)
            except asyncpg.DeadlockDetectedError:
                if tries == _DEADLOCK_TRIES:
                    raise
                tries += 1
                continue
            return {row[0] for row in rows}


def make_rotations(
    settings: Settings,
    autocommit: Autocommit,
    pool: RawPool | None,
) -> Rotations:
    """The swaps for the configured database (`pool`: the principal loader's, PostgreSQL)."""
    if pool is None:
        return StatementRotations(autocommit)
    return PostgresRotations(pool, settings.database_timeout_seconds)
