"""Every check of RFC 9449 section 4.3, on the pure verifier (no app, no database)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from conductor_api.security.dpop import (
    DPoPError,
    Nonces,
    ProofVerifier,
    normalize_htu,
    thumbprint,
)
from tests.dpop.keys import PhoneKey

URL = "https://api.example.com/api/v1/auth/me"
NOW = 1_790_000_000.0


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def verifier() -> ProofVerifier:
    return ProofVerifier(60, Nonces(b"s" * 32))


@pytest.fixture
def key() -> PhoneKey:
    return PhoneKey()


def refused(verifier: ProofVerifier, proof: str, **kw: Any) -> str:
    args: dict[str, Any] = {"method": "GET", "url": URL, "now": NOW, **kw}
    with pytest.raises(DPoPError) as e:
        verifier.verify(proof, **args)
    return e.value.reason


class TestAccepted:
    @pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
    def test_a_good_proof_gives_the_keys_thumbprint(
        self, verifier: ProofVerifier, algorithm: str
    ) -> None:
        key = PhoneKey(algorithm)
        proof = verifier.verify(key.proof("GET", URL, NOW), method="GET", url=URL, now=NOW)
        assert proof.jkt == key.jkt and proof.iat == int(NOW)

    def test_rfc_8037_thumbprint_vector(self) -> None:
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

    @pytest.mark.parametrize(
        "htu",
        [
            "HTTPS://API.Example.COM/api/v1/auth/me",
            "https://api.example.com:443/api/v1/auth/me",
            "https://api.example.com/api/v1/auth/me?x=1#frag",
            "https://api.example.com/api/v1/./auth/../auth/me",
            "https://api.example.com/api/v1/auth/%6De",
        ],
    )
    def test_htu_is_normalized(self, verifier: ProofVerifier, key: PhoneKey, htu: str) -> None:
        verifier.verify(key.proof("GET", htu, NOW), method="GET", url=URL, now=NOW)

    def test_iat_within_the_skew_either_way(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        for iat in (NOW - 60, NOW + 60):
            verifier.verify(key.proof("GET", URL, iat), method="GET", url=URL, now=NOW)

    def test_a_fractional_iat_is_remembered_to_its_last_acceptable_moment(
        self, verifier: ProofVerifier, key: PhoneKey
    ) -> None:
        # The replay cache keeps a proof until its `iat` + the skew: rounded down, a proof
        # still acceptable for most of a second could be forgotten, then replayed.
        proof = key.proof("GET", URL, NOW, claims={"iat": NOW + 0.25})
        assert verifier.verify(proof, method="GET", url=URL, now=NOW).iat == NOW + 1

    def test_ath_of_the_token(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        proof = key.proof("GET", URL, NOW, token="tok.en.x")
        verifier.verify(proof, method="GET", url=URL, now=NOW, access_token="tok.en.x")


class TestRefused:
    def test_not_a_jwt(self, verifier: ProofVerifier) -> None:
        refused(verifier, "not-a-jwt")
        refused(verifier, "a.b.c")

    @pytest.mark.parametrize("depth", [500, 1500])
    def test_a_signed_payload_nested_too_deep(
        self, verifier: ProofVerifier, key: PhoneKey, depth: int
    ) -> None:
        # Under the length bound, signed by the proof's own key, and deeper than Python's
        # parser goes: refused like any payload that is not JSON.
        head = b64({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk})
        body = b64(b"[" * depth)
        signer = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256)
        signature = signer.sign(f"{head}.{body}".encode(), key.private)
        proof = f"{head}.{body}.{b64(signature)}"
        assert len(proof) < 4096
        assert "not JSON" in refused(verifier, proof)

    def test_too_long(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        proof = key.proof("GET", URL, NOW, claims={"pad": "x" * 5000})
        assert "compact" in refused(verifier, proof)

    def test_wrong_typ(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        assert "typ" in refused(verifier, key.proof("GET", URL, NOW, header={"typ": "JWT"}))

    def test_alg_none(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}
        claims = {"jti": "n", "htm": "GET", "htu": URL, "iat": int(NOW)}
        refused(verifier, f"{b64(header)}.{b64(claims)}.")  # no signature: not even a JWS
        assert "alg" in refused(verifier, f"{b64(header)}.{b64(claims)}.{b64(b'x')}")

    def test_hs256(self, verifier: ProofVerifier) -> None:
        jwk = {"kty": "oct", "k": b64(b"k" * 32)}
        proof = jwt.encode(
            {"jti": "h", "htm": "GET", "htu": URL, "iat": int(NOW)}, b"k" * 32,
            algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": jwk},
        )  # fmt: skip
        assert "alg" in refused(verifier, proof)

    def test_private_jwk(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.private))
        assert "d" in private
        assert "public" in refused(verifier, key.proof("GET", URL, NOW, header={"jwk": private}))

    def test_symmetric_jwk_with_es256(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        jwk = {"kty": "oct", "k": b64(b"k" * 32)}
        assert "public" in refused(verifier, key.proof("GET", URL, NOW, header={"jwk": jwk}))

    @pytest.mark.parametrize("member", ["x", "y"])
    def test_key_written_another_way(
        self, verifier: ProofVerifier, key: PhoneKey, member: str
    ) -> None:
        # The same key with padding, or with the unused low bits of its last character set,
        # would have another thumbprint (and so a fresh set of jtis).
        value: str = key.jwk[member]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        stray = value[:-1] + alphabet[alphabet.index(value[-1]) ^ 1]
        assert base64.urlsafe_b64decode(stray + "=") == base64.urlsafe_b64decode(value + "=")
        for written in (value + "=", stray):
            proof = key.proof("GET", URL, NOW, header={"jwk": {**key.jwk, member: written}})
            assert "base64url" in refused(verifier, proof)

    def test_key_of_another_curve(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        other = PhoneKey("EdDSA")
        assert "P-256" in refused(verifier, key.proof("GET", URL, NOW, header={"jwk": other.jwk}))

    def test_signature_by_another_key(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        other = PhoneKey()
        proof = key.proof("GET", URL, NOW, header={"jwk": other.jwk})
        assert "signature" in refused(verifier, proof)

    def test_changed_payload(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        h, _, s = key.proof("GET", URL, NOW).split(".")
        forged = b64({"jti": "x", "htm": "GET", "htu": URL, "iat": int(NOW)})
        assert "signature" in refused(verifier, f"{h}.{forged}.{s}")

    def test_crit(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        proof = key.proof("GET", URL, NOW, header={"crit": ["exp"], "exp": 1})
        refused(verifier, proof)

    @pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
    def test_missing_claim(self, verifier: ProofVerifier, key: PhoneKey, claim: str) -> None:
        refused(verifier, key.proof("GET", URL, NOW, drop=(claim,)))

    def test_wrong_method(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        assert "htm" in refused(verifier, key.proof("POST", URL, NOW))

    @pytest.mark.parametrize(
        "htu",
        [
            "http://api.example.com/api/v1/auth/me",
            "https://api.example.com:8443/api/v1/auth/me",
            "https://evil.example.com/api/v1/auth/me",
            "https://user:secret@api.example.com/api/v1/auth/me",
            "https://@api.example.com/api/v1/auth/me",
            "https://api.example.com/api/v1/auth/sessions",
            "/api/v1/auth/me",
        ],
    )
    def test_wrong_url(self, verifier: ProofVerifier, key: PhoneKey, htu: str) -> None:
        assert "htu" in refused(verifier, key.proof("GET", htu, NOW))

    @pytest.mark.parametrize("iat", [NOW - 61, NOW + 61, "now", True])
    def test_stale_or_future_iat(self, verifier: ProofVerifier, key: PhoneKey, iat: Any) -> None:
        assert "iat" in refused(verifier, key.proof("GET", URL, NOW, claims={"iat": iat}))

    # Python's `json` also reads NaN, Infinity and integers of any size: each is refused as
    # an invalid iat, not left to fail the clock comparison (a 500).
    @pytest.mark.parametrize(
        "iat", [float("nan"), float("inf"), 10**400, -(10**400)], ids=["nan", "inf", "big", "-big"]
    )
    def test_iat_that_is_no_finite_number(
        self, verifier: ProofVerifier, key: PhoneKey, iat: Any
    ) -> None:
        assert "iat" in refused(verifier, key.proof("GET", URL, NOW, claims={"iat": iat}))

    # JSON may escape a lone surrogate ("\ud800"), which is no text: refused, never a 500 when
    # it is hashed or compared.
    def test_lone_surrogates_in_jti_ath_and_nonce(
        self, verifier: ProofVerifier, key: PhoneKey
    ) -> None:
        assert "jti" in refused(verifier, key.proof("GET", URL, NOW, jti="\ud800"))
        proof = key.proof("GET", URL, NOW, claims={"ath": "\ud800"})
        assert "ath" in refused(verifier, proof, access_token="t.o.k")
        window = int(NOW) // 60
        proof = key.proof("GET", URL, NOW, nonce=f"{window}.\ud800")
        with pytest.raises(DPoPError) as e:
            verifier.verify(proof, method="GET", url=URL, now=NOW, require_nonce=True)
        assert e.value.nonce

    def test_missing_or_wrong_ath(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        assert "ath" in refused(verifier, key.proof("GET", URL, NOW), access_token="t.o.k")
        other = key.proof("GET", URL, NOW, token="other.to.ken")
        assert "ath" in refused(verifier, other, access_token="t.o.k")

    def test_nonce_required(self, verifier: ProofVerifier, key: PhoneKey) -> None:
        nonces = verifier.nonces
        with pytest.raises(DPoPError) as e:
            verifier.verify(
                key.proof("GET", URL, NOW), method="GET", url=URL, now=NOW, require_nonce=True
            )
        assert e.value.nonce
        current = nonces.current(NOW)
        good = key.proof("GET", URL, NOW, nonce=current)
        verifier.verify(good, method="GET", url=URL, now=NOW, require_nonce=True)
        for bad in ("nope", current[:-2] + "AA", Nonces(b"t" * 32).current(NOW)):
            with pytest.raises(DPoPError) as e:
                verifier.verify(
                    key.proof("GET", URL, NOW, nonce=bad), method="GET", url=URL, now=NOW,
                    require_nonce=True,
                )  # fmt: skip
            assert e.value.nonce


class TestNonces:
    def test_valid_for_at_least_a_minute_then_expired(self) -> None:
        nonces = Nonces(b"s" * 32)
        now = time.time()
        nonce = nonces.current(now)
        assert nonces.valid(nonce, now + 60)
        assert not nonces.valid(nonce, now + 180)

    def test_every_instance_with_the_secret_agrees(self) -> None:
        assert Nonces(b"s" * 32).current(NOW) == Nonces(b"s" * 32).current(NOW)
        assert Nonces(b"s" * 32).current(NOW) != Nonces(b"t" * 32).current(NOW)


def test_normalize_htu() -> None:
    assert normalize_htu("HTTP://Host:80") == "http://host/"
    assert normalize_htu("https://[::1]:443/a?b") == "https://[::1]/a"
    assert normalize_htu("ftp://host/") is None
    assert normalize_htu("https://host:99999/") is None
