"""The key set's rules: a current key always, rotation with publish-before-sign, retirement
once every token a key signed has expired, revocation. Callers own the transaction."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.config import Settings
from conductor_api.keys import crypto, repository
from conductor_api.keys.models import (
    CURRENT,
    NEXT,
    PREVIOUS,
    RETIRED,
    REVOKED,
    SigningKey,
)
from conductor_api.security.encryption import DecryptionError, SecretBox

# Tokens a lagging worker signed with a key after it stopped being current are covered by
# this margin: workers re-read the key set at least every 60 seconds.
RETIRE_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class KeyPolicy:
    """What the rules need from the settings."""

    algorithm: str
    access_ttl: timedelta
    publish: timedelta
    rotation: timedelta | None

    @classmethod
    def of(cls, settings: Settings) -> KeyPolicy:
        """The policy of the configured settings."""
        days = settings.key_rotation_days
        return cls(
            algorithm=settings.jwt_algorithm,
            access_ttl=timedelta(minutes=settings.access_token_expire_minutes),
            publish=timedelta(seconds=settings.key_publish_seconds),
            rotation=timedelta(days=days) if days else None,
        )

    @property
    def asymmetric(self) -> bool:
        """Whether this policy signs with the key set at all."""
        return self.algorithm in ("EdDSA", "ES256")


def _find(rows: Sequence[SigningKey], state: str) -> SigningKey | None:
    return next((r for r in rows if r.state == state), None)


_KEK_CHECK = b"conductor-api key-encryption-key check v1"


async def kek_opens_check(db: AsyncSession, kek: bytes, now: datetime) -> bool:
    """Whether this KEY_ENCRYPTION_KEY opens the database's check value, sealing one with it
    when there is none yet (the first start: of instances starting at once, one seals, and
    the others open what it sealed)."""
    box = SecretBox(kek, _KEK_CHECK)
    sealed = await repository.kek_check(db)
    if sealed is None:
        await repository.add_kek_check(db, box.seal(_KEK_CHECK, _KEK_CHECK), now)
        sealed = await repository.kek_check(db)
        assert sealed is not None
    try:
        box.open(sealed, _KEK_CHECK)
    except DecryptionError:
        return False
    return True


_GENERATED = b"conductor-api generated secret v1"


async def share_generated_secrets(
    db: AsyncSession, kek: bytes, values: dict[str, str], now: datetime
) -> dict[str, str]:
    """The database's value of each generated secret in `values` (by setting name): the one
    the first instance that generated its own stored, sealed under KEY_ENCRYPTION_KEY, or
    else this instance's, stored now (of instances starting at once, one stores, and the
    others take what it stored). The caller has checked that the key opens the database's
    check value."""
    box = SecretBox(kek, _GENERATED)
    stored = await repository.generated_secrets(db)
    missing = [name for name in values if name not in stored]
    for name in missing:
        sealed = box.seal(values[name].encode(), name.encode())
        await repository.add_generated_secret(db, name, sealed, now)
    if missing:
        stored = await repository.generated_secrets(db)
    return {name: box.open(stored[name], name.encode()).decode() for name in values}


def shared_setting_digests(settings: Settings) -> dict[str, bytes]:
    """A digest of each setting that instances on one database must share, by name, keyed
    with a key derived from KEY_ENCRYPTION_KEY: stored in the database, the digest of a
    secret tells a reader without that key nothing about it.

    With another refresh secret (which also keys the DPoP nonces), issuer or audience, or
    in the HS* modes another access secret, instances refuse each other's tokens; with
    another DPoP skew, a proof spent on the stricter one is forgotten before the other
    stops accepting it; with other key timings, publish-before-sign does not hold."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None,
        info=b"conductor-api shared settings check v1",
    ).derive(settings.kek)  # fmt: skip
    values: dict[str, str | int | float] = {
        "JWT_REFRESH_SECRET_KEY": settings.refresh_secret,
        "JWT_ISSUER": settings.jwt_issuer,
        "JWT_AUDIENCE": settings.jwt_audience,
        "DPOP_MAX_SKEW_SECONDS": settings.dpop_max_skew_seconds,
    }
    if settings.asymmetric:
        values["KEY_PUBLISH_SECONDS"] = settings.key_publish_seconds
        values["KEY_REFRESH_SECONDS"] = float(settings.key_refresh_seconds)
    else:
        values["JWT_SECRET_KEY"] = settings.access_secret
    return {
        name: hmac.new(key, json.dumps([name, value]).encode(), hashlib.sha256).digest()
        for name, value in values.items()
    }


