"""Counters per username and per client address: settled failures and checks in flight.

Every change is one atomic statement: `read` shows the counter without a lock, the caller
decides, and `take` reserves a slot with an UPDATE guarded by the same condition. A
check-then-increment across the `await` of the password hash would let every parallel
request read the same count and all get through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    CTE,
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    Table,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.models import LoginThrottle
from conductor_api.db import (
    Autocommit,
    Executor,
    UTCDateTime,
    Writer,
    dialect_insert,
    dialect_of,
    execute_direct,
)

USER = "user"
IP = "ip"
# A device token's own counter, keyed by the token's id (trusted devices).
DEVICE = "device"
# Registrations per client address (each one costs an Argon2id hash).
REGISTER = "register"
# Passkey sign-in challenges asked for per client address (each one a stored row).
PASSKEY = "passkey"
T = LoginThrottle


@dataclass(frozen=True, slots=True)
class Counter:
    """A counter's state right after a statement changed it."""

    failures: int
    pending: int
    locked_until: datetime | None
    window_started_at: datetime


# Every statement below is built once, with bind parameters, and executed as Core (the
# ORM's bulk-update machinery has nothing to synchronize here): a sign-in runs several of
# them, and building and cache-keying each expression anew cost more than running it.
_t = cast(Table, LoginThrottle.__table__)
_c = _t.c
_RETURNING = (_c.failures, _c.pending, _c.locked_until, _c.window_started_at)


def _nth(name: str, n: int | None) -> str:
    """A statement's parameter's name: as it is, or for the `n`th step of a chain (takes,
    settlements)."""
    return name if n is None else f"{name}_{n}"


def _row(n: int | None = None) -> ColumnElement[bool]:
    """The counter a statement changes (of the `n`th step, in a chain)."""
    return (_c.scope == bindparam(_nth("in_scope", n))) & (_c.key == bindparam(_nth("in_key", n)))


_ROW = _row()
_NOW = bindparam("now", type_=UTCDateTime())
# The start of a window that began at or before it has ended (`now` - window).
_CUTOFF = bindparam("cutoff", type_=UTCDateTime())


def _counter(row: Any) -> Counter:
    return Counter(row[0], row[1], row[2], row[3])


def _restart(windowed: bool, cutoff: BindParameter[datetime] = _CUTOFF) -> ColumnElement[bool]:
    """Whether the failures start again: a lock that has expired, or for an address
    (`windowed`) a window that has."""
    if not windowed:
        return _c.locked_until.is_not(None) & (_c.locked_until <= _NOW)
    return _c.window_started_at <= cutoff


# Whether the reservations were left behind by a process that died during its checks.
_STALE = _c.pending_until.is_(None) | (_c.pending_until <= _NOW)


def _effective(windowed: bool, cutoff: BindParameter[datetime] = _CUTOFF) -> tuple[Any, Any, Any]:
    """Failures, reservations and lock as they count at `now`."""
    restart = _restart(windowed, cutoff)
    failures = case((restart, 0), else_=_c.failures)
    pending = case((_STALE, 0), else_=_c.pending)
    locked = case((restart, None), else_=_c.locked_until) if not windowed else _c.locked_until
    return failures, pending, locked


def _read(windowed: bool) -> Select[Any]:
    failures, pending, locked = _effective(windowed)
    return select(failures, pending, locked, _c.window_started_at).where(_ROW)


def _insert(dialect: str) -> Any:
    """An INSERT of a counter, this dialect's (for its ON CONFLICT clause)."""
    return dialect_insert(dialect, _t)


_SLOTS_UNTIL = bindparam("slots_until", type_=UTCDateTime())


# On PostgreSQL, a take that is a transaction of its own commits without waiting for its
# WAL to reach the disk (`synchronous_commit` off for that transaction only, set by the
# statement itself): the two takes' flushes were about 8 % of a password sign-in's
# database CPU (WAL syncs a sign-in 2.4 -> 0.9). What a crash of the database server
# could lose is a reservation (a slot of a check that the crash ends anyway, or a window
# or lock that had run out, restarted): never a failure, a lock or a settlement, which
# commit synchronously; and as the WAL is written in order, any later synchronous commit
# makes the take durable too.
_ASYNC_COMMIT: ColumnElement[str] = literal_column("set_config('synchronous_commit', 'off', true)")


