"""The verifier of docs/verifying-tokens.md, run as written against a real server: another
service that knows only the JWKS URL accepts plain and DPoP-bound access tokens used as
the contract says, and refuses everything else with its own `Refused`, never another
exception."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.dpop.keys import PhoneKey
from tests.e2e.server import Server, create_user

pytestmark = pytest.mark.e2e

DOC = Path(__file__).parents[2] / "docs" / "verifying-tokens.md"
LOGIN = "/api/v1/auth/login"
# The other service's own URL, which the phone's proofs name.
SERVICE = "https://messages.conductor.example/v1/threads"


def doc_verifier(jwks_url: str) -> dict[str, Any]:
    """The doc's Python example, its JWKS_URL pointed at `jwks_url`: its globals."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    source = code.group(1).replace(
        '"https://conductor.example.com/.well-known/jwks.json"', repr(jwks_url)
    )
    assert repr(jwks_url) in source
    namespace: dict[str, Any] = {"__name__": "verifier"}
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own doc's code
    return namespace


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the module, with alice."""
    cwd = tmp_path_factory.mktemp("verifier")
    env = {"CONDUCTOR_DATA_DIR": str(cwd / "data")}
    create_user(cwd, env, "alice", PASSWORD)
    with Server(cwd, env) as running:
        yield running


@pytest.fixture(scope="module")
def verifier(server: Server) -> dict[str, Any]:
    """The doc's code, for this server."""
    return doc_verifier(server.url + "/.well-known/jwks.json")


def login(server: Server, key: PhoneKey | None = None) -> dict[str, Any]:
    """Alice's token pair, bound to `key` when given."""
    headers = {} if key is None else {"DPoP": key.proof("POST", server.url + LOGIN, time.time())}
    response = httpx.post(
        server.url + LOGIN,
        json={"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(verifier: dict[str, Any], *args: Any) -> str:
    """The reason the doc's `verify` refuses, asserting it raises its `Refused`."""
    with pytest.raises(verifier["Refused"]) as caught:
        verifier["verify"](*args)
    return str(caught.value)


def claims_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    body: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return body


class TestPlainTokens:
    def test_a_bearer_token_is_accepted(self, server: Server, verifier: dict[str, Any]) -> None:
        pair = login(server)
        claims = verifier["verify"]("Bearer " + pair["access_token"], None, "GET", SERVICE)
        assert claims["sub"] == claims_of(pair["access_token"])["sub"]
        assert "cnf" not in claims

    def test_everything_else_is_refused(self, server: Server, verifier: dict[str, Any]) -> None:
        pair = login(server)
        token = pair["access_token"]
        header, payload, signature = token.split(".")
        flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
        for authorization in (
            "Bearer " + pair["refresh_token"],  # no kid: PyJWKClientError, caught
            "Bearer " + f"{header}.{flipped}.{signature}",
            "Bearer not-a-token",
            "DPoP " + token,  # an unbound token under the DPoP scheme
        ):
            refused(verifier, authorization, None, "GET", SERVICE)


class TestBoundTokens:
    def test_accepted_only_with_a_proof_of_its_key_for_this_request(
        self, server: Server, verifier: dict[str, Any]
    ) -> None:
        phone = PhoneKey()
        token = login(server, phone)["access_token"]
        assert claims_of(token)["cnf"] == {"jkt": phone.jkt}
        now = time.time()
        proof = phone.proof("GET", SERVICE, now, token=token)
        claims = verifier["verify"]("DPoP " + token, proof, "GET", SERVICE)
        assert claims["cnf"]["jkt"] == phone.jkt
        assert "used before" in refused(verifier, "DPoP " + token, proof, "GET", SERVICE)

        def fresh(**kw: Any) -> str:
            return phone.proof(kw.pop("method", "GET"), kw.pop("url", SERVICE), now, **kw)

        # A copied token, used as Bearer or with no proof.
        assert "DPoP" in refused(verifier, "Bearer " + token, None, "GET", SERVICE)
        assert "DPoP" in refused(verifier, "DPoP " + token, None, "GET", SERVICE)
        # Proofs for another request, another token, another time, by another key.
        for proof in (
            fresh(method="POST", token=token),
            fresh(url=SERVICE + "/other", token=token),
            fresh(token="another.access.token"),
            fresh(),  # no ath
            phone.proof("GET", SERVICE, now - 300, token=token),
            PhoneKey().proof("GET", SERVICE, now, token=token),
            fresh(token=token, header={"typ": "JWT"}),
        ):
            refused(verifier, "DPoP " + token, proof, "GET", SERVICE)
        # The query and fragment are not part of htu.
        proof = phone.proof("GET", SERVICE + "?page=2", now, token=token)
        verifier["verify"]("DPoP " + token, proof, "GET", SERVICE)

    def test_an_ed25519_phone_key(self, server: Server, verifier: dict[str, Any]) -> None:
        phone = PhoneKey("EdDSA")
        token = login(server, phone)["access_token"]
        proof = phone.proof("GET", SERVICE, time.time(), token=token)
        assert verifier["verify"]("DPoP " + token, proof, "GET", SERVICE)["sub"]

    def test_conductor_refuses_a_bound_token_sent_as_bearer(self, server: Server) -> None:
        # What the doc's liveness section says: a bound token cannot be checked at /auth/me.
        token = login(server, PhoneKey())["access_token"]
        response = httpx.get(
            server.url + "/api/v1/auth/me", headers={"Authorization": "Bearer " + token}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
