"""DPoP proofs (RFC 9449): verification of every check of section 4.3, RFC 7638
thumbprints, and stateless server nonces. Pure: no FastAPI, no database.

Parsing, keys and signatures are PyJWT's (on `cryptography`); the one thing computed here
is the thumbprint's input, which RFC 7638 defines as the JSON of the key's required
members in lexicographic order without whitespace (what `json.dumps` gives).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALGORITHMS = ("ES256", "EdDSA")
# The `algs` parameter of every DPoP challenge (RFC 9449 section 7.1).
CHALLENGE = 'DPoP algs="ES256 EdDSA"'
TYP = "dpop+jwt"
# A proof of an EC P-256 key is ~600 characters; anything over a few KiB is not a proof.
MAX_PROOF_LENGTH = 4096
MAX_JTI_LENGTH = 256
# How long one nonce window lasts; a nonce is accepted in its window and the next one,
# so it stays valid for at least this long (the contract asks for 60 seconds).
NONCE_WINDOW_SECONDS = 60
# Parsed public keys remembered per process, by the proof's header segment.
KEY_CACHE_SIZE = 1024

# Members that only a private or symmetric JWK has (RFC 7518 section 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The key type and curve each accepted algorithm needs, and the members of its thumbprint.
_KEY_TYPES = {
    "ES256": ("EC", "P-256", ("crv", "kty", "x", "y")),
    "EdDSA": ("OKP", "Ed25519", ("crv", "kty", "x")),
}
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class DPoPError(Exception):
    """A proof that does not verify. `nonce` marks the one failure the client fixes by
    retrying with the server's nonce (`use_dpop_nonce`)."""

    def __init__(self, reason: str, *, nonce: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.nonce = nonce


class WrongKey(DPoPError):
    """A valid proof, but by another key than the one the token or session is bound to."""

    def __init__(self) -> None:
        super().__init__("the proof is signed by another key than the token is bound to")


@dataclass(frozen=True, slots=True)
class Proof:
    """A verified proof: the key's thumbprint, and what the replay cache needs."""

    jkt: str
    jti: str
    iat: int

    def replay_key(self) -> str:
        """The cache key: a `jti` is accepted once per key (fixed length, whatever the jti)."""
        return hashlib.sha256(f"{self.jkt}:{self.jti}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    jwk: jwt.PyJWK
    jkt: str


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token_hash(token: str) -> str:
    """The `ath` of a proof sent with `token`: base64url SHA-256 of its ASCII bytes."""
    return b64url(hashlib.sha256(token.encode()).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public EC P-256 or Ed25519 JWK."""
    kty = jwk.get("kty")
    members = next((m for t, _, m in _KEY_TYPES.values() if t == kty), None)
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise DPoPError("unsupported or incomplete jwk")
    # One key, one thumbprint: its coordinates only in canonical unpadded base64url (RFC
    # 7518), else the same key written with padding or stray low bits would be a new key
    # with a fresh set of `jti`s.
    if not all(_canonical_b64url(jwk[m]) for m in members if m in {"x", "y"}):
        raise DPoPError("jwk coordinates must be unpadded base64url")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _canonical_b64url(value: str) -> bool:
    """Whether `value` is base64url as `b64url` writes it (no padding, no stray bits)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return False
    try:
        return b64url(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) == value
    except ValueError:
        return False


def _is_text(value: str) -> bool:
    """Whether `value` encodes as UTF-8: JSON may escape a lone surrogate (`"\\ud800"`),
    which Python decodes into a str that no hash or database accepts."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_finite(number: int | float) -> bool:
    """Whether a JSON number is one a clock can be compared with: Python's `json` also reads
    NaN, Infinity and integers too large for a float."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _normalize_percent(path: str) -> str:
    """RFC 3986 section 6.2.2.2: hex digits upper case, unreserved characters decoded."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group()[1:], 16))
        return char if char in _UNRESERVED else match.group().upper()

    return _PERCENT.sub(fix, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 (used by 6.2.2.3)."""
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = path.endswith(("/.", "/.."))
    return "/" + "/".join(out) + ("/" if trailing and out else "")


@lru_cache(maxsize=256)
def normalize_htu(url: str) -> str | None:
    """A URL as `htu` is compared (RFC 9449 section 4.3, RFC 3986 sections 6.2.2 and
    6.2.3): scheme and host in lower case, the default port dropped, an empty path as `/`,
    percent-encoding and dot segments normalized, no query or fragment. None if it is not
    an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    # Userinfo stays in a URL normalized as RFC 3986 says, and a request's never has any.
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_percent(parts.path or "/"))
    return f"{scheme}://{netloc}{path}"


class Nonces:
    """Stateless server nonces: an HMAC of a time window under a key derived from a secret
    every instance shares, so a nonce given by one instance is accepted by all of them."""

    def __init__(self, secret: bytes) -> None:
        # Derived, not the secret itself: one key, one use.
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"conductor-api dpop nonce v1"
        ).derive(secret)
        self._current: tuple[int, str] = (-1, "")

    def _for(self, window: int) -> str:
        mac = hmac.new(self._key, str(window).encode(), "sha256").digest()[:16]
        return f"{window}.{b64url(mac)}"

    def current(self, now: float) -> str:
        """The nonce to hand out at `now` (computed once a window)."""
        window = int(now) // NONCE_WINDOW_SECONDS
        if self._current[0] != window:
            self._current = (window, self._for(window))
        return self._current[1]

    def valid(self, nonce: object, now: float) -> bool:
        """Whether `nonce` was handed out in this window or the one before (at least one
        window of life), or the next (a few seconds of clock difference between instances)."""
        if not isinstance(nonce, str) or len(nonce) > 64 or not nonce.isascii():
            return False
        window_text, _, _ = nonce.partition(".")
        if not window_text.isascii() or not window_text.isdigit() or len(window_text) > 12:
            return False
        window = int(window_text)
        if window - int(now) // NONCE_WINDOW_SECONDS not in (-1, 0, 1):
            return False
        return hmac.compare_digest(nonce.encode(), self._for(window).encode())


class ProofVerifier:
    """Verifies DPoP proofs; the parsed key of each distinct header is remembered, since a
    phone sends the same header (its one key) with every request."""

    def __init__(self, max_skew_seconds: int, nonces: Nonces) -> None:
        self.max_skew = max_skew_seconds
        self.nonces = nonces
        self._keys: OrderedDict[str, _Key] = OrderedDict()

    def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        now: float,
        access_token: str | None = None,
        require_nonce: bool = False,
    ) -> Proof:
        """Every check of RFC 9449 section 4.3 for a proof sent with `method` to `url` (as
        the client used it); `access_token` on resource requests (`ath`). Each failure is
        one `DPoPError`."""
        if len(proof) > MAX_PROOF_LENGTH or not proof.isascii() or not _COMPACT.fullmatch(proof):
            raise DPoPError("not a JWS in compact form")
        header_segment, payload_segment, signature_segment = proof.split(".")
        key = self._key(header_segment, proof)
        # PyJWT's algorithm object verifies (the key's, fixed by the header's checked `alg`);
        # its `PyJWS.decode` would parse the cached header again and re-scan every segment
        # character by character, which costs more than the signature itself.
        try:
            signature = jwt.utils.base64url_decode(signature_segment)
            valid = key.jwk.Algorithm.verify(
                f"{header_segment}.{payload_segment}".encode(), key.jwk.key, signature
            )
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError, TypeError) as e:
            raise DPoPError("the signature does not verify") from e
        if not valid:
            raise DPoPError("the signature does not verify")
        try:
            claims = json.loads(jwt.utils.base64url_decode(payload_segment))
        # RecursionError: JSON nested deeper than the parser goes ("[" a thousand times),
        # signed by any key: a client's mistake like any other, not a server error.
        except (ValueError, RecursionError) as e:
            raise DPoPError("the payload is not JSON") from e
        if not isinstance(claims, dict):
            raise DPoPError("the payload is not a JSON object")
        jti, htm, htu, iat = (claims.get(k) for k in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH or not _is_text(jti):
            raise DPoPError("jti missing or invalid")
        if htm != method:
            raise DPoPError("htm does not match the request's method")
        expected = normalize_htu(url)
        if not isinstance(htu, str) or expected is None or normalize_htu(htu) != expected:
            raise DPoPError("htu does not match the request's URL")
        if not isinstance(iat, int | float) or isinstance(iat, bool) or not _is_finite(iat):
            raise DPoPError("iat missing or invalid")
        if abs(now - iat) > self.max_skew:
            raise DPoPError("iat is too far from the server's time")
        if access_token is not None:
            ath = claims.get("ath")
            # ASCII first: a base64url hash is, and a lone surrogate would not encode.
            if (
                not isinstance(ath, str)
                or not ath.isascii()
                or not hmac.compare_digest(ath.encode(), access_token_hash(access_token).encode())
            ):
                raise DPoPError("ath missing or not the hash of this access token")
        if require_nonce and not self.nonces.valid(claims.get("nonce"), now):
            raise DPoPError("a current server nonce is required", nonce=True)
        # Rounded up: the replay cache keeps the proof until `iat` + the skew, and a proof
        # of a fractional `iat` is accepted until then, not until its whole second.
        return Proof(jkt=key.jkt, jti=jti, iat=math.ceil(iat))

    def _key(self, header_segment: str, proof: str) -> _Key:
        """The public key of a proof's header (typ, alg, jwk checked), cached by segment."""
        key = self._keys.get(header_segment)
        if key is not None:
            self._keys.move_to_end(header_segment)
            return key
        key = self._parse_header(proof)
        self._keys[header_segment] = key
        if len(self._keys) > KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return key

    @staticmethod
    def _parse_header(proof: str) -> _Key:
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.InvalidTokenError as e:
            raise DPoPError("the header is invalid") from e
        if header.get("typ") != TYP:
            raise DPoPError("typ must be dpop+jwt")
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise DPoPError("alg must be ES256 or EdDSA")
        # No JWS extension is understood here, so a critical one must be refused (RFC 7515).
        if "crit" in header:
            raise DPoPError("crit is not supported")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise DPoPError("jwk missing")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise DPoPError("jwk must be a public key")
        kty, crv, _ = _KEY_TYPES[algorithm]
        if jwk.get("kty") != kty or jwk.get("crv") != crv:
            raise DPoPError(f"{algorithm} needs a {kty} {crv} key")
        jkt = thumbprint(jwk)
        try:
            parsed = jwt.PyJWK(jwk, algorithm=algorithm)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            raise DPoPError("jwk is not a valid public key") from e
        return _Key(algorithm, parsed, jkt)