@dataclass(frozen=True, slots=True)
class Claim:
    """A slot to take: of `scope`'s counter for `key`, while failures and checks in flight
    stay under `limit`, failures counted in fixed windows of `window` (an address) or until
    a lock ends (None)."""

    scope: str
    key: str
    limit: int
    window: timedelta | None


def _slot_params(claim: Claim, now: datetime, n: int | None = None) -> dict[str, object]:
    """The parameters of `claim`'s own in `_upsert` (the `n`th of a chain); `now` and
    `slots_until` are every take's."""
    params: dict[str, object] = {
        _nth("in_scope", n): claim.scope, _nth("in_key", n): claim.key,
        _nth("limit", n): claim.limit,
    }  # fmt: skip
    if claim.window is not None:
        params[_nth("cutoff", n)] = now - claim.window
    return params


def _upsert(dialect: str, windowed: bool, n: int | None = None, after: CTE | None = None) -> Any:
    """A take's upsert: a new counter with this slot in it, or the existing one's slot
    taken if the key is open. A counter that is closed is left as it is (no row comes
    back). For the `n`th take of a chain (`_chain`, its parameters named `..._n`), with a
    row to insert only if `after`, the take before it, took its slot."""

    def param(name: str, type_: Any = None) -> BindParameter[Any]:
        return bindparam(_nth(name, n), type_=type_)

    cutoff = param("cutoff", UTCDateTime())
    restart = _restart(windowed, cutoff)
    failures, pending, locked = _effective(windowed, cutoff)
    limit = param("limit")
    under = failures + pending < limit
    if not windowed:
        # A name at or past its limit with no lock: the limit was lowered since its failures
        # (a lock is set by the failure that reaches it). One check at a time gets through,
        # and its failure locks the name; else the name would wait and be refused for ever.
        under = under | ((failures >= limit) & (pending == 0))
    open_ = (locked.is_(None) | (locked <= _NOW)) & under
    # A name's row dates from its last attempt (retention prunes rows idle for a window);
    # an address's from the start of its failure window.
    started = case((restart, _NOW), else_=_c.window_started_at) if windowed else _NOW
    row: dict[str, Any] = {
        "scope": param("in_scope", _c.scope.type), "key": param("in_key", _c.key.type),
        "failures": literal(0, Integer), "window_started_at": _NOW,
        "pending": literal(1, Integer), "pending_until": _SLOTS_UNTIL,
    }  # fmt: skip
    statement = (
        _insert(dialect).values(row)
        if after is None
        else _insert(dialect).from_select(list(row), select(*row.values()).where(exists(after)))
    )
    return statement.on_conflict_do_update(
        index_elements=["scope", "key"],
        # Every right-hand side sees the row as it was before this statement.
        set_={
            "failures": failures,
            "window_started_at": started,
            "locked_until": locked,
            "pending": pending + 1,
            "pending_until": _SLOTS_UNTIL,
        },
        where=open_,
    )


@cache
def _take(dialect: str, windowed: bool, own_transaction: bool) -> Any:
    """One take (`_upsert`), returning the counter it changed. `own_transaction`: the
    statement is its transaction (`_ASYNC_COMMIT`)."""
    return _upsert(dialect, windowed).returning(
        *_RETURNING, *([_ASYNC_COMMIT] if own_transaction and dialect == "postgresql" else [])
    )


@cache
def _chain(windowed: tuple[bool, ...], also: Select[Any] | None) -> Select[Any]:
    """PostgreSQL: takes in order (`take_in_order`) as one statement, each a CTE that takes
    its slot only if the one before took its own, and `also` beside them; one row, with
    each take's counter (NULLs when it took nothing), then `also`'s first row (NULLs when
    it has none)."""
    takes: list[CTE] = []
    for n, each in enumerate(windowed):
        after = takes[-1] if takes else None
        upsert = _upsert("postgresql", each, n, after).returning(*_RETURNING)
        takes.append(upsert.cte(f"take_{n}"))
    joined: Any = select(literal(1).label("one")).subquery("start")
    columns: list[Any] = []
    for take_ in takes:
        joined = joined.outerjoin(take_, true())
        columns += [take_.c[column.key] for column in _RETURNING]
    if also is not None:
        read = also.subquery("also")
        joined = joined.outerjoin(read, true())
        columns += list(read.c)
    return select(*columns, _ASYNC_COMMIT).select_from(joined)


