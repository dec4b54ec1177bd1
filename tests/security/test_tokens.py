"""Typed JWTs: what TokenService accepts and refuses, and the same attacks through the API."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from jwt.types import Options

from conductor_api.clock import FrozenClock
from conductor_api.container import Container
from conductor_api.errors import InvalidRefreshToken, InvalidToken
from conductor_api.security.tokens import _JWS, MAX_TOKEN_LENGTH, TokenService
from tests.conftest import Account, bearer, tokens

ACCESS_KEY = "unit-access-" + "k" * 60
REFRESH_KEY = "unit-refresh-" + "r" * 60
WRONG_KEY = "not-the-key-" + "w" * 60
ISSUER = "conductor-api"
AUDIENCE = "conductor-android"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'
ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    """One JWS segment: base64url of compact JSON."""
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a token, read without checking anything."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign(
    claims: dict[str, Any], key: str, alg: str = "HS256", headers: dict[str, Any] | None = None
) -> str:
    """A token signed by hand."""
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


@dataclass(frozen=True)
class Keys:
    """The keys of the server under attack."""

    access: str
    refresh: str


# An attack turns a genuine access token (its claims, and the token itself) into a forgery.
Attack = Callable[[dict[str, Any], str, Keys], str]


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != name}


def _alg_none(claims: dict[str, Any], _: str, __: Keys) -> str:
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


def _alg_none_lowercase_header(claims: dict[str, Any], _: str, __: Keys) -> str:
    return f"{segment({'alg': 'None'})}.{segment(claims)}."


def _changed_payload(claims: dict[str, Any], token: str, _: Keys) -> str:
    header, _payload, signature = token.split(".")
    forged = {**claims, "exp": claims["exp"] + 365 * 86400}
    return f"{header}.{segment(forged)}.{signature}"


def _changed_subject(claims: dict[str, Any], token: str, _: Keys) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{segment({**claims, 'sub': str(uuid.uuid4())})}.{signature}"


ATTACKS: dict[str, Attack] = {
    "alg_none": _alg_none,
    "alg_None": _alg_none_lowercase_header,
    "wrong_key": lambda c, _, k: sign(c, WRONG_KEY),
    "refresh_key_for_access": lambda c, _, k: sign(c, k.refresh),
    "hs512_with_right_key": lambda c, _, k: sign(c, k.access, "HS512"),
    "hs384_with_right_key": lambda c, _, k: sign(c, k.access, "HS384"),
    "changed_payload_old_signature": _changed_payload,
    "changed_subject_old_signature": _changed_subject,
    "missing_iss": lambda c, _, k: sign(_without(c, "iss"), k.access),
    "wrong_iss": lambda c, _, k: sign({**c, "iss": "someone-else"}, k.access),
    "missing_aud": lambda c, _, k: sign(_without(c, "aud"), k.access),
    "wrong_aud": lambda c, _, k: sign({**c, "aud": "another-app"}, k.access),
    "missing_exp": lambda c, _, k: sign(_without(c, "exp"), k.access),
    "string_exp": lambda c, _, k: sign({**c, "exp": str(c["exp"])}, k.access),
    "missing_jti": lambda c, _, k: sign(_without(c, "jti"), k.access),
    "missing_typ": lambda c, _, k: sign(_without(c, "typ"), k.access),
    "typ_refresh_with_access_key": lambda c, _, k: sign({**c, "typ": "refresh"}, k.access),
    "unknown_crit_header": lambda c, _, k: sign(
        c, k.access, headers={"crit": ["urn:example:unknown"], "urn:example:unknown": True}
    ),
    "sid_not_uuid": lambda c, _, k: sign({**c, "sid": "not-a-uuid"}, k.access),
    "sub_not_uuid": lambda c, _, k: sign({**c, "sub": "alice"}, k.access),
    "ten_kb_signed": lambda c, _, k: sign({**c, "pad": "x" * 10_240}, k.access),
    # Signed with the right key, but not as this server issues its tokens.
    "aud_list": lambda c, _, k: sign({**c, "aud": [c["aud"]]}, k.access),
    "iat_an_hour_ahead": lambda c, _, k: sign({**c, "iat": c["iat"] + 3600}, k.access),
    "nbf_an_hour_ahead": lambda c, _, k: sign({**c, "nbf": c["iat"] + 3600}, k.access),
    "string_nbf": lambda c, _, k: sign({**c, "nbf": str(c["iat"])}, k.access),
}

MALFORMED = [
    "abc",
    "a.b.c",
    "...",
    "a.b",
    "eyJhbGciOiJIUzI1NiJ9.!!!.###",
    "eyJhbGciOiJIUzI1NiJ9.e30.",
    segment({"alg": "HS256"}) + "." + b64url(b"not json") + ".c2ln",
    "x" * 10_240,
]


def make_service(algorithm: str = "HS256") -> TokenService:
    """A TokenService with the unit tests' keys."""
    return TokenService(
        access_secret=ACCESS_KEY,
        refresh_secret=REFRESH_KEY,
        algorithm=algorithm,
        issuer=ISSUER,
        audience=AUDIENCE,
        access_ttl=timedelta(minutes=30),
    )


