"""Key pairs, their encryption at rest, and their public JWKs; all through `cryptography`."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from conductor_api.security.encryption import DecryptionError, SecretBox

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class KeyDecryptionError(Exception):
    """A stored private key that the configured KEY_ENCRYPTION_KEY does not open."""


def new_kid(now: datetime) -> str:
    """A key id: the creation date and 48 random bits; letters, digits and `_` only."""
    return f"{now:%Y%m%d}_{secrets.token_hex(6)}"


def generate(algorithm: str) -> PrivateKey:
    """A fresh private key for `EdDSA` (Ed25519) or `ES256` (P-256)."""
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"not an asymmetric algorithm: {algorithm}")


def public_pem(key: PrivateKey) -> str:
    """The public half as PEM (SubjectPublicKeyInfo)."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def load_public(pem: str) -> PublicKey:
    """A public key from `public_pem`."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("not an Ed25519 or EC public key")
    return key


class KeyCipher:
    """AES-256-GCM under a key derived from KEY_ENCRYPTION_KEY; the kid is the associated
    data, so a sealed key copied onto another row does not open."""

    def __init__(self, kek: bytes) -> None:
        # The one AES-GCM wrapper of the project (`security.encryption`): nonce || sealed.
        self._box = SecretBox(kek, b"conductor-api signing-key encryption v1")

    def seal(self, kid: str, key: PrivateKey) -> bytes:
        """The private key, PKCS#8 DER, encrypted."""
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self._box.seal(der, kid.encode())

    def open(self, kid: str, sealed: bytes) -> PrivateKey:
        """Decrypt a sealed key; `KeyDecryptionError` if this key-encryption key is not its."""
        try:
            der = self._box.open(sealed, kid.encode())
        except DecryptionError as e:
            raise KeyDecryptionError(kid) from e
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyDecryptionError(kid)
        return key


def public_jwk(kid: str, algorithm: str, key: PublicKey) -> dict[str, Any]:
    """The RFC 7517 JWK of a public key, with `kid`, `alg` and `use`."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(key))
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