# Keyed by whether the counter has a fixed window (an address) or a lock (a name).
_READ = {windowed: _read(windowed) for windowed in (False, True)}
_RELEASE = case((_c.pending > 0, _c.pending - 1), else_=0)
_RELEASE_ROW = update(_t).where(_ROW).values(pending=_RELEASE)
_RELEASE_ROW_LEFT = _RELEASE_ROW.returning(_c.failures, _c.pending)
# A counter that this release leaves empty (no failure, no other check in flight); and one
# left empty by a release.
_LAST_SLOT = (_c.failures == 0) & (_c.pending <= 1)
_DROP_IF_LAST = delete(_t).where(_ROW, _LAST_SLOT).returning(_c.key)
_DROP_IF_EMPTY = delete(_t).where(_ROW, _c.failures == 0, _c.pending == 0)
_LOCK_UNTIL = bindparam("lock_until", type_=UTCDateTime())
_FAIL_USER = (
    update(_t)
    .where(_ROW)
    .values(
        pending=_RELEASE,
        failures=_c.failures + 1,
        locked_until=case(
            (
                _c.locked_until.is_(None) & (_c.failures + 1 >= bindparam("max_failures")),
                _LOCK_UNTIL,
            ),
            else_=_c.locked_until,
        ),
    )
    .returning(*_RETURNING)
)


def _forgiving(n: int | None = None) -> dict[str, Any]:
    """A name's right credential: its slot back, and the failures settled before the slot
    was taken (`forgiven`) forgiven, its lock with them once under `max_failures` (the
    `n`th settlement's parameters, in a chain)."""
    left = _c.failures - bindparam(_nth("forgiven", n))
    return {
        "pending": _RELEASE,
        "failures": case((left > 0, left), else_=0),
        "locked_until": case(
            (bindparam(_nth("max_failures", n)) <= left, _c.locked_until), else_=None
        ),
    }


_FORGIVE_USER = update(_t).where(_ROW).values(_forgiving())
_WINDOW_OVER = _c.window_started_at <= _CUTOFF
_FAIL_IP = (
    update(_t)
    .where(_ROW)
    .values(
        pending=_RELEASE,
        failures=case((_WINDOW_OVER, 1), else_=_c.failures + 1),
        window_started_at=case((_WINDOW_OVER, _NOW), else_=_c.window_started_at),
    )
)


@cache
def _add_failure(dialect: str) -> Any:
    return (
        _insert(dialect)
        .values(
            scope=bindparam("in_scope"),
            key=bindparam("in_key"),
            failures=1,
            pending=0,
            window_started_at=_NOW,
        )
        .on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={
                "failures": case((_WINDOW_OVER, 1), else_=_c.failures + 1),
                "window_started_at": case((_WINDOW_OVER, _NOW), else_=_c.window_started_at),
            },
        )
        .returning(*_RETURNING)
    )


