"""Account rules: names, creation, passwords, enabling and disabling."""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Executor, Writer
from conductor_api.devices import service as devices
from conductor_api.errors import AppError, NotFound, UsernameTaken
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.mfa.service import Owner, SecondFactor, void_pending
from conductor_api.security.passwords import PasswordHasher, check_password_rules, fold, invisible
from conductor_api.sessions.service import revoke_many
from conductor_api.users import repository
from conductor_api.users.confusables import skeleton_digest
from conductor_api.users.models import User
from conductor_api.values import ClientInfo

USERNAME_MAX = 150
LOOKALIKE_DETAIL = "This username is taken, or looks too much like a taken one"
_USERNAME_RE = re.compile(r"^[\w.@+-]{3,150}$")


class InvalidUsername(AppError):
    status, code = 422, "invalid_username"
    detail = "Username must be 3 to 150 letters, digits or . @ + - _"


def normalize_username(username: str) -> str:
    """The key that logins and lockouts match on: NFKC, case-folded, NFKC again.

    Folding can make a name much longer ("\ufdfa" becomes 18 characters, "ß" two), past
    the 150 characters the key columns hold. No account can have such a key (registration
    refuses it), so it is replaced by a fixed-length digest: the login then takes the
    unknown-name path (dummy hash, 401) and its lockout counter still works. The `~`
    cannot occur in a real key, so no digest can collide with one."""
    key = fold(username)
    if len(key) <= USERNAME_MAX:
        return key
    return "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_username(username: str) -> str:
    """The name as stored (NFKC), or `InvalidUsername`. A character that prints as nothing
    is refused even where Unicode calls it a letter (the Hangul fillers): "bob" with one
    added would look exactly like "bob", and the confusable skeleton keeps it."""
    name = unicodedata.normalize("NFKC", username)
    if (
        not _USERNAME_RE.fullmatch(name)
        or len(fold(name)) > USERNAME_MAX
        or any(invisible(ch) for ch in name)
    ):
        raise InvalidUsername()
    return name


async def create_user(
    db: AsyncSession,
    hasher: PasswordHasher,
    *,
    username: str,
    password: str,
    min_password_length: int,
    now: datetime,
) -> User:
    """Create an active user after checking the name and the password rules."""
    name = check_username(username)
    # Hashed before the first query: on SQLite the transaction holds the write lock.
    password_hash = await hash_new_password(hasher, password, min_password_length, name)
    key = normalize_username(name)
    skeleton = skeleton_digest(name)
    if await repository.get_by_key(db, key) is not None:
        raise UsernameTaken()
    # A name that looks like an existing one (a Cyrillic a for a Latin one, "rn" for "m")
    # would let its owner pass for the other user: refused like a taken name.
    if await repository.skeleton_taken(db, skeleton):
        raise UsernameTaken(LOOKALIKE_DETAIL)
    user = User(
        id=uuid.uuid4(),
        username=name,
        username_key=key,
        username_skeleton=skeleton,
        password_hash=password_hash,
        is_active=True,
        created_at=now,
        password_changed_at=now,
    )
    try:
        async with db.begin_nested():
            await repository.add(db, user)
    except IntegrityError:
        raise UsernameTaken() from None
    return user


async def require_user(db: AsyncSession, username: str) -> User:
    """The user named `username` (any case), or `NotFound`."""
    user = await repository.get_by_key(db, normalize_username(username))
    if user is None:
        raise NotFound(f"No user named {username!r}")
    return user


async def list_users(db: AsyncSession) -> Sequence[User]:
    """Every user, by normalized name."""
    return await repository.list_all(db)


