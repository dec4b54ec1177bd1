"""Bad requests: 4xx JSON (never 500), secrets never echoed, the 64 KiB body limit."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message

from conductor_api.container import Container
from tests.conftest import PASSWORD, Account, bearer, login, tokens

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
SECRET = "Sup3r-Secret-Value-123"
LIMIT = 64 * 1024


def assert_json_4xx(response: httpx.Response) -> Any:
    """A client error with a JSON body."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_no_secret(response: httpx.Response, *secrets: str) -> None:
    """None of `secrets` appears anywhere in the response, headers included."""
    for secret in secrets:
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())


class TestSecretsAreNotEchoed:
    async def test_login_missing_device_name(self, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGIN, json={"username": "alice", "password": SECRET})
        body = assert_json_4xx(response)
        assert response.status_code == 422
        assert any(e["loc"][-1] == "device_name" for e in body["detail"])
        assert_no_secret(response, SECRET)

    @pytest.mark.parametrize(
        "body",
        [
            {"username": "alice", "password": SECRET, "device_name": ""},
            {"username": "alice", "password": SECRET, "device_name": "x" * 101},
            {"username": "alice", "password": SECRET, "device_name": 7},
            {"username": "", "password": SECRET, "device_name": "Pixel 8"},
            {"username": ["alice"], "password": SECRET, "device_name": "Pixel 8"},
            {"username": "alice", "password": [SECRET], "device_name": "Pixel 8"},
            {"username": "alice", "password": {"value": SECRET}, "device_name": "Pixel 8"},
            {"username": "alice", "password": SECRET * 60, "device_name": "Pixel 8"},
            {"username": "alice", "password": SECRET, "device_name": "P", "device_fingerprint": ""},
            [SECRET],
            SECRET,
        ],
    )
    async def test_login_bodies(self, body: Any, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGIN, json=body)
        assert response.status_code == 422
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    async def test_refresh_token_of_the_wrong_type(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        secret_number = 918273645546372819
        response = await client.post(REFRESH, json={"refresh_token": secret_number})
        assert response.status_code == 422
        assert_no_secret(response, str(secret_number))
        pair = await tokens(client)
        for body in (
            {"refresh_token": [pair["refresh_token"]]},
            {"refresh_token": {"token": pair["refresh_token"]}},
            {"token": pair["refresh_token"], "extra": pair["access_token"]},
            [pair["refresh_token"]],
        ):
            response = await client.post(REFRESH, json=body)
            assert response.status_code == 422, body
            assert_json_4xx(response)
            assert_no_secret(response, pair["refresh_token"], pair["access_token"])

    async def test_refresh_with_extra_fields_still_rotates(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        response = await client.post(
            REFRESH, json={"refresh_token": pair["refresh_token"], "extra": SECRET}
        )
        assert response.status_code == 200
        assert_no_secret(response, SECRET)

    async def test_password_change_body(self, client: httpx.AsyncClient, alice: Account) -> None:
        pair = await tokens(client)
        response = await client.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": [SECRET]},
            headers=bearer(pair["access_token"]),
        )
        assert response.status_code == 422
        assert_no_secret(response, SECRET, PASSWORD)

    async def test_register_body(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/auth/register", json={"password": SECRET})
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    async def test_token_form(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": "x" * 200, "password": SECRET},
        )
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    async def test_malformed_json_with_a_password_in_it(self, client: httpx.AsyncClient) -> None:
        raw = '{"username": "alice", "password": "' + SECRET + '", "device_name": '
        response = await client.post(
            LOGIN, content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert_no_secret(response, SECRET)


class TestValidationShape:
    async def test_422_is_fastapi_shape_without_input(self, client: httpx.AsyncClient) -> None:
        response = await client.post(LOGIN, json={"username": "alice", "password": SECRET})
        body = response.json()
        assert body["code"] == "validation_error"
        assert isinstance(body["detail"], list)
        for issue in body["detail"]:
            assert set(issue) == {"type", "loc", "msg"}
            assert isinstance(issue["loc"], list)

    async def test_query_validation_has_the_same_shape(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        response = await client.get(
            "/api/v1/auth/events?limit=abc", headers=bearer(pair["access_token"])
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        assert response.json()["detail"][0]["loc"] == ["query", "limit"]


class TestMalformedBodies:
    async def test_malformed_json(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN, content=b'{"username": "alice",', headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert assert_json_4xx(response)["detail"]

    @pytest.mark.parametrize("body", [b"", b"null", b"[]", b"42", b'"x"', b"{}"])
    async def test_not_an_object(self, body: bytes, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        assert_json_4xx(response)

    @pytest.mark.parametrize(
        "content_type",
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/xml",
        ],
    )
    async def test_wrong_content_type(self, content_type: str, client: httpx.AsyncClient) -> None:
        body = json.dumps({"username": "alice", "password": SECRET, "device_name": "P"})
        response = await client.post(LOGIN, content=body, headers={"content-type": content_type})
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    async def test_no_content_type(self, client: httpx.AsyncClient) -> None:
        body = json.dumps({"username": "alice", "password": SECRET, "device_name": "P"}).encode()
        request = client.build_request("POST", LOGIN, content=body)
        assert "content-type" not in request.headers
        response = await client.send(request)
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"username": "\xff\xfe", "password": "x", "device_name": "P"}',
            b"\xff\xfe\xfd",
            b'{"username": "al\xc3", "password": "' + SECRET.encode() + b'", "device_name": "P"}',
        ],
    )
    async def test_non_utf8_bytes(self, raw: bytes, client: httpx.AsyncClient) -> None:
        response = await client.post(
            LOGIN, content=raw, headers={"content-type": "application/json"}
        )
        assert_json_4xx(response)
        assert_no_secret(response, SECRET)

    @pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
    async def test_json_in_another_encoding_is_refused(
        self, encoding: str, client: httpx.AsyncClient, alice: Account, container: Container
    ) -> None:
        """The contract's bodies are UTF-8: one in UTF-16 or UTF-32, or with a byte order
        mark, is refused (json.loads would take it), even with the right password."""
        body = json.dumps({"username": "alice", "password": PASSWORD, "device_name": "P"})
        response = await client.post(
            LOGIN, content=body.encode(encoding), headers={"content-type": "application/json"}
        )
        assert_json_4xx(response)
        assert "access_token" not in response.text

    @pytest.mark.parametrize(
        "raw",
        [
            '{"username": "alice", "password": "wrong guess here!", "device_name": "P", '
            f'"password": "{PASSWORD}"}}',
            f'{{"username": "nobody", "username": "alice", "password": "{PASSWORD}", '
            '"device_name": "P"}',
        ],
    )
    async def test_a_key_twice_is_400(
        self, raw: str, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """A filter in front that keeps the first of two keys would see another request
        than the server, which would keep the last: neither is taken."""
        response = await client.post(
            LOGIN, content=raw.encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "bad_request"
        assert "appears twice" in response.json()["detail"]
        assert_no_secret(response, PASSWORD)

    async def test_a_key_twice_in_a_nested_object_is_400(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        body = {"username": "alice", "password": PASSWORD, "device_name": "P"}
        raw = json.dumps(body)[:-1] + ', "extra": {"a": 1, "a": 2}}'
        response = await client.post(
            LOGIN, content=raw.encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        # Unknown fields alone are ignored, as before.
        raw = json.dumps({**body, "extra": {"a": 1, "b": 2}})
        response = await client.post(
            LOGIN, content=raw.encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "GZIP ", "identity, gzip"])
    async def test_a_coded_body_is_415(
        self, coding: str, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """The server decodes no Content-Encoding: a body sent with one is refused, also when
        its bytes are plain JSON with the right password (a filter that decodes it would see
        another body than the server), and nothing is signed in."""
        raw = json.dumps({"username": "alice", "password": PASSWORD, "device_name": "P"})
        for content in (raw.encode(), gzip.compress(raw.encode())):
            response = await client.post(
                LOGIN,
                content=content,
                headers={"content-type": "application/json", "content-encoding": coding},
            )
            assert response.status_code == 415, response.text
            assert response.json() == {
                "detail": "Content-Encoding is not supported: send the body as it is",
                "code": "unsupported_media_type",
            }
        form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
        response = await client.post(
            "/api/v1/auth/token", data=form, headers={"content-encoding": coding}
        )
        assert response.status_code == 415, response.text
        pair = await tokens(client)
        listed = await client.get("/api/v1/auth/sessions", headers=bearer(pair["access_token"]))
        assert len(listed.json()) == 1

    async def test_identity_and_bodiless_requests_are_served(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """`identity` is no coding; and a request without a body is not refused for the
        header."""
        raw = json.dumps({"username": "alice", "password": PASSWORD, "device_name": "P"})
        response = await client.post(
            LOGIN,
            content=raw.encode(),
            headers={"content-type": "application/json", "content-encoding": "Identity"},
        )
        assert response.status_code == 200, response.text
        access = response.json()["access_token"]
        response = await client.get(
            "/api/v1/auth/me", headers={**bearer(access), "content-encoding": "gzip"}
        )
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        ("username", "password"),
        [
            ("al\x00ice", PASSWORD),
            ("alice", "correct horse\x00battery staple"),
            ("\x00", "\x00"),
            ("alice\x00", PASSWORD + "\x00"),
        ],
    )
    async def test_nul_bytes(
        self, username: str, password: str, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await login(client, username, password)
        body = assert_json_4xx(response)
        assert body["code"] in ("invalid_credentials", "validation_error")
        # The account is untouched and usable.
        assert (await login(client)).status_code == 200

    async def test_nul_bytes_in_device_fields(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        for device, fingerprint in (("Pixel\x008", None), ("Pixel 8", "fp\x00")):
            response = await login(client, device=device, fingerprint=fingerprint)
            assert response.status_code == 422
            assert_json_4xx(response)
        assert (await login(client)).status_code == 200

    @pytest.mark.parametrize(
        "form",
        [
            {"grant_type": "password", "username": "al\x00ice", "password": PASSWORD},
            {"grant_type": "password", "username": "alice", "password": "pw\x00" * 6},
            {
                "grant_type": "password",
                "username": "alice",
                "password": PASSWORD,
                "device_name": "Pixel\x008",
            },
            {"grant_type": "refresh_token", "refresh_token": "a.b\x00.c"},
            {"grant_type": "pass\x00word"},
        ],
    )
    async def test_nul_bytes_in_token_form(
        self, form: dict[str, str], client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await client.post("/api/v1/auth/token", data=form)
        assert_json_4xx(response)
        assert (await login(client)).status_code == 200

    async def test_nul_bytes_in_refresh_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post(REFRESH, json={"refresh_token": "a.b\x00.c"})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_refresh_token"

    async def test_nul_bytes_at_registration(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/register", json={"username": "al\x00ice", "password": "p\x00" * 10}
        )
        assert_json_4xx(response)

    async def test_ten_thousand_character_username(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        response = await login(client, "a" * 10_000, PASSWORD)
        assert_json_4xx(response)
        assert_no_secret(response, "a" * 200)


class TestRegistrationNulBytes:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"allow_registration": True}

    @pytest.mark.parametrize(
        ("username", "password"),
        [("al\x00ice", PASSWORD), ("alice", "correct horse\x00battery staple")],
    )
    async def test_nul_bytes_are_refused(
        self, username: str, password: str, client: httpx.AsyncClient
    ) -> None:
        response = await client.post(
            "/api/v1/auth/register", json={"username": username, "password": password}
        )
        assert response.status_code == 422
        assert_json_4xx(response)


async def chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    """A body sent with chunked transfer encoding, so without a Content-Length."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b" " * n
        sent += n


class TestBodyLimit:
    def _assert_413(self, response: httpx.Response) -> None:
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "payload_too_large"
        assert response.headers["x-content-type-options"] == "nosniff"

    async def test_over_64_kib_is_413(self, client: httpx.AsyncClient) -> None:
        body = {"username": "alice", "password": "x" * LIMIT, "device_name": "P"}
        self._assert_413(await client.post(LOGIN, json=body))

    async def test_one_byte_over_is_413(self, client: httpx.AsyncClient) -> None:
        content = b"{" + b" " * (LIMIT - 1)
        assert len(content) == LIMIT
        response = await client.post(
            LOGIN, content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422  # exactly the limit is read (and is bad JSON)
        response = await client.post(
            LOGIN, content=content + b" ", headers={"content-type": "application/json"}
        )
        self._assert_413(response)

    async def test_chunked_over_64_kib_is_413(self, client: httpx.AsyncClient) -> None:
        request = client.build_request(
            "POST", LOGIN, content=chunks(LIMIT + 1), headers={"content-type": "application/json"}
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        self._assert_413(await client.send(request))

    async def test_chunked_huge_body_is_413(self, client: httpx.AsyncClient) -> None:
        request = client.build_request(
            "POST",
            REFRESH,
            content=chunks(10 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        self._assert_413(await client.send(request))

    async def test_chunked_small_body_still_works(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        body = json.dumps({"username": "alice", "password": PASSWORD, "device_name": "P"}).encode()

        async def one_by_one() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 7):
                yield body[i : i + 7]

        request = client.build_request(
            "POST", LOGIN, content=one_by_one(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in request.headers
        response = await client.send(request)
        assert response.status_code == 200, response.text

    async def test_lying_content_length_is_refused(self, app: FastAPI) -> None:
        # A declared length over the limit is refused before anything is read.
        status: list[int] = []
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = _scope("POST", LOGIN, [(b"content-length", str(LIMIT + 1).encode())])
        await app(scope, receive, send)
        assert status == [413]
        assert not body_sent

    async def test_invalid_content_length_is_refused(self, client: httpx.AsyncClient) -> None:
        request = client.build_request("POST", LOGIN, content=b"{}")
        request.headers["content-length"] = "-5"
        response = await client.send(request)
        assert 400 <= response.status_code < 500


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("203.0.113.7", 40000),
        "server": ("testserver", 80),
    }


class TestOtherBadRequests:
    async def test_two_authorization_headers_are_400(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """Authorization holds one credential: with two, a gateway in front might check one
        and the server act on the other (it took the first). Neither is used."""
        access = (await tokens(client))["access_token"]
        for pair in (["Bearer " + access, "Bearer junk"], ["Bearer junk", "Bearer " + access]):
            headers = [("Authorization", value) for value in pair]
            response = await client.get("/api/v1/auth/me", headers=headers)
            assert response.status_code == 400, response.text
            assert response.json() == {
                "detail": "Repeated Authorization header", "code": "bad_request"
            }  # fmt: skip
        response = await client.get("/api/v1/auth/me", headers=bearer(access))
        assert response.status_code == 200

    async def test_a_trailing_slash_is_not_found_not_redirected(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        """No redirect built from the Host header, which a client following it with its
        POST would send the password to, in clear."""
        body = {"username": alice.username, "password": alice.password, "device_name": "x"}
        response = await client.post(
            "/api/v1/auth/login/", json=body, headers={"Host": "evil.example"}
        )
        assert response.status_code == 404, response.text
        assert "location" not in response.headers
        assert response.json()["code"] == "not_found"
        me = await client.get("/api/v1/auth/me/")
        assert (me.status_code, me.json()["code"]) == (404, "not_found")

    async def test_delete_session_not_a_uuid(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        pair = await tokens(client)
        for sid in ("not-a-uuid", "1", "%00", "..%2F..%2Fetc"):
            response = await client.delete(
                f"/api/v1/auth/sessions/{sid}", headers=bearer(pair["access_token"])
            )
            assert response.status_code == 404, (sid, response.text)
            assert response.json()["code"] == "not_found"

    async def test_sixteen_kb_authorization_header_via_asgi(
        self, app: FastAPI, container: Container
    ) -> None:
        messages: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            messages.append(message)

        header = b"Bearer " + b"A" * (16 * 1024)
        await app(_scope("GET", "/api/v1/auth/me", [(b"authorization", header)]), receive, send)
        start = messages[0]
        assert start["status"] == 401
        headers = dict(start["headers"])
        assert headers[b"www-authenticate"] == b'Bearer error="invalid_token"'
        body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
        assert body["code"] == "invalid_token"

    async def test_limit_query_parameter(self, client: httpx.AsyncClient, alice: Account) -> None:
        pair = await tokens(client)
        for limit in ("0", "-1", "201", "abc", "9" * 50):
            response = await client.get(
                f"/api/v1/auth/events?limit={limit}", headers=bearer(pair["access_token"])
            )
            assert_json_4xx(response)

    async def test_method_not_allowed_is_json(self, client: httpx.AsyncClient) -> None:
        response = await client.get(LOGIN)
        assert response.status_code == 405
        assert response.json()["code"] == "method_not_allowed"
        assert response.headers["allow"] == "POST"

    @pytest.mark.parametrize(
        ("path", "allow"),
        [
            ("/api/v1/auth/me", "GET, HEAD"),
            ("/health/live", "GET, HEAD"),
            ("/api/v1/auth/sessions/00000000-0000-0000-0000-000000000000", "DELETE"),
        ],
    )
    async def test_allow_names_every_method_of_the_path(
        self, client: httpx.AsyncClient, path: str, allow: str
    ) -> None:
        # RFC 9110 section 15.5.6: every method the resource takes, from all its routes.
        response = await client.put(path)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