UNIT_KEYS = Keys(ACCESS_KEY, REFRESH_KEY)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The HTTP attacks below forge tokens with the server's HMAC key: the HS256 mode.
    The same attacks on the default EdDSA mode are in tests/keys/test_api.py."""
    return {"jwt_algorithm": "HS256"}


class TestTokenServiceAccess:
    def test_issued_token_decodes_to_its_claims(self) -> None:
        service = make_service()
        user_id, session_id = uuid.uuid4(), uuid.uuid4()
        claims = service.decode_access(service.issue_access(user_id, session_id, NOW), NOW)
        assert claims.user_id == user_id
        assert claims.session_id == session_id
        assert claims.issued_at == int(NOW.timestamp())
        assert claims.expires_at == claims.issued_at + 1800
        assert claims.jti

    def test_token_carries_every_contract_claim(self) -> None:
        service = make_service()
        token = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        claims = unverified_claims(token)
        assert {"sub", "sid", "jti", "iat", "exp", "iss", "aud", "typ"} <= claims.keys()
        assert claims["typ"] == "access"
        assert claims["iss"] == ISSUER
        assert claims["aud"] == AUDIENCE
        assert jwt.get_unverified_header(token)["alg"] == "HS256"

    def test_each_access_token_has_its_own_jti(self) -> None:
        service = make_service()
        user_id, session_id = uuid.uuid4(), uuid.uuid4()
        a = unverified_claims(service.issue_access(user_id, session_id, NOW))
        b = unverified_claims(service.issue_access(user_id, session_id, NOW))
        assert a["jti"] != b["jti"]

    def test_expiry_is_checked_against_the_given_time(self) -> None:
        service = make_service()
        token = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        service.decode_access(token, NOW + timedelta(minutes=29, seconds=59))
        with pytest.raises(InvalidToken):
            service.decode_access(token, NOW + timedelta(minutes=30))
        with pytest.raises(InvalidToken):
            service.decode_access(token, NOW + timedelta(days=1))

    def test_configured_algorithm_is_used_and_no_other_accepted(self) -> None:
        service = make_service("HS384")
        token = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        assert jwt.get_unverified_header(token)["alg"] == "HS384"
        service.decode_access(token, NOW)
        with pytest.raises(InvalidToken):
            service.decode_access(sign(unverified_claims(token), ACCESS_KEY, "HS256"), NOW)

    def test_control_a_hand_signed_genuine_token_is_accepted(self) -> None:
        # Proves the forgeries below fail for what they change, not for how they are built.
        service = make_service()
        token = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        service.decode_access(sign(unverified_claims(token), ACCESS_KEY), NOW)

    @pytest.mark.parametrize("name", sorted(ATTACKS))
    def test_forgery_is_refused(self, name: str) -> None:
        service = make_service()
        token = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        forged = ATTACKS[name](unverified_claims(token), token, UNIT_KEYS)
        with pytest.raises(InvalidToken):
            service.decode_access(forged, NOW)

    @pytest.mark.parametrize("token", ["", *MALFORMED])
    def test_malformed_is_refused(self, token: str) -> None:
        with pytest.raises(InvalidToken):
            make_service().decode_access(token, NOW)

    def test_refresh_token_is_not_an_access_token(self) -> None:
        service = make_service()
        refresh = service.issue_refresh(
            uuid.uuid4(),
            uuid.uuid4(),
            "jti-1",
            int(NOW.timestamp()),
            int(NOW.timestamp()) + 60,
            int(NOW.timestamp()) + 90 * 86400,
        )
        with pytest.raises(InvalidToken):
            service.decode_access(refresh, NOW)


class TestTokenServiceRefresh:
    def _issue(self, service: TokenService, jti: str = "parent-jti") -> str:
        iat = int(NOW.timestamp())
        return service.issue_refresh(
            uuid.UUID(int=1), uuid.UUID(int=2), jti, iat, iat + 7 * 86400, iat + 90 * 86400
        )

    def test_same_arguments_give_the_same_token(self) -> None:
        service = make_service()
        assert self._issue(service) == self._issue(service)
        assert self._issue(service) == self._issue(make_service())
        assert self._issue(service, "other-jti") != self._issue(service)

    def test_refresh_token_is_typed_and_signed_with_the_refresh_key(self) -> None:
        service = make_service()
        token = self._issue(service)
        assert unverified_claims(token)["typ"] == "refresh"
        # The unit tests' clock is not the wall clock: check signatures only.
        options: Options = {"verify_exp": False, "verify_iat": False}
        jwt.decode(token, REFRESH_KEY, algorithms=["HS256"], audience=AUDIENCE, options=options)
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, ACCESS_KEY, algorithms=["HS256"], audience=AUDIENCE, options=options)
        claims = service.decode_refresh(token, NOW)
        assert claims.jti == "parent-jti"
        assert claims.user_id == uuid.UUID(int=1)
        assert claims.session_id == uuid.UUID(int=2)

    # The test keys are shorter than HS512 would like; that is not what is tested here.
    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    @pytest.mark.parametrize("before", ["HS256", "HS384", "HS512", "EdDSA"])
    def test_changing_jwt_algorithm_leaves_refresh_tokens_alone(self, before: str) -> None:
        # What a server in each mode signed (an earlier version signed refresh tokens with
        # HS384 or HS512 in those modes) every mode accepts, and signs with HS256 itself.
        claims = unverified_claims(self._issue(make_service()))
        issued = sign(claims, REFRESH_KEY, "HS256" if before == "EdDSA" else before)
        for after in ("HS256", "HS384", "HS512", "EdDSA"):
            service = make_service(after)
            assert service.decode_refresh(issued, NOW).jti == "parent-jti"
            assert jwt.get_unverified_header(self._issue(service))["alg"] == "HS256"
        # Only with the refresh key: the access key, or none, is still refused.
        for forged in (sign(claims, ACCESS_KEY, "HS512"), sign(claims, WRONG_KEY, "HS384")):
            with pytest.raises(InvalidRefreshToken):
                make_service("HS512").decode_refresh(forged, NOW)

    def test_child_jti_differs_from_parent_and_is_stable(self) -> None:
        service = make_service()
        child = service.child_jti("parent-jti")
        assert child != "parent-jti"
        assert child == service.child_jti("parent-jti")
        assert child == make_service().child_jti("parent-jti")
        assert service.child_jti(child) not in (child, "parent-jti")
        assert service.child_jti("another-parent") != child

    def test_child_jti_depends_on_the_refresh_secret(self) -> None:
        other = TokenService(
            access_secret=ACCESS_KEY, refresh_secret=WRONG_KEY, algorithm="HS256",
            issuer=ISSUER, audience=AUDIENCE, access_ttl=timedelta(minutes=30),
        )  # fmt: skip
        assert other.child_jti("parent-jti") != make_service().child_jti("parent-jti")

    def test_access_token_is_not_a_refresh_token(self) -> None:
        service = make_service()
        access = service.issue_access(uuid.uuid4(), uuid.uuid4(), NOW)
        with pytest.raises(InvalidRefreshToken):
            service.decode_refresh(access, NOW)
        # Even signed with the refresh key, the type claim still says "access".
        with pytest.raises(InvalidRefreshToken):
            service.decode_refresh(sign(unverified_claims(access), REFRESH_KEY), NOW)

    def test_expired_refresh_token_is_refused(self) -> None:
        service = make_service()
        token = self._issue(service)
        service.decode_refresh(token, NOW + timedelta(days=6))
        with pytest.raises(InvalidRefreshToken):
            service.decode_refresh(token, NOW + timedelta(days=7))

    def test_iat_and_nbf_may_be_a_little_ahead_of_the_clock(self) -> None:
        # Instances sharing the secrets may run a few seconds apart: up to a minute passes.
        service = make_service()
        claims = unverified_claims(self._issue(service))
        ahead = int(NOW.timestamp()) + 60
        service.decode_refresh(sign({**claims, "iat": ahead, "nbf": ahead}, REFRESH_KEY), NOW)

    @pytest.mark.parametrize(
        "change",
        [
            {"aud": [AUDIENCE]},
            {"aud": [AUDIENCE, "another-app"]},
            {"iat": int(NOW.timestamp()) + 61},
            {"nbf": int(NOW.timestamp()) + 61},
            {"nbf": True},
        ],
        ids=["aud_list", "aud_list_of_two", "iat_ahead", "nbf_ahead", "nbf_bool"],
    )
    def test_claims_not_as_issued_are_refused(self, change: dict[str, Any]) -> None:
        service = make_service()
        claims = unverified_claims(self._issue(service))
        with pytest.raises(InvalidRefreshToken):
            service.decode_refresh(sign({**claims, **change}, REFRESH_KEY), NOW)

    @pytest.mark.parametrize("token", ["", *MALFORMED])
    def test_malformed_refresh_is_refused(self, token: str) -> None:
        with pytest.raises(InvalidRefreshToken):
            make_service().decode_refresh(token, NOW)


def assert_invalid_token(response: httpx.Response, *, token_sent: bool = True) -> None:
    """401 `invalid_token` with the RFC 6750 challenge."""
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_token"
    expected = INVALID_TOKEN_CHALLENGE if token_sent else "Bearer"
    assert response.headers["www-authenticate"] == expected


def server_keys(container: Container) -> Keys:
    """The keys of the app under test."""
    return Keys(container.settings.access_secret, container.settings.refresh_secret)


class TestAccessTokenOverHttp:
    async def test_real_access_token_carries_the_contract_claims(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        claims = unverified_claims(pair["access_token"])
        assert {"sub", "sid", "jti", "iat", "exp", "iss", "aud", "typ"} <= claims.keys()
        assert claims["typ"] == "access"
        assert claims["sub"] == str(alice.id)
        assert claims["sid"] == pair["session_id"]
        assert claims["iat"] == int(clock.now().timestamp())
        assert claims["exp"] - claims["iat"] == 30 * 60 == pair["expires_in"]
        assert jwt.get_unverified_header(pair["access_token"])["alg"] == "HS256"

    async def test_genuine_and_hand_signed_tokens_are_accepted(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        response = await client.get(ME, headers=bearer(pair["access_token"]))
        assert response.status_code == 200
        assert response.json()["id"] == str(alice.id)
        resigned = sign(unverified_claims(pair["access_token"]), container.settings.access_secret)
        assert (await client.get(ME, headers=bearer(resigned))).status_code == 200

    # The test keys are shorter than HS512 would like; that is not what is tested here.
    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    @pytest.mark.parametrize("name", sorted(ATTACKS))
    async def test_forgery_is_401_invalid_token(
        self, name: str, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        token = pair["access_token"]
        forged = ATTACKS[name](unverified_claims(token), token, server_keys(container))
        assert_invalid_token(await client.get(ME, headers=bearer(forged)))

    @pytest.mark.parametrize("token", MALFORMED)
    async def test_malformed_is_401_invalid_token(
        self, token: str, client: httpx.AsyncClient
    ) -> None:
        assert_invalid_token(await client.get(ME, headers=bearer(token)))

    async def test_expired_token_is_refused(
        self, client: httpx.AsyncClient, alice: Account, clock: FrozenClock
    ) -> None:
        pair = await tokens(client)
        clock.advance(minutes=29, seconds=59)
        assert (await client.get(ME, headers=bearer(pair["access_token"]))).status_code == 200
        clock.advance(seconds=2)
        assert_invalid_token(await client.get(ME, headers=bearer(pair["access_token"])))

    async def test_refresh_token_is_not_an_access_token(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        assert_invalid_token(await client.get(ME, headers=bearer(pair["refresh_token"])))

    async def test_token_for_a_session_that_does_not_exist(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        claims = {**unverified_claims(pair["access_token"]), "sid": str(uuid.uuid4())}
        forged = sign(claims, container.settings.access_secret)
        assert_invalid_token(await client.get(ME, headers=bearer(forged)))

    async def test_token_naming_another_user_for_a_real_session(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        claims = {**unverified_claims(pair["access_token"]), "sub": str(uuid.uuid4())}
        forged = sign(claims, container.settings.access_secret)
        assert_invalid_token(await client.get(ME, headers=bearer(forged)))

    @pytest.mark.parametrize("header", ["Bearer ", "Bearer", "bearer  "])
    async def test_empty_bearer(self, header: str, client: httpx.AsyncClient) -> None:
        assert_invalid_token(await client.get(ME, headers={"Authorization": header}))

    async def test_sixteen_kb_authorization_header(self, client: httpx.AsyncClient) -> None:
        response = await client.get(ME, headers=bearer("A" * 16_384))
        assert_invalid_token(response)

    async def test_max_length_is_far_above_real_tokens(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        assert len(pair["access_token"]) * 2 < MAX_TOKEN_LENGTH
        assert len(pair["refresh_token"]) * 2 < MAX_TOKEN_LENGTH

    async def test_missing_authorization_has_no_error_param(
        self, client: httpx.AsyncClient
    ) -> None:
        # RFC 6750 section 3.1: no error code when no authentication was attempted.
        assert_invalid_token(await client.get(ME), token_sent=False)

    async def test_other_scheme_counts_as_no_token(self, client: httpx.AsyncClient) -> None:
        response = await client.get(ME, headers={"Authorization": "Basic YWxpY2U6cHc="})
        assert_invalid_token(response, token_sent=False)


class TestRefreshTokenOverHttp:
    async def test_access_token_is_not_a_refresh_token(
        self, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        pair = await tokens(client)
        response = await client.post(REFRESH, json={"refresh_token": pair["access_token"]})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"
        # The same claims signed with the refresh key are still an access token.
        forged = sign(unverified_claims(pair["access_token"]), container.settings.refresh_secret)
        response = await client.post(REFRESH, json={"refresh_token": forged})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"
        # The genuine refresh token is untouched by these attempts.
        response = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize("token", MALFORMED)
    async def test_malformed_refresh_token(self, token: str, client: httpx.AsyncClient) -> None:
        response = await client.post(REFRESH, json={"refresh_token": token})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"


# Segments as PyJWT sees them: plain, padded (rightly and wrongly), with spare bits set,
# of a length base64 cannot have, with characters of other alphabets, empty.
_SEGMENTS = [
    b"eyJhbGciOiJIUzI1NiJ9", b"YQ", b"YWI", b"YWJj", b"YQ==", b"YWI=", b"YQ=", b"YQ===",
    b"YR", b"YWJ", b"Y", b"YWJjZ", b"", b"!!!!", b"YW+j", b"YW/j", b"YW j", b"YW\nj",
    b"YWJj\x00", b"-_-_", b"=", b"====", b"YWJj" * 100,
]  # fmt: skip


@pytest.mark.parametrize("segment", _SEGMENTS)
def test_segments_decode_as_pyjwt_decodes_them(segment: bytes) -> None:
    """The faster segment reading gives PyJWT's bytes, or PyJWT's error, for every input."""

    def read(decode: Callable[[bytes, str], bytes]) -> bytes | str:
        try:
            return decode(segment, "payload")
        except jwt.DecodeError as e:
            return f"DecodeError: {e}"

    assert read(_JWS._decode_base64url_segment) == read(jwt.PyJWS._decode_base64url_segment)