async def get(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user with this id, if any."""
    return await repository.get(db, user_id)


async def find(db: Executor, username_key: str) -> User | None:
    """The user whose normalized name is `username_key`, if any: a copy to read, not
    tracked by `db` (changes to it are not written)."""
    return await repository.read_by_key(db, username_key)


def find_with(username_key: str) -> tuple[Select[Any], dict[str, object]]:
    """`find` as a statement and its parameters, for another statement to carry (a
    sign-in's takes, `SignIn.limits`); `found` reads its row."""
    return repository.by_key(username_key)


def found(columns: Sequence[Any]) -> User | None:
    """The user of a row of `find_with`'s statement, if any (a copy, not tracked)."""
    return repository.from_columns(columns)


async def lock(db: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user row read afresh under the exclusive lock of password changes and disables:
    they wait for the sign-ins in flight (`hold`), and sign-ins wait for them."""
    return await repository.get(db, user_id, lock=True)


async def hold(
    db: Writer, user_id: uuid.UUID, device: str | None = None, *, exclusive: bool = False
) -> tuple[User, bool] | None:
    """The user row read afresh under the shared lock of a sign-in's start of session: it
    orders the sign-in against password changes and disables (`lock`), not against the
    user's other sign-ins, so a burst of right passwords does not queue on the row. A copy
    to read, not tracked by `db`; with it, whether the user's sign-ins need a second
    factor (`SecondFactor.is_on`, in the same read). With `device` (the sign-in's
    fingerprint), sign-ins of that one device are ordered too: of two at once, the second
    revokes the first's session, as one after the other would. `exclusive`: the lock of a
    password change (`lock`) instead, for a flow that goes on to change the password."""
    return await repository.read_shared(db, user_id, device, exclusive=exclusive)


async def upgrade_hash(db: AsyncSession, user_id: uuid.UUID, old: str, new: str) -> None:
    """Replace an outdated hash (bcrypt, weaker Argon2) of the same password, unless the
    stored hash changed meanwhile (a password change, or another sign-in's upgrade)."""
    await repository.replace_hash(db, user_id, old, new)


def check_new_password(password: str, min_password_length: int, username: str) -> None:
    """Refuse a new password that breaks the rules (costs no hash)."""
    check_password_rules(password, min_password_length, username)


async def hash_new_password(
    hasher: PasswordHasher, password: str, min_password_length: int, username: str
) -> str:
    """Check a new password against the rules, then hash it (outside any transaction)."""
    # zxcvbn is pure Python (up to ~50 ms): in a thread, so other requests keep moving.
    await asyncio.to_thread(check_password_rules, password, min_password_length, username)
    return await hasher.hash(password)


async def set_password(
    db: AsyncSession,
    user: User,
    password_hash: str,
    *,
    now: datetime,
    keep_session: uuid.UUID | None = None,
    client: ClientInfo | None = None,
) -> list[uuid.UUID]:
    """Store a new hash (from `hash_new_password`) and revoke every session but
    `keep_session`; returns the ids of those revoked."""
    # The row lock first: a sign-in that checked the old password and is about to start its
    # session either commits before this (and its session is revoked below) or sees the
    # new hash and fails.
    await lock(db, user.id)
    # An explicit UPDATE, not a flush of `user`: the password-change flow loads the user in
    # an earlier transaction, and a detached object's changes would never be written.
    await repository.set_password(db, user.id, password_hash, now)
    user.password_hash = password_hash
    user.password_changed_at = now
    await events.record(
        db, EventType.PASSWORD_CHANGED, now=now, username_key=user.username_key, user_id=user.id,
        ip_address=client.ip_address if client else None,
        user_agent=client.user_agent if client else None, session_id=keep_session,
    )  # fmt: skip
    # A device token vouches for a device that knew the old password: it goes with it, and
    # so do the sign-ins waiting for their second step after the old password.
    await devices.revoke_all(db, user.id, now)
    await void_pending(db, user.id)
    return await revoke_many(
        db, user, now, client, reason="password_changed", except_id=keep_session
    )


async def set_active(db: AsyncSession, user: User, active: bool, now: datetime) -> list[uuid.UUID]:
    """Enable or disable a user; disabling revokes every session, whose ids it returns."""
    # The same row lock as a sign-in's start of session: see `set_password`.
    await lock(db, user.id)
    user.is_active = active
    await db.flush()
    if active:
        return []
    await devices.revoke_all(db, user.id, now)
    # A second step waiting when the account was disabled must not finish after an enable.
    await void_pending(db, user.id)
    return await revoke_many(db, user, now, None, reason="account_disabled")


async def reset_mfa(
    db: AsyncSession, user: User, mfa: SecondFactor, now: datetime
) -> tuple[bool, list[uuid.UUID]]:
    """The operator's reset: the second factor off, its recovery codes void, every session
    revoked. Returns whether a factor was on, and the revoked sessions' ids."""
    # The row lock first, as `set_password`: a second step finishing now either commits its
    # session before this (revoked below) or waits and finds its pending sign-in gone.
    await lock(db, user.id)
    owner = Owner(user.id, user.username, user.username_key)
    was_on = await mfa.turn_off(db, owner, now)
    return was_on, await revoke_many(db, user, now, None, reason="mfa_reset")
