"""The OpenAPI document: every contract path, the OAuth2 password scheme, error schemas,
and `conductor-api openapi`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conductor_api.app import create_app
from tests.conftest import make_settings

API = "/api/v1/auth"
# (path, method) of every contract endpoint, and whether it needs a bearer token.
OPERATIONS: dict[tuple[str, str], bool] = {
    (f"{API}/login", "post"): False,
    (f"{API}/token", "post"): False,
    (f"{API}/refresh", "post"): False,
    (f"{API}/register", "post"): False,
    (f"{API}/logout", "post"): True,
    (f"{API}/me", "get"): True,
    (f"{API}/sessions", "get"): True,
    (f"{API}/sessions/{{session_id}}", "delete"): True,
    (f"{API}/sessions/revoke-others", "post"): True,
    (f"{API}/password", "post"): True,
    (f"{API}/events", "get"): True,
    (f"{API}/mfa", "get"): True,
    (f"{API}/mfa/totp/setup", "post"): True,
    (f"{API}/mfa/totp/confirm", "post"): True,
    (f"{API}/mfa/totp/disable", "post"): True,
    (f"{API}/mfa/recovery-codes", "post"): True,
    (f"{API}/mfa/verify", "post"): False,
    (f"{API}/passkeys/register/options", "post"): True,
    (f"{API}/passkeys/register", "post"): True,
    (f"{API}/passkeys", "get"): True,
    # Renaming is optional in the contract; here it exists.
    (f"{API}/passkeys/{{passkey_id}}", "patch"): True,
    (f"{API}/passkeys/{{passkey_id}}", "delete"): True,
    (f"{API}/passkeys/login/options", "post"): False,
    (f"{API}/passkeys/login", "post"): False,
    ("/.well-known/assetlinks.json", "get"): False,
    ("/health/live", "get"): False,
    ("/health/ready", "get"): False,
    ("/.well-known/jwks.json", "get"): False,
}
ERROR_OUT = "#/components/schemas/ErrorOut"
MFA_REQUIRED_OUT = "#/components/schemas/MfaRequiredOut"
TOKEN_URL = "/api/v1/auth/token"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The application's OpenAPI document (no database is touched to build it)."""
    settings = make_settings(tmp_path_factory.mktemp("openapi"), None)
    doc: dict[str, Any] = create_app(settings).openapi()
    return doc


def operation(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """One operation of the document."""
    op: dict[str, Any] = document["paths"][path][method]
    return op


def json_schema(response: dict[str, Any]) -> dict[str, Any] | None:
    """The application/json schema of a documented response, if any."""
    schema: dict[str, Any] | None = (
        response.get("content", {}).get("application/json", {}).get("schema")
    )
    return schema


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow one local $ref."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = document["components"]["schemas"][name]
    return resolved


def refs(schema: dict[str, Any]) -> set[str]:
    """Every $ref a schema names directly or through anyOf/oneOf."""
    found = {schema["$ref"]} if "$ref" in schema else set()
    for key in ("anyOf", "oneOf"):
        for option in schema.get(key, []):
            found |= refs(option)
    return found


def oauth2_scheme_names(document: dict[str, Any]) -> set[str]:
    """Security schemes that are the OAuth2 password flow against the token endpoint."""
    schemes = document["components"]["securitySchemes"]
    return {
        name
        for name, scheme in schemes.items()
        if scheme.get("type") == "oauth2"
        and scheme.get("flows", {}).get("password", {}).get("tokenUrl") == TOKEN_URL
    }


class TestPaths:
    def test_every_contract_operation_is_listed(self, document: dict[str, Any]) -> None:
        for path, method in OPERATIONS:
            assert path in document["paths"], path
            assert method in document["paths"][path], (path, method)

    def test_nothing_undocumented_outside_the_contract(self, document: dict[str, Any]) -> None:
        listed = {
            (path, method)
            for path, ops in document["paths"].items()
            for method in ops
            if method in ("get", "post", "put", "patch", "delete")
        }
        assert listed == set(OPERATIONS)

    def test_bounds_are_json_schema_keywords(self, document: dict[str, Any]) -> None:
        """Pydantic's own names (`ge`, `le`, ...) reach the document when a constraint sits
        behind a validator in an annotation; no generator reads them."""

        def keys(node: Any) -> set[str]:
            if isinstance(node, dict):
                return set(node) | {k for value in node.values() for k in keys(value)}
            if isinstance(node, list):
                return {k for value in node for k in keys(value)}
            return set()

        assert not keys(document) & {"ge", "le", "gt", "lt", "min_length", "max_length"}
        parameters = document["paths"]["/api/v1/auth/events"]["get"]["parameters"]
        [limit] = [p for p in parameters if p["name"] == "limit"]
        assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 200)

    def test_info(self, document: dict[str, Any]) -> None:
        assert document["openapi"].startswith("3.")
        assert document["info"]["title"] == "Conductor API"
        assert document["info"]["version"]


