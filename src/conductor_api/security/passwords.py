"""Password hashing (Argon2id, bcrypt read-only) off the event loop, and the password rules."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib
import os
import secrets
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from types import ModuleType
from typing import Protocol, TypeVar, cast

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from conductor_api.errors import PasswordRejected

T = TypeVar("T")

MAX_PASSWORD_LENGTH = 1024

# OWASP's Argon2id floor: 19 MiB, 2 passes, 1 lane. Each hash in flight holds ~19 MiB,
# which is why concurrent hashes are capped (see `PasswordHasher.__init__`).
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


def make_password_hash() -> PasswordHash:
    """Argon2id for new hashes; bcrypt only so that hashes from older installs still verify."""
    return PasswordHash(
        (
            Argon2Hasher(
                time_cost=ARGON2_TIME_COST,
                memory_cost=ARGON2_MEMORY_KIB,
                parallelism=ARGON2_PARALLELISM,
            ),
            BcryptHasher(),
        )
    )


# How long the hash pool must stay idle before its buffers go back to the system.
IDLE_TRIM_SECONDS = 1.0

# glibc's mallopt parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# The largest mmap threshold glibc accepts on 64-bit: every Argon2id buffer (19 MiB) is
# served from the heap, not from a fresh mapping.
_MMAP_THRESHOLD_MAX = 32 << 20
# Free memory at the top of the heap is kept up to this much; `malloc_trim` returns it.
_TRIM_THRESHOLD = 256 << 20


@cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once per process (finding it runs `ldconfig`), or None."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        return ctypes.CDLL(libc_name)
    except OSError:
        return None


@cache
def tune_allocator() -> Callable[[int], int] | None:
    """Keep Argon2id buffers mapped while hashes run, so that they can be given back when
    hashing stops; glibc's `malloc_trim` to give them back, or None off glibc. Once per
    process, before it starts threads (`serving.worker` calls it first thing): glibc fixes
    its number of arenas when a second thread first needs one.

    By default glibc maps a fresh 19 MiB buffer for the first hashes (every page faulted in
    and zeroed by the kernel: a third of a verify's CPU), then, once its mmap threshold has
    grown, keeps each hashing thread's buffer resident for good in that thread's own arena,
    out of `malloc_trim`'s reach. Here the thresholds are fixed and every thread shares the
    main arena: buffers are reused hash after hash, and `malloc_trim(0)` (called once the
    hash pool has been idle for a moment) returns every free page to the system."""
    libc = _libc()
    if libc is None:
        return None
    try:
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except AttributeError:
        return None
    if (
        mallopt(_M_ARENA_MAX, 1)
        and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    ):
        return cast("Callable[[int], int]", malloc_trim)
    return None


# How much lower than the rest of the process a hashing thread runs (nice levels).
HASH_NICENESS = 10


# The name a hashing thread carries in the operating system (`top -H`, `ps -T`, /proc).
HASH_THREAD_NAME = "pwhash"
# prctl's option that names the calling thread (Linux).
_PR_SET_NAME = 15


def _name_thread(name: str) -> None:
    """Name the calling thread in the operating system (Linux; elsewhere nothing): so that
    an operator's `top -H` tells the hashing threads from the event loop, and the benchmark
    counts their CPU apart."""
    libc = _libc() if sys.platform == "linux" else None
    if libc is None:
        return
    with contextlib.suppress(AttributeError):
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def hashing_thread() -> None:
    """A hashing thread's start: its name (`HASH_THREAD_NAME`), and a priority below the
    event loop's (`yield_to_requests`)."""
    _name_thread(HASH_THREAD_NAME)
    yield_to_requests()


def yield_to_requests() -> None:
    """Lower the calling thread's scheduling priority (Linux: niceness is per thread).

    A login flood keeps every hashing thread busy; at equal priority the event loop would
    get a third of the CPU at best, and every other request (a token refresh, a health
    check) would wait behind the hashes. One nice level lower than the event loop would
    already help; ten gives the loop (and the database) the CPU whenever they need it, and
    the hashes all the rest, so logins lose nothing on an idle machine."""
    if not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + HASH_NICENESS))