async def shared_settings_changed(
    db: AsyncSession, digests: dict[str, bytes], now: datetime
) -> list[str]:
    """The shared settings whose digest, as the last start that changed it recorded it,
    is another than this start's; those are recorded anew (and so is a setting recorded
    for the first time, which compares with nothing). Unchanged ones write nothing: a
    start on a read-only database is not refused here."""
    stored = await repository.setting_digests(db)
    changed = []
    for name, digest in digests.items():
        before = stored.get(name)
        if before is not None and hmac.compare_digest(before, digest):
            continue
        await repository.record_setting(db, name, digest, now)
        if before is not None:
            changed.append(name)
    return changed


def check_decrypts(rows: Sequence[SigningKey], cipher: crypto.KeyCipher) -> None:
    """Raise `KeyDecryptionError` unless every stored private key opens with this cipher."""
    for row in rows:
        if row.private_key is not None:
            cipher.open(row.kid, row.private_key)


def due(rows: Sequence[SigningKey], policy: KeyPolicy, now: datetime) -> bool:
    """Whether `maintain` has anything to do: read-only, so workers can ask it cheaply."""
    if not policy.asymmetric:
        return False
    current, upcoming = _find(rows, CURRENT), _find(rows, NEXT)
    if current is None:
        return True
    if current.algorithm != policy.algorithm:
        # Only a start takes the set over to a new algorithm: two instances configured
        # differently (a rollout) must not flip it back and forth every interval.
        return any(_retire_due(r, policy, now) for r in rows)
    if upcoming is not None and upcoming.sign_after <= now:
        return True
    if upcoming is None and _rotation_due(current, policy, now):
        return True
    return any(_retire_due(r, policy, now) for r in rows)


def _rotation_due(current: SigningKey, policy: KeyPolicy, now: datetime) -> bool:
    since = current.activated_at or current.created_at
    return policy.rotation is not None and since + policy.rotation <= now


def _retire_due(row: SigningKey, policy: KeyPolicy, now: datetime) -> bool:
    if row.state != PREVIOUS:
        return False
    ended = row.deactivated_at or row.created_at
    # The longest lifetime of any instance that may have signed with it, or this one's.
    lifetime = max(policy.access_ttl, timedelta(seconds=row.access_ttl_seconds or 0))
    return ended + lifetime + RETIRE_MARGIN <= now


async def record_lifetime(db: AsyncSession, rows: Sequence[SigningKey], policy: KeyPolicy) -> None:
    """Keep with each key this instance may sign with (the current key, and the next once
    its delay has passed) this instance's access-token lifetime, when it is longer than the
    one recorded: a key is retired only once the longest-lived token it may have signed has
    expired, also after a restart with a shorter ACCESS_TOKEN_EXPIRE_MINUTES. Every
    instance reads the set well within a next key's publish delay, so each has recorded
    its own before it signs with it."""
    if not policy.asymmetric:
        return
    seconds = int(policy.access_ttl.total_seconds())
    for row in rows:
        signs = row.state in (CURRENT, NEXT) and row.algorithm == policy.algorithm
        if signs and (row.access_ttl_seconds or 0) < seconds:
            await repository.raise_lifetime(db, row.kid, seconds)


async def _create(
    db: AsyncSession, cipher: crypto.KeyCipher, policy: KeyPolicy, state: str,
    now: datetime, sign_after: datetime,
) -> SigningKey:  # fmt: skip
    private = crypto.generate(policy.algorithm)
    kid = crypto.new_kid(now)
    return await repository.add(
        db,
        SigningKey(
            kid=kid, algorithm=policy.algorithm, state=state,
            public_key=crypto.public_pem(private), private_key=cipher.seal(kid, private),
            created_at=now, sign_after=sign_after,
            activated_at=now if state == CURRENT else None,
        ),
    )  # fmt: skip


async def _end(db: AsyncSession, row: SigningKey, state: str, now: datetime) -> None:
    """Take a key out of signing for good: its private half is wiped."""
    if row.state == CURRENT:
        row.deactivated_at = now
    row.state = state
    if state in (RETIRED, REVOKED):
        row.private_key = None
        if state == RETIRED:
            row.retired_at = now
        else:
            row.revoked_at = now
    await repository.save(db)


