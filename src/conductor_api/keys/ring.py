"""The key set as one process holds it: pure and in memory, so that signing and verifying
never touch the database. `KeyManager` refills it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conductor_api.errors import ServiceUnavailable
from conductor_api.keys import crypto
from conductor_api.keys.models import CURRENT, NEXT, PUBLISHED, SigningKey

KID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class LoadedKey:
    """One published key: its public half, and its private half if it may sign."""

    kid: str
    algorithm: str
    state: str
    public: crypto.PublicKey
    private: crypto.PrivateKey | None
    sign_after: datetime


class NoSigningKey(ServiceUnavailable):
    """No key of this server's algorithm may sign: another instance switched JWT_ALGORITHM
    and this one's last key has been retired. A 503 until this instance restarts."""

    def __init__(self) -> None:
        super().__init__(30, "No signing key for this server's JWT_ALGORITHM; restart it")


class KeyRing:
    """The published keys of the configured algorithm, replaced whole on each reload."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._keys: dict[str, LoadedKey] = {}
        self._current: LoadedKey | None = None
        self._next: LoadedKey | None = None
        self.jwks: dict[str, Any] = {"keys": []}

    def replace(self, rows: Sequence[SigningKey], cipher: crypto.KeyCipher) -> None:
        """Take a fresh read of the table. A key of another algorithm is published but never
        verifies here."""
        keys: dict[str, LoadedKey] = {}
        jwks = []
        for row in rows:
            if row.state not in PUBLISHED:
                continue
            public = crypto.load_public(row.public_key)
            private = None
            if row.private_key is not None:
                private = cipher.open(row.kid, row.private_key)
            keys[row.kid] = LoadedKey(
                row.kid, row.algorithm, row.state, public, private, row.sign_after
            )
            jwks.append(crypto.public_jwk(row.kid, row.algorithm, public))
        current = next((k for k in keys.values() if k.state == CURRENT), None)
        upcoming = next((k for k in keys.values() if k.state == NEXT), None)
        if current is None or current.algorithm != self.algorithm:
            # Another instance runs another JWT_ALGORITHM (a rollout under way): keep
            # signing with the newest key of ours until it is retired.
            own = [k for k in keys.values() if k.algorithm == self.algorithm and k.private]
            current = own[-1] if own else None
        # Assigned last and together: a request in between sees the old set or the new one.
        self._keys, self._current, self._next, self.jwks = keys, current, upcoming, {"keys": jwks}

    def signing_key(self, now: datetime) -> LoadedKey:
        """The key to sign with at `now`: the next key once its publish delay has passed
        (every instance switches then, without waiting for the table to say so)."""
        upcoming = self._next
        if (
            upcoming is not None
            and upcoming.private is not None
            and upcoming.algorithm == self.algorithm
            and upcoming.sign_after <= now
        ):
            return upcoming
        current = self._current
        if current is None or current.private is None or current.algorithm != self.algorithm:
            raise NoSigningKey()
        return current

    def verification_key(self, kid: str) -> LoadedKey | None:
        """The published key `kid` of the configured algorithm, or None."""
        key = self._keys.get(kid)
        if key is None or key.algorithm != self.algorithm:
            return None
        return key

    def knows(self, kid: str) -> bool:
        """Whether `kid` is in the set at all (of any algorithm)."""
        return kid in self._keys
