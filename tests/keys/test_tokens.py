"""TokenService with a key ring: kid in the header, the server's algorithm only, and the
child-jti key derived rather than reused. Pure: no database."""

from __future__ import annotations

import base64
import hmac
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from conductor_api.errors import InvalidToken
from conductor_api.keys import crypto
from conductor_api.keys.models import SigningKey
from conductor_api.keys.ring import KeyRing, NoSigningKey
from conductor_api.security.tokens import TokenService, UnknownSigningKey

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CIPHER = crypto.KeyCipher(b"u" * 32)
REFRESH_SECRET = "unit-refresh-" + "r" * 40


def row(kid: str, state: str, algorithm: str = "EdDSA", sign_after: datetime = NOW) -> SigningKey:
    """An unsaved key row, as the table would hold it."""
    private = crypto.generate(algorithm)
    return SigningKey(
        kid=kid, algorithm=algorithm, state=state, public_key=crypto.public_pem(private),
        private_key=CIPHER.seal(kid, private), created_at=NOW, sign_after=sign_after,
    )  # fmt: skip


def service(algorithm: str, *rows: SigningKey) -> tuple[TokenService, KeyRing]:
    """A TokenService over a ring holding `rows`."""
    ring = KeyRing(algorithm)
    ring.replace(list(rows), CIPHER)
    tokens = TokenService(
        access_secret="unit-access-" + "a" * 40, refresh_secret=REFRESH_SECRET,
        algorithm=algorithm, issuer="conductor-api", audience="conductor-android",
        access_ttl=timedelta(minutes=30), keyring=ring,
    )  # fmt: skip
    return tokens, ring


class TestSigning:
    @pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
    def test_token_names_its_key_and_verifies(self, algorithm: str) -> None:
        tokens, _ = service(algorithm, row("k1", "current", algorithm))
        token = tokens.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        header = jwt.get_unverified_header(token)
        assert (header["alg"], header["kid"]) == (algorithm, "k1")
        assert tokens.decode_access(token, NOW).kid == "k1"

    def test_the_next_key_signs_from_its_time_on(self) -> None:
        later = NOW + timedelta(seconds=300)
        tokens, _ = service("EdDSA", row("k1", "current"), row("k2", "next", sign_after=later))
        first = tokens.issue_access(uuid.uuid4(), uuid.uuid4(), later - timedelta(seconds=1))
        second = tokens.issue_access(uuid.uuid4(), uuid.uuid4(), later)
        assert jwt.get_unverified_header(first)["kid"] == "k1"
        assert jwt.get_unverified_header(second)["kid"] == "k2"
        tokens.decode_access(first, later)
        tokens.decode_access(second, later)

    def test_during_an_algorithm_rollout_the_last_own_key_signs(self) -> None:
        tokens, _ = service("EdDSA", row("old", "previous"), row("new", "current", "ES256"))
        token = tokens.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        assert jwt.get_unverified_header(token)["kid"] == "old"

    def test_no_key_of_the_algorithm_is_a_503(self) -> None:
        tokens, _ = service("EdDSA", row("new", "current", "ES256"))
        with pytest.raises(NoSigningKey) as info:
            tokens.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        assert info.value.status == 503


class TestVerifying:
    def test_unknown_kid_asks_for_a_reread(self) -> None:
        tokens, _ = service("EdDSA", row("k1", "current"))
        other, _ = service("EdDSA", row("k9", "current"))
        with pytest.raises(UnknownSigningKey) as info:
            tokens.decode_access(other.issue_access(uuid.uuid4(), uuid.uuid4(), NOW), NOW)
        assert info.value.kid == "k9"

    def test_a_published_key_of_another_algorithm_does_not_verify(self) -> None:
        es, _ = service("ES256", row("k1", "current", "ES256"))
        token = es.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        ed, ring = service("EdDSA", row("k0", "current"))
        ring.replace([row("k0", "current"), row("k1", "previous", "ES256")], CIPHER)
        with pytest.raises(InvalidToken) as info:
            ed.decode_access(token, NOW)
        assert not isinstance(info.value, UnknownSigningKey)

    def test_a_key_removed_from_the_ring_is_refused_even_from_the_cache(self) -> None:
        current = row("k1", "current")
        tokens, ring = service("EdDSA", current)
        token = tokens.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        tokens.decode_access(token, NOW)  # now remembered
        ring.replace([row("k2", "current")], CIPHER)
        with pytest.raises(InvalidToken):
            tokens.decode_access(token, NOW)


class TestChildJti:
    def test_derived_key_not_the_refresh_secret(self) -> None:
        tokens, _ = service("EdDSA", row("k1", "current"))
        child = tokens.child_jti("parent")
        raw = hmac.new(REFRESH_SECRET.encode(), b"rotate:parent", "sha256").digest()
        assert child != base64.urlsafe_b64encode(raw[:18]).decode()
        assert child == service("EdDSA", row("k2", "current"))[0].child_jti("parent")
        assert len(child) == 24
