"""JWT access and refresh tokens: typed, signed with separate keys, checked strictly."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import HMACAlgorithm

from conductor_api.errors import AppError, InvalidRefreshToken, InvalidToken
from conductor_api.keys.ring import KID_PATTERN, KeyRing

ACCESS = "access"
REFRESH = "refresh"
# Far above any token this server issues; longer ones are refused before parsing.
MAX_TOKEN_LENGTH = 2048
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "sid", "jti", "typ"]
# Verified access tokens remembered per process (see `TokenService.decode_access`).
VERIFIED_CACHE_SIZE = 4096
# The JWS compact serialization: three unpadded base64url segments, ASCII only.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# An RFC 7638 SHA-256 thumbprint: 32 bytes in unpadded base64url.
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")
# How far ahead of this server's clock a token's `iat` (or `nbf`) may be: the clocks of
# instances sharing the secrets may differ a little, never by more.
CLOCK_SKEW_SECONDS = 60


def is_canonical(token: str) -> bool:
    """Whether `token` is in the one canonical JWS compact form this server issues.

    PyJWT also accepts padded segments (`=` appended) and segments whose last character
    carries non-zero spare bits: such a variant verifies like the genuine token but has
    another digest, so a current refresh token re-encoded that way would look like a spent
    one and revoke its session. Only the canonical encoding is accepted: every segment
    must decode and re-encode to itself. Also refuses anything non-ASCII (lone surrogates
    included) before it is hashed or encoded."""
    if len(token) > MAX_TOKEN_LENGTH or not _COMPACT.fullmatch(token):
        return False
    for segment in token.split("."):
        if len(segment) % 4 == 1:
            return False
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            return False
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
            return False
    return True


class _JWS(jwt.PyJWS):
    """PyJWT's JWS layer, reading a segment in plain base64url without its per-character
    loop.

    PyJWT checks each segment's alphabet with a generator over every byte, a twentieth of
    a refresh. A segment of the alphabet alone (no padding, a length base64 allows) that
    re-encodes to itself passes each of PyJWT's checks, so it is decoded here with
    `bytes.translate` telling the alphabet in C; anything else goes to PyJWT's own method,
    which refuses it as it always did."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        if segment and len(segment) % 4 != 1 and not segment.translate(None, _BASE64URL):
            decoded = jwt.utils.base64url_decode(segment)
            if jwt.utils.base64url_encode(decoded) == segment:
                return decoded
        return jwt.PyJWS._decode_base64url_segment(segment, name)


class _PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC, with each key's checks (its encoding; refusing PEM and SSH keys) done
    once per key instead of on every token. Only the server's own secrets are ever given
    here (never anything from a token), so the map holds at most one entry per secret."""

    def __init__(self, hash_alg: Any) -> None:
        super().__init__(hash_alg)
        self._prepared: dict[str | bytes, bytes] = {}
        self._short: dict[bytes, str | None] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = super().prepare_key(key)
        return prepared

    def check_key_length(self, key: bytes) -> str | None:
        # Asked on every token; the answer depends on the (prepared, server-side) key only.
        if key not in self._short:
            self._short[key] = super().check_key_length(key)
        return self._short[key]


def _register_prepared_hmac(jws: jwt.PyJWS) -> None:
    """Give `jws` `_PreparedHMAC` for HS256/384/512 (the same hashes and checks)."""
    for name, hash_alg in (
        ("HS256", HMACAlgorithm.SHA256),
        ("HS384", HMACAlgorithm.SHA384),
        ("HS512", HMACAlgorithm.SHA512),
    ):
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, _PreparedHMAC(hash_alg))


@dataclass(frozen=True, slots=True)
class Claims:
    """The claims this server relies on, after verification."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    jti: str
    issued_at: int
    expires_at: int
    # Refresh tokens only: when the session ends however often it refreshes (`sxp`).
    session_expires_at: int = 0
    # Access tokens in the asymmetric modes: the key that signed it.
    kid: str = ""
    # DPoP-bound tokens (`cnf.jkt`, RFC 9449 section 6): the key's RFC 7638 thumbprint.
    jkt: str = ""


class UnknownSigningKey(InvalidToken):
    """An access token naming a kid this process has not loaded: perhaps a key published a
    moment ago by another instance, so the caller may re-read the key set and try again."""

    def __init__(self, kid: str) -> None:
        super().__init__()
        self.kid = kid