class TestSecurity:
    def test_oauth2_password_scheme_points_at_the_token_endpoint(
        self, document: dict[str, Any]
    ) -> None:
        assert oauth2_scheme_names(document)

    def test_bearer_operations_reference_the_scheme(self, document: dict[str, Any]) -> None:
        names = oauth2_scheme_names(document)
        for (path, method), protected in OPERATIONS.items():
            security = operation(document, path, method).get("security", [])
            referenced = {name for requirement in security for name in requirement}
            if protected:
                assert referenced & names, (path, method)
                assert "401" in operation(document, path, method)["responses"], path
            else:
                assert not referenced, (path, method)

    def test_dpop_header_is_declared_where_a_proof_is_read(self, document: dict[str, Any]) -> None:
        # Every protected operation (`Authorization: DPoP` needs a proof) and every request
        # that issues tokens (a proof binds them).
        token_requests = {
            ("/api/v1/auth/login", "post"),
            ("/api/v1/auth/token", "post"),
            ("/api/v1/auth/refresh", "post"),
            ("/api/v1/auth/passkeys/login", "post"),
            ("/api/v1/auth/mfa/verify", "post"),
        }
        for (path, method), protected in OPERATIONS.items():
            headers = {
                p["name"]
                for p in operation(document, path, method).get("parameters", [])
                if p["in"] == "header"
            }
            assert ("DPoP" in headers) == (protected or (path, method) in token_requests), (
                path,
                method,
            )

    def test_token_endpoint_takes_the_oauth_form(self, document: dict[str, Any]) -> None:
        body = operation(document, TOKEN_URL, "post")["requestBody"]["content"]
        assert set(body) == {"application/x-www-form-urlencoded"}
        schema = resolve(document, body["application/x-www-form-urlencoded"]["schema"])
        assert {"grant_type", "username", "password", "refresh_token"} <= set(schema["properties"])


