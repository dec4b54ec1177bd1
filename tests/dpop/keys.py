"""A proof-signing client written for the tests (cryptography's keys, PyJWT's encoder),
able to build every kind of bad proof as well as good ones."""

from __future__ import annotations

import json
import secrets
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conductor_api.security.dpop import access_token_hash, thumbprint

BASE = "http://testserver"
API = "/api/v1/auth"


class PhoneKey:
    """The app's key pair (in the Keystore on a phone), and the proofs it signs."""

    def __init__(self, algorithm: str = "ES256") -> None:
        self.algorithm = algorithm
        self.private: Any
        if algorithm == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk_text = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key())
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            jwk_text = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key())
        self.jwk: dict[str, Any] = json.loads(jwk_text)
        self.jkt = thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        now: float,
        *,
        token: str | None = None,
        nonce: str | None = None,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        """A proof for `method` `url` at `now` (`url` a path is made absolute)."""
        payload: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(16),
            "htm": method,
            "htu": url if "://" in url else BASE + url,
            "iat": int(now),
        }
        if token is not None:
            payload["ath"] = access_token_hash(token)
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        for name in drop:
            payload.pop(name, None)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(payload, self.private, algorithm=self.algorithm, headers=headers)