def _first(rows: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    return rows[0] if rows else None


def _at(now: datetime, window: timedelta | None) -> dict[str, datetime]:
    return {"now": now} if window is None else {"now": now, "cutoff": now - window}


async def read(
    db: Executor, scope: str, key: str, now: datetime, *, window: timedelta | None
) -> Counter | None:
    """A counter as it counts at `now`, read without a lock (None when there is none)."""
    params = {"in_scope": scope, "in_key": key, **_at(now, window)}
    row = _first(await execute_direct(db, _READ[window is not None], params))
    return None if row is None else _counter(row)


async def take(db: Executor, claim: Claim, now: datetime, *, ttl: timedelta) -> Counter | None:
    """Reserve `claim`'s slot for one check if its key is not locked and its failures and
    checks in flight stay under its limit: one upsert (a key with no counter gets one,
    holding this slot), whose guard PostgreSQL evaluates on the locked row, so that no two
    requests take the last slot. The counter as it was before (None when nothing was
    taken: the key is closed). All slots are stale after `ttl` without a new one: a process
    killed during its checks cannot give them back."""
    params = _slot_params(claim, now) | {"now": now, "slots_until": now + ttl}
    statement = _take(dialect_of(db), claim.window is not None, isinstance(db, Autocommit))
    row = _first(await execute_direct(db, statement, params))
    return None if row is None else Counter(row[0], row[1] - 1, row[2], row[3])


async def take_in_order(
    db: Autocommit,
    claims: Sequence[Claim],
    now: datetime,
    *,
    ttl: timedelta,
    also: tuple[Select[Any], Mapping[str, object]] | None = None,
) -> tuple[list[Counter], tuple[Any, ...] | None]:
    """`take` each claim in turn, each only if the one before was taken: the counters (as
    they were before) of the claims taken, those before the first whose key was closed
    (all of them when none was). On PostgreSQL in one statement (one round trip and one
    commit for all, each counter's lock still taken in the order of `claims`), with `also`
    (a read and its parameters) in it: its first row's columns (all None when it has none)
    once every slot was taken. On SQLite, one statement after the other, and `also` is not
    read (None)."""
    if db.dialect_name != "postgresql":
        taken: list[Counter] = []
        for claim in claims:
            counter = await take(db, claim, now, ttl=ttl)
            if counter is None:
                break
            taken.append(counter)
        return taken, None
    params: dict[str, object] = {"now": now, "slots_until": now + ttl}
    for n, claim in enumerate(claims):
        params |= _slot_params(claim, now, n)
    statement = _chain(tuple(claim.window is not None for claim in claims), also and also[0])
    row = (await execute_direct(db, statement, params | dict(also[1] if also else {})))[0]
    taken = []
    for n in range(len(claims)):
        failures, pending, locked_until, started = row[4 * n : 4 * n + 4]
        if started is None:
            return taken, None
        taken.append(Counter(failures, pending - 1, locked_until, started))
    return taken, (tuple(row[4 * len(claims) : -1]) if also is not None else None)


async def release(db: Executor, scope: str, key: str) -> None:
    """Give a slot back without counting anything (the attempt was refused or abandoned)."""
    await execute_direct(db, _RELEASE_ROW, {"in_scope": scope, "in_key": key})


async def fail_user(
    db: Executor,
    key: str,
    now: datetime,
    *,
    max_failures: int,
    lockout: timedelta,
    scope: str = USER,
) -> bool:
    """Turn a name's slot into a failure; whether this failure locked the name."""
    lock_until = now + lockout
    params = {
        "in_scope": scope,
        "in_key": key,
        "max_failures": max_failures,
        "lock_until": lock_until,
    }
    row = _first(await execute_direct(db, _FAIL_USER, params))
    return row is not None and row[2] == lock_until


async def forgive_user(
    db: Executor, key: str, forgiven: int, *, max_failures: int, scope: str = USER
) -> None:
    """A right password gives its slot back and forgives the `forgiven` failures settled
    before it took the slot, not those settled since (a reset to zero would let each
    success hand out that many extra guesses)."""
    params = {"in_scope": scope, "in_key": key, "forgiven": forgiven, "max_failures": max_failures}
    await execute_direct(db, _FORGIVE_USER, params)


async def fail_ip(db: Executor, address: str, now: datetime, *, window: timedelta) -> None:
    """Turn an address's slot into a failure, in a fixed window of `window` length."""
    await execute_direct(db, _FAIL_IP, {"in_scope": IP, "in_key": address, **_at(now, window)})


async def release_ip(db: Executor, address: str) -> None:
    """Give an address's slot back uncounted; a row with nothing left in it goes (logins
    that did not fail leave no trace of an address). While other checks from the address
    are in flight (a NAT) or it has failures, the row stays with one slot fewer. The DELETE
    comes first: it is the one statement of the usual case, a single attempt."""
    params = {"in_scope": IP, "in_key": address}
    if await execute_direct(db, _DROP_IF_LAST, params):
        return
    # A DELETE that matched nothing locked nothing: other attempts' releases may have left
    # this one the last since.
    row = _first(await execute_direct(db, _RELEASE_ROW_LEFT, params))
    if row is not None and row[0] == 0 and row[1] == 0:
        # Guarded again: another attempt may have taken a slot since.
        await execute_direct(db, _DROP_IF_EMPTY, params)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A slot given back by a check that did not fail: of `scope`'s counter for `key`. An
    address's is released, its row dropped once empty (`release_ip`); a name's or a device
    token's forgives the `forgiven` failures settled before the slot was taken, its lock
    with them under `max_failures` (`forgive_user`), or with `forgiven` None is released
    uncounted (`release`)."""

    scope: str
    key: str
    forgiven: int | None = None
    max_failures: int = 0

    @property
    def kind(self) -> str:
        """What the settlement does to its counter: release an address's, forgive, release."""
        return (
            "address" if self.scope == IP else "forgive" if self.forgiven is not None else "release"
        )


async def settle_in_order(db: Writer, settlements: Sequence[Settlement]) -> None:
    """Settle each slot, in the order given (that of the takes: an address's row locked
    before a name's, as `take_in_order` locks them, so that the two never wait for each
    other). On PostgreSQL in one statement (`_settle_chain`), but for an address's row that
    its release left empty after all (others' slots went meanwhile), dropped by a second;
    on SQLite one statement after the other."""
    if not settlements:
        return
    if dialect_of(db) != "postgresql":
        for each in settlements:
            if each.scope == IP:
                await release_ip(db, each.key)
            elif each.forgiven is not None:
                await forgive_user(
                    db, each.key, each.forgiven, max_failures=each.max_failures, scope=each.scope
                )
            else:
                await release(db, each.scope, each.key)
        return
    params: dict[str, object] = {}
    for n, each in enumerate(settlements):
        params |= {_nth("in_scope", n): each.scope, _nth("in_key", n): each.key}
        if each.forgiven is not None:
            params |= {
                _nth("forgiven", n): each.forgiven,
                _nth("max_failures", n): each.max_failures,
            }
    chain = _settle_chain(tuple(each.kind for each in settlements))
    row = (await execute_direct(db, chain, params))[0]
    for n, each in enumerate(settlements):
        if each.kind == "address" and row[2 * n] == 0 and row[2 * n + 1] == 0:
            await execute_direct(db, _DROP_IF_EMPTY, {"in_scope": IP, "in_key": each.key})


@cache
def _settle_chain(kinds: tuple[str, ...]) -> Select[Any]:
    """PostgreSQL: settlements (`Settlement.kind`) in order as one statement, each a CTE that
    waits for the one before to have run whole (a guard on its row count, which the
    database evaluates once, before it reads a row of its own). An address's is two: the
    row deleted if this was its last slot and it holds no failure, else its slot released.
    One row: each settlement's counter as it left it (failures, pending; NULLs when it
    changed none, or deleted it)."""
    columns: list[Any] = []
    before: CTE | None = None
    for n, kind in enumerate(kinds):
        guard = [_row(n)]
        if before is not None:
            guard.append(select(func.count()).select_from(before).scalar_subquery() >= 0)
        if kind == "address":
            drop = delete(_t).where(*guard, _LAST_SLOT).returning(_c.key).cte(f"drop_{n}")
            change = update(_t).where(*guard, ~exists(drop)).values(pending=_RELEASE)
        elif kind == "forgive":
            change = update(_t).where(*guard).values(_forgiving(n))
        else:
            change = update(_t).where(*guard).values(pending=_RELEASE)
        before = change.returning(_c.failures, _c.pending).cte(f"settle_{n}")
        columns += [select(before.c[name]).scalar_subquery() for name in ("failures", "pending")]
    return select(*columns)


async def add_failure(
    db: Executor, scope: str, key: str, now: datetime, *, window: timedelta
) -> Counter:
    """Count one event in a fixed window of `window` length, in one atomic upsert, outside
    a sign-in's slots (a forged refresh token from an address, a registration)."""
    params = {"in_scope": scope, "in_key": key, **_at(now, window)}
    return _counter((await execute_direct(db, _add_failure(dialect_of(db)), params))[0])


async def unlock_user(db: AsyncSession, key: str, device_keys: Sequence[str] = ()) -> bool:
    """Clear a name's lockout and count, and those of the given device tokens (the
    operator's `users unlock`); whether any of them held a lock, a failure or a slot. The
    slots go too: those of a process killed mid-check would otherwise hold the name for up
    to a minute (a check still in flight gives its slot back to no harm: never below 0)."""
    targets = (T.scope == USER) & (T.key == key)
    if device_keys:
        targets = targets | ((T.scope == DEVICE) & T.key.in_(device_keys))
    result = await db.execute(
        update(T)
        .where(targets, (T.failures > 0) | T.locked_until.is_not(None) | (T.pending > 0))
        .values(failures=0, locked_until=None, pending=0, pending_until=None)
        .returning(T.key)
    )
    return result.first() is not None


async def locks(db: AsyncSession, now: datetime) -> dict[str, datetime]:
    """Names locked at `now`, with the end of each lock."""
    rows = await db.execute(
        select(T.key, T.locked_until).where(T.scope == USER, T.locked_until > now)
    )
    return {key: until for key, until in rows.tuples() if until is not None}