class TestResponses:
    def test_error_responses_reference_error_out(self, document: dict[str, Any]) -> None:
        checked = 0
        for path, method in OPERATIONS:
            for status, response in operation(document, path, method)["responses"].items():
                if int(status) < 400 or status == "422":
                    continue
                if path == TOKEN_URL and status in ("400", "403"):
                    continue  # RFC 6749 section 5.2 error body, checked below
                schema = json_schema(response)
                assert schema is not None, (path, method, status)
                if (path, status) == (f"{API}/login", "403"):
                    # account_disabled, or mfa_required with the pending sign-in
                    assert refs(schema) == {ERROR_OUT, MFA_REQUIRED_OUT}, schema
                    continue
                assert schema.get("$ref") == ERROR_OUT, (path, method, status)
                checked += 1
        assert checked >= 25

    def test_error_out_has_detail_and_code(self, document: dict[str, Any]) -> None:
        schema = document["components"]["schemas"]["ErrorOut"]
        assert {"detail", "code"} <= set(schema["required"])

    def test_token_errors_follow_rfc_6749(self, document: dict[str, Any]) -> None:
        response = operation(document, TOKEN_URL, "post")["responses"]["400"]
        schema = json_schema(response)
        assert schema is not None
        resolved = resolve(document, schema)
        assert {"error", "code", "detail"} <= set(resolved["required"])

    def test_mfa_required_bodies_declare_the_pending_sign_in(
        self, document: dict[str, Any]
    ) -> None:
        # What a client generated from the document needs to reach /auth/mfa/verify, at the
        # login and at the token endpoint alike.
        pending = {"code", "mfa_token", "methods", "expires_in"}
        login = document["components"]["schemas"]["MfaRequiredOut"]
        assert pending <= set(login["required"]), login
        response = operation(document, TOKEN_URL, "post")["responses"]["403"]
        schema = json_schema(response)
        assert schema is not None
        token = resolve(document, schema)
        assert pending | {"error", "error_description", "detail"} <= set(token["required"])

    def test_validation_errors_are_documented_in_their_own_shape(
        self, document: dict[str, Any]
    ) -> None:
        # A 422 is either a rule's ErrorOut (password_rejected) or FastAPI's validation
        # list: the documented schema must allow both, or clients generated from it break.
        for path, method in OPERATIONS:
            op = operation(document, path, method)
            if "requestBody" not in op:
                continue
            if path == TOKEN_URL:
                # RFC 6749 section 5.2: a field that fails validation is 400 invalid_request.
                assert "422" not in op["responses"]
                assert "400" in op["responses"]
                continue
            schema = json_schema(op["responses"]["422"])
            assert schema is not None, path
            names = refs(schema)
            assert names, path
            shapes = [resolve(document, {"$ref": name}) for name in names]
            detail_types = {json.dumps(s["properties"]["detail"], sort_keys=True) for s in shapes}
            assert any('"array"' in d for d in detail_types), (path, detail_types)

    def test_422_only_where_validation_can_fail(self, document: dict[str, Any]) -> None:
        """A request with no body and no query parameter has nothing to fail validation
        (a path's id is free text, answered 404 when unknown): no 422 is listed for it."""
        listed = set()
        for path, operations in document["paths"].items():
            for method, op in operations.items():
                queries = [p for p in op.get("parameters", []) if p["in"] == "query"]
                if "requestBody" not in op and not queries:
                    assert "422" not in op["responses"], (method, path)
                elif "422" in op["responses"]:
                    listed.add((method, path))
        for path in ("/health/live", "/health/ready", f"{API}/me", f"{API}/sessions"):
            assert "422" not in operation(document, path, "get")["responses"], path
        assert (
            "422"
            not in operation(document, f"{API}/sessions/{{session_id}}", "delete")["responses"]
        )
        assert {("post", f"{API}/login"), ("get", f"{API}/events")} <= listed

    def test_every_body_may_be_refused_for_its_coding(self, document: dict[str, Any]) -> None:
        for path, operations in document["paths"].items():
            for method, op in operations.items():
                if "requestBody" in op:
                    response = op["responses"].get("415")
                    assert response is not None, (method, path)
                    assert json_schema(response) == {"$ref": ERROR_OUT}, (method, path)

    def test_token_responses(self, document: dict[str, Any]) -> None:
        for path in (f"{API}/login", f"{API}/refresh", TOKEN_URL):
            ok = operation(document, path, "post")["responses"]["200"]
            assert json_schema(ok) == {"$ref": "#/components/schemas/TokenPairOut"}
            assert "Cache-Control" in ok.get("headers", {}), path
        pair = document["components"]["schemas"]["TokenPairOut"]
        assert {
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
            "session_id",
        } <= set(pair["properties"])


def _clean_env(home: Path) -> dict[str, str]:
    """The environment without any of the app's settings."""
    names = ("JWT_", "DATABASE_URL", "CONDUCTOR_", "ANDROID_API_", "ALLOW_REGISTRATION", "CORS_")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(names)}
    env["HOME"] = str(home)
    return env


class TestCommand:
    def test_prints_the_document_without_creating_data(
        self, tmp_path: Path, document: dict[str, Any]
    ) -> None:
        command = Path(sys.executable).parent / "conductor-api"
        assert command.exists(), command
        result = subprocess.run(
            [str(command), "openapi"],
            cwd=tmp_path,
            env=_clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert set(printed["paths"]) == set(document["paths"])
        assert printed["components"]["securitySchemes"] == document["components"]["securitySchemes"]
        assert not (tmp_path / "data").exists()
        assert list(tmp_path.iterdir()) == []
