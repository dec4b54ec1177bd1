"""Secrets at rest under `KEY_ENCRYPTION_KEY`: AES-256-GCM, one derived key per purpose.

Pure: no FastAPI, no database. A sealed value is the 12-byte random nonce followed by the
ciphertext and its GCM tag; the associated data names the row it belongs to, so a sealed
value copied onto another row does not open.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


class DecryptionError(Exception):
    """A sealed value that this key (or this associated data) does not open."""


def derive_key(kek: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one purpose (HKDF-SHA256 of the KEK, `purpose` as its info), so
    that no two uses of the KEK ever share a key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(kek)


class SecretBox:
    """Seals and opens small secrets with the key derived from the KEK for `purpose`."""

    def __init__(self, kek: bytes, purpose: bytes) -> None:
        self._aead = AESGCM(derive_key(kek, purpose))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag; `aad` must be given again to open it."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext, or `DecryptionError` (another key, another row, changed bytes)."""
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError) as e:
            raise DecryptionError("does not open under this KEY_ENCRYPTION_KEY") from e