def token_digest(token: str) -> str:
    """SHA-256 of a token: what the database keeps instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def digests_equal(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two stored digests."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


class TokenService:
    """Issues and verifies tokens; the algorithm is the server's, never the token's."""

    def __init__(
        self,
        *,
        access_secret: str,
        refresh_secret: str,
        algorithm: str,
        issuer: str,
        audience: str,
        access_ttl: timedelta,
        keyring: KeyRing | None = None,
    ) -> None:
        self._keys = {ACCESS: access_secret, REFRESH: refresh_secret}
        # EdDSA/ES256: access tokens are signed and verified with the key set instead.
        self._ring = keyring
        # The child-jti key is derived, not the refresh signing key itself: one key, one use.
        self._child_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None,
            info=b"conductor-api refresh child jti v1",
        ).derive(refresh_secret.encode())  # fmt: skip
        # Refresh tokens are only ever verified here: HMAC in every mode, HS256 whatever
        # JWT_ALGORITHM says, so that changing it signs no one out. Those signed with HS384
        # or HS512 (as earlier versions did in those modes) are accepted too: with the
        # refresh key, which is only ever an HMAC key, no algorithm can be confused.
        self._algorithms = {ACCESS: algorithm, REFRESH: "HS256"}
        self._accepted = {ACCESS: [algorithm], REFRESH: ["HS256", "HS384", "HS512"]}
        self._issuer = issuer
        self._audience = audience
        self.access_ttl_seconds = int(access_ttl.total_seconds())
        self._verified: OrderedDict[bytes, Claims] = OrderedDict()
        self._jwt = jwt.PyJWT(
            options={
                "require": _REQUIRED,
                # exp and iat are checked below against the injected clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            }
        )
        # The JWS layer this PyJWT verifies with, ours (`_JWS`; algorithms are registered
        # per PyJWS); tokens are signed with it directly (`_encode`).
        self._jws: jwt.PyJWS = _JWS(options=self._jwt._jws.options)
        self._jwt._jws = self._jws
        _register_prepared_hmac(self._jws)

    def _encode(self, kind: str, claims: dict[str, Any], now: datetime | None = None) -> str:
        # Serialized here exactly as PyJWT.encode would (the same JSON, byte for byte), then
        # signed by its JWS layer: the claims are all strings and integers, so PyJWT's
        # claim conversions have nothing to do, and skipping them is a twentieth of a refresh.
        payload = json.dumps(
            {**claims, "iss": self._issuer, "aud": self._audience, "typ": kind},
            separators=(",", ":"),
        ).encode()
        if kind == ACCESS and self._ring is not None:
            assert now is not None
            key = self._ring.signing_key(now)
            assert key.private is not None  # signing_key() only returns keys that can sign
            return self._jws.encode(
                payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid}
            )
        return self._jws.encode(payload, self._keys[kind], algorithm=self._algorithms[kind])

    def access_expiry(self, now: datetime, not_after: int | None = None) -> int:
        """When an access token issued at `now` expires: ACCESS_TOKEN_EXPIRE_MINUTES later,
        but never after `not_after` (its session's absolute end)."""
        exp = int(now.timestamp()) + self.access_ttl_seconds
        return exp if not_after is None else min(exp, not_after)

    def issue_access(
        self,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        now: datetime,
        *,
        not_after: int | None = None,
        jkt: str | None = None,
    ) -> str:
        """A new access token for a session, expiring at `access_expiry(now, not_after)`;
        bound to a DPoP key (`cnf.jkt`) when `jkt` is given."""
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": secrets.token_urlsafe(16),
            "iat": iat,
            "exp": self.access_expiry(now, not_after),
        }
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        return self._encode(ACCESS, claims, now)

    def issue_refresh(
        self,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        jti: str,
        issued_at: int,
        expires_at: int,
        session_expires_at: int,
        jkt: str | None = None,
    ) -> str:
        """A refresh token. The same arguments always give the same token, which is what
        lets concurrent refreshes inside the grace window all receive one child token.
        A bound session's tokens carry its key's thumbprint (`cnf.jkt`): a refresh needs a
        proof by that key, known without reading the session."""
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": jti,
            "iat": issued_at,
            "exp": expires_at,
            "sxp": session_expires_at,
        }
        if jkt:
            claims["cnf"] = {"jkt": jkt}
        return self._encode(REFRESH, claims)

    def child_jti(self, parent_jti: str) -> str:
        """The jti of the token that replaces `parent_jti`: derived, not random, and keyed so
        that nobody without the refresh secret can predict it."""
        mac = hmac.new(self._child_key, b"rotate:" + parent_jti.encode(), "sha256")
        return base64.urlsafe_b64encode(mac.digest()[:18]).decode()

    def decode_access(self, token: str, now: datetime) -> Claims:
        """Verify an access token; every failure is one `InvalidToken`.

        A client sends the same access token on every request for 30 minutes, and PyJWT's
        strict parsing costs more than the rest of the request. So the claims of a token
        that verified are kept in a small LRU, keyed by the token's SHA-256 (the digest,
        not the token, is compared). Only a byte-identical token hits; expiry is still
        checked against the clock on every hit, and revocation is checked by the caller.
        """
        # The canonical-form check runs in `_decode`, on a miss: a hit is byte-identical to
        # a token that passed it. ASCII is checked here, before the token is encoded.
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise InvalidToken()
        key = hashlib.sha256(token.encode()).digest()
        claims = self._verified.get(key)
        if claims is None:
            claims = self._decode(ACCESS, token, now, InvalidToken)
            self._verified[key] = claims
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        elif claims.expires_at <= now.timestamp() or (
            # A key revoked since this token verified must be refused from the cache too.
            self._ring is not None and self._ring.verification_key(claims.kid) is None
        ):
            del self._verified[key]
            raise InvalidToken()
        return claims

    def decode_refresh(self, token: str, now: datetime) -> Claims:
        """Verify a refresh token; every failure is one `InvalidRefreshToken`."""
        return self._decode(REFRESH, token, now, InvalidRefreshToken)

    def _verification_key(self, kind: str, token: str, error: type[AppError]) -> tuple[str, Any]:
        """The key a token must verify under: the `kid`'s public key for access tokens in the
        asymmetric modes (the header only picks among this server's keys; the algorithm is
        still the server's), else the secret of its kind."""
        if kind != ACCESS or self._ring is None:
            return "", self._keys[kind]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as e:
            raise error() from e
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise error()
        loaded = self._ring.verification_key(kid)
        if loaded is None:
            if self._ring.knows(kid):  # published, but of another algorithm
                raise error()
            raise UnknownSigningKey(kid)
        return kid, loaded.public

    def _decode(self, kind: str, token: str, now: datetime, error: type[AppError]) -> Claims:
        if not is_canonical(token):
            raise error()
        kid, key = self._verification_key(kind, token, error)
        try:
            decoded = self._jwt.decode_complete(
                token,
                key,
                algorithms=self._accepted[kind],
                audience=self._audience,
                issuer=self._issuer,
            )
        except jwt.InvalidTokenError as e:
            raise error() from e
        header, payload = decoded["header"], decoded["payload"]
        # No JWS extension is understood here, so any critical one must be refused (RFC 7515).
        if "crit" in header or payload.get("typ") != kind:
            raise error()
        # Exactly the claims this server issues: PyJWT also accepts an `aud` list that
        # merely contains the audience, and does not look at `iat` or `nbf` here.
        if payload["aud"] != self._audience:
            raise error()
        exp, iat, nbf = payload["exp"], payload["iat"], payload.get("nbf", 0)
        if any(not isinstance(t, int) or isinstance(t, bool) for t in (exp, iat, nbf)):
            raise error()
        latest = now.timestamp() + CLOCK_SKEW_SECONDS
        if exp <= now.timestamp() or iat > latest or nbf > latest:
            raise error()
        jti = payload["jti"]
        if not isinstance(jti, str) or not jti:
            raise error()
        sxp = payload.get("sxp", 0)
        if kind == REFRESH and (not isinstance(sxp, int) or isinstance(sxp, bool) or sxp <= 0):
            raise error()
        cnf = payload.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if cnf is not None and (not isinstance(jkt, str) or not _JKT.fullmatch(jkt)):
            raise error()
        try:
            return Claims(
                user_id=uuid.UUID(str(payload["sub"])),
                session_id=uuid.UUID(str(payload["sid"])),
                jti=jti,
                issued_at=iat,
                expires_at=exp,
                session_expires_at=sxp if kind == REFRESH else 0,
                kid=kid,
                jkt=jkt or "",
            )
        except ValueError as e:
            raise error() from e