class HashObserver(Protocol):
    """Told about every hash: the metrics' queue gauge and timing histogram."""

    def hash_queued(self) -> None:
        """A hash waits for a thread."""

    def hash_dequeued(self) -> None:
        """A hash left the queue (taken by a thread, or cancelled)."""

    def hash_done(self, seconds: float) -> None:
        """A hash took `seconds` on its thread."""


class _Unobserved:
    def hash_queued(self) -> None:
        pass

    def hash_dequeued(self) -> None:
        pass

    def hash_done(self, seconds: float) -> None:
        pass


class PasswordHasher:
    """Hashes and verifies in a bounded thread pool, never on the event loop."""

    def __init__(self, concurrency: int, observer: HashObserver | None = None) -> None:
        self._malloc_trim = tune_allocator()
        self._in_flight = 0
        self._trim_timer: asyncio.TimerHandle | None = None
        self._observer: HashObserver = observer or _Unobserved()
        self._hash = make_password_hash()
        # The pool size is the cap: an unbounded pool lets a login flood hold ~19 MiB per
        # queued hash at once. Argon2 releases the GIL, so these threads use every core.
        self._pool = ThreadPoolExecutor(
            max_workers=concurrency,
            thread_name_prefix=HASH_THREAD_NAME,
            initializer=hashing_thread,
        )
        self._dummy_hash: str | None = None

    async def start(self) -> None:
        """Compute the dummy hash used for unknown usernames."""
        self._dummy_hash = await self.hash(secrets.token_urlsafe(32))

    def close(self) -> None:
        """Stop the hashing threads."""
        self._cancel_trim()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        """Argon2id hash of `password`."""
        return await self._run(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str) -> tuple[bool, str | None]:
        """Whether `password` matches, and a new Argon2id hash when the stored one is outdated."""
        return await self._run(self._verify_sync, password, password_hash)

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        observer = self._observer

        def timed() -> T:
            observer.hash_dequeued()
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                observer.hash_done(time.perf_counter() - started)

        def leave_if_cancelled(future: Future[T]) -> None:
            # A job cancelled before a thread took it never runs `timed`.
            if future.cancelled():
                observer.hash_dequeued()

        observer.hash_queued()
        future = self._pool.submit(timed)
        future.add_done_callback(leave_if_cancelled)
        self._started()
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._ended()

    def _started(self) -> None:
        self._in_flight += 1
        self._cancel_trim()

    def _cancel_trim(self) -> None:
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None

    def _ended(self) -> None:
        # Buffers are kept while hashes keep coming; once none has run for a moment, the
        # pool gives the memory back (on a thread of its own: it is idle).
        self._in_flight -= 1
        if self._in_flight == 0:
            loop = asyncio.get_running_loop()
            self._trim_timer = loop.call_later(IDLE_TRIM_SECONDS, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_timer = None
        if self._in_flight == 0 and self._malloc_trim is not None:
            with contextlib.suppress(RuntimeError):  # the pool was shut down
                self._pool.submit(self._malloc_trim, 0)

    async def verify_dummy(self, password: str) -> None:
        """Verify against a hash no password matches, so that an unknown username takes
        as long as a wrong password and cannot be told apart by timing."""
        assert self._dummy_hash is not None, "start() computes the dummy hash"
        await self.verify(password, self._dummy_hash)

    def _verify_sync(self, password: str, password_hash: str) -> tuple[bool, str | None]:
        try:
            return self._hash.verify_and_update(password, password_hash)
        except UnknownHashError:
            return False, None
        except ValueError:
            # bcrypt refuses passwords over 72 bytes rather than truncating them: such a
            # password cannot be checked exactly as typed against an old bcrypt hash.
            return False, None


# zxcvbn's score (0-4) below which a new password is refused: 3 means "safely unguessable"
# against an online attacker and slowed offline ones (about 10^8 to 10^10 guesses).
MIN_STRENGTH_SCORE = 3
# zxcvbn's matching grows faster than linearly with length (a random 72-character password
# took 0.5 s of CPU, 40 characters 0.05 s), so only a prefix is scored: characters after
# a strong prefix only add strength, and a weak prefix is not made safe by a tail of noise.
SCORED_PREFIX = 40
# Characters that print as nothing but are not in the Z* or Cf categories.
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


@cache
def _zxcvbn() -> ModuleType:
    """zxcvbn, imported on first use rather than at start (see `common_passwords`)."""
    return importlib.import_module("zxcvbn")


@cache
def common_passwords() -> frozenset[str]:
    """zxcvbn's 30,000 most common passwords, those of 8 characters or more (anything
    shorter is refused by length).

    zxcvbn is imported whole, on first use: its strength estimate needs the ranked word
    lists it builds at import. Measured on this project (RSS of one process, Python 3.11):
    the app alone 84 MiB, with the password list only 91 MiB, with zxcvbn imported 97 MiB,
    so the whole estimator costs about 6 MiB per worker more than the list alone."""
    lists = _zxcvbn().frequency_lists.FREQUENCY_LISTS
    return frozenset(w for w in lists["passwords"] if len(w) >= 8)


def fold(text: str) -> str:
    """NFKC, case-folded, NFKC again: what makes two usernames the same (and a password the
    username: "STRASSE" is "straße", fullwidth letters are letters)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def invisible(ch: str) -> bool:
    """Whether `ch` prints as nothing: a space, a format character, or a blank such as the
    Hangul fillers (letters to Unicode, blanks to the eye)."""
    return ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cf") or ch in _BLANKS


def _weakness(password: str, username: str | None) -> str | None:
    """Why zxcvbn finds `password` easy to guess, in its own plain words, or None."""
    inputs = [username] if username else []
    result = _zxcvbn().zxcvbn(
        password[:SCORED_PREFIX], user_inputs=inputs, max_length=SCORED_PREFIX
    )
    if result["score"] >= MIN_STRENGTH_SCORE:
        return None
    feedback = result.get("feedback") or {}
    hints = [feedback.get("warning") or "", *(feedback.get("suggestions") or [])]
    words = " ".join(h.strip() for h in hints if h and h.strip())
    return words or "Add another word or two. Uncommon words are better."


def check_password_rules(password: str, min_length: int, username: str | None = None) -> None:
    """Raise `PasswordRejected` unless `password` meets the contract's rules and zxcvbn
    finds it hard enough to guess."""
    length = len(password)
    if length < min_length:
        raise PasswordRejected(f"Password must be at least {min_length} characters")
    if length > MAX_PASSWORD_LENGTH:
        raise PasswordRejected(f"Password must be at most {MAX_PASSWORD_LENGTH} characters")
    # A lone surrogate (JSON "\\ud800", or bytes that are not UTF-8 read by the CLI) cannot
    # be encoded, so it could never be hashed: refused as a rule, not failed as a 500.
    if any(unicodedata.category(ch) == "Cs" for ch in password):
        raise PasswordRejected("Password must be valid text (it contains an unpaired surrogate)")
    if any(unicodedata.category(ch) == "Cc" for ch in password):
        raise PasswordRejected("Password must not contain control characters")
    if all(invisible(ch) for ch in password):
        raise PasswordRejected(
            "Password must contain visible characters, not only spaces or invisible ones"
        )
    folded = password.lower()
    if folded in common_passwords():
        raise PasswordRejected("This password is too common")
    if username is not None and fold(password) == fold(username):
        raise PasswordRejected("Password must not be the username")
    weakness = _weakness(password, username)
    if weakness is not None:
        raise PasswordRejected(f"This password is too easy to guess. {weakness}")