async def _promote(db: AsyncSession, upcoming: SigningKey, now: datetime) -> None:
    """The next key becomes current; the current one becomes previous, in that order of
    writes so that the one-current index never sees two."""
    rows = await repository.all_keys(db)
    current = _find(rows, CURRENT)
    if current is not None:
        await _end(db, current, PREVIOUS, now)
    upcoming.state = CURRENT
    upcoming.activated_at = now
    await repository.save(db)


async def maintain(
    db: AsyncSession, cipher: crypto.KeyCipher, policy: KeyPolicy, now: datetime,
    *, take_over: bool = True,
) -> Sequence[SigningKey]:  # fmt: skip
    """Bring the key set to what the policy asks at `now`, under the key-set lock. Without
    `take_over` (the periodic run) a set whose current key is of another algorithm is only
    retired from, never switched."""
    await repository.lock(db)
    rows = await repository.all_keys(db)
    check_decrypts(rows, cipher)
    if not policy.asymmetric:
        return rows
    current, upcoming = _find(rows, CURRENT), _find(rows, NEXT)
    if not take_over and current is not None and current.algorithm != policy.algorithm:
        return await _retire(db, policy, now)
    if upcoming is not None and upcoming.algorithm != policy.algorithm:
        await _end(db, upcoming, RETIRED, now)  # published, never signed: nothing to wait for
        upcoming = None
    if current is not None and current.algorithm != policy.algorithm:
        # JWT_ALGORITHM changed: a key of the new algorithm is made current at once.
        await _end(db, current, PREVIOUS, now)
        current = None
    if current is None:
        if upcoming is not None:
            await _promote(db, upcoming, now)
        else:
            await _create(db, cipher, policy, CURRENT, now, now)
    elif upcoming is not None and upcoming.sign_after <= now:
        await _promote(db, upcoming, upcoming.sign_after)
    elif upcoming is None and _rotation_due(current, policy, now):
        await _create(db, cipher, policy, NEXT, now, now + policy.publish)
    rows = await _retire(db, policy, now)
    await record_lifetime(db, rows, policy)
    return rows


async def _retire(db: AsyncSession, policy: KeyPolicy, now: datetime) -> Sequence[SigningKey]:
    for row in await repository.all_keys(db):
        if _retire_due(row, policy, now):
            await _end(db, row, RETIRED, now)
    return await repository.all_keys(db)


async def rotate(
    db: AsyncSession, cipher: crypto.KeyCipher, policy: KeyPolicy, now: datetime, *, at_once: bool
) -> SigningKey:
    """Publish a new key that signs after the publish delay (or `at_once`); a key already
    waiting as `next` is kept rather than replaced, so that concurrent rotations agree."""
    await maintain(db, cipher, policy, now)
    upcoming = _find(await repository.all_keys(db), NEXT)
    if upcoming is None:
        upcoming = await _create(db, cipher, policy, NEXT, now, now + policy.publish)
    if at_once:
        upcoming.sign_after = now
        await _promote(db, upcoming, now)
    return upcoming


async def revoke(
    db: AsyncSession, cipher: crypto.KeyCipher, policy: KeyPolicy, kid: str, now: datetime
) -> SigningKey | None:
    """Revoke a key (leaked): out of the JWKS, its tokens refused. A revoked current key
    is replaced first. None when there is no such key; `KeyDecryptionError` (and nothing
    changed) when `cipher` does not open the stored keys."""
    await repository.lock(db)
    rows = await repository.all_keys(db)
    # Before anything changes: a new current key sealed under another KEY_ENCRYPTION_KEY
    # would leave a set that no one key opens.
    check_decrypts(rows, cipher)
    row = next((r for r in rows if r.kid == kid), None)
    if row is None or row.state == REVOKED:
        return row
    was_current = row.state == CURRENT
    await _end(db, row, REVOKED, now)
    if was_current and policy.asymmetric:
        upcoming = _find(rows, NEXT)
        if upcoming is not None and upcoming.algorithm == policy.algorithm:
            upcoming.sign_after = now
            await _promote(db, upcoming, now)
        else:
            await _create(db, cipher, policy, CURRENT, now, now)
    return row
