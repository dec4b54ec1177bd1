"""A software authenticator: an ES256 key from `cryptography`, `none` attestation, and
the WebAuthn structures built by hand (CBOR by `cbor2`, the fixed fields by `struct`), so
that the server's checks meet real bytes. Each ceremony takes keyword tweaks that change
one field of an otherwise valid response."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40
ORIGIN = "https://conductor.example"
RP_ID = "conductor.example"
# The AAGUID of Google Password Manager, as Android's passkeys carry it.
AAGUID = bytes.fromhex("ea9b8d664d011d213ce4b6b48cb575d4")


def b64url(data: bytes) -> str:
    """Base64url without padding, as WebAuthn's JSON encodes bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of a base64url string (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cose_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The COSE_Key (RFC 9052) of an ES256 public key."""
    numbers = key.public_key().public_numbers()
    return cbor2.dumps(
        {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
    )


@dataclass
class Authenticator:
    """One passkey on one phone (a synced passkey is this object used elsewhere)."""

    rp_id: str = RP_ID
    origin: str = ORIGIN
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    credential_id: bytes = field(default_factory=lambda: os.urandom(32))
    counter: int = 0
    # Set by `register` from the options' user.id.
    user_handle: bytes | None = None

    def _client_data(self, kind: str, nonce: str, **tweaks: Any) -> bytes:
        if "client_data" in tweaks:
            raw: bytes = tweaks["client_data"]
            return raw
        data = {
            "type": tweaks.get("type", kind),
            "challenge": tweaks.get("challenge", nonce),
            "origin": tweaks.get("origin", self.origin),
            "crossOrigin": tweaks.get("cross_origin", False),
        }
        if "top_origin" in tweaks:
            data["topOrigin"] = tweaks["top_origin"]
        return json.dumps(data).encode()

    def _auth_data(self, bits: int, count: int, attested: bytes = b"", **tweaks: Any) -> bytes:
        if "auth_data" in tweaks:
            raw: bytes = tweaks["auth_data"]
            return raw
        rp_hash = hashlib.sha256(tweaks.get("rp_id", self.rp_id).encode()).digest()
        return rp_hash + struct.pack(">BI", tweaks.get("flags", bits), count) + attested

    def register(self, options: dict[str, Any], **tweaks: Any) -> dict[str, Any]:
        """The RegistrationResponseJSON for creation options, as Credential Manager
        returns it."""
        self.user_handle = unb64url(options["user"]["id"])
        credential_id = tweaks.get("credential_id", self.credential_id)
        attested = (
            AAGUID
            + struct.pack(">H", len(credential_id))
            + credential_id
            + tweaks.get("public_key", cose_key(self.key))
        )
        auth_data = self._auth_data(UP | UV | BE | BS | AT, self.counter, attested, **tweaks)
        attestation = cbor2.dumps(
            {"fmt": tweaks.get("fmt", "none"), "attStmt": tweaks.get("att_stmt", {}),
             "authData": auth_data}
        )  # fmt: skip
        client_data = self._client_data("webauthn.create", options["challenge"], **tweaks)
        # The id the client declares, which is the attested one unless `raw_id` says.
        raw_id = tweaks.get("raw_id", credential_id)
        return {
            "id": b64url(raw_id),
            "rawId": b64url(raw_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(tweaks.get("attestation_object", attestation)),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
        }

    def sign_in(self, options: dict[str, Any], **tweaks: Any) -> dict[str, Any]:
        """The AuthenticationResponseJSON for request options (the counter goes up by one
        unless `counter` is given)."""
        self.counter = tweaks.get("counter", self.counter + 1)
        auth_data = self._auth_data(UP | UV | BE | BS, self.counter, **tweaks)
        client_data = self._client_data("webauthn.get", options["challenge"], **tweaks)
        signer: ec.EllipticCurvePrivateKey = tweaks.get("signer", self.key)
        signature = signer.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        credential_id = tweaks.get("credential_id", self.credential_id)
        handle = tweaks.get("user_handle", self.user_handle)
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(tweaks.get("signature", signature)),
                "userHandle": None if handle is None else b64url(handle),
            },
            "clientExtensionResults": {},
        }
