"""Two pure-ASGI middlewares for what every response needs: a request id, security headers
and the access log line (EdgeMiddleware, outermost), and the Host check, the body-size limit
(enforced before anything parses the body) and the last-resort 500 (GuardMiddleware, inside
CORS)."""

from __future__ import annotations

import json
import re
import secrets
import time

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conductor_api.errors import PayloadTooLarge
from conductor_api.logs import ACCESS, REQUEST_ID
from conductor_api.schemas import NO_STORE

# fullmatch, not match with `$`: `$` also matches before a trailing newline.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# RFC 9112 section 3.2 / RFC 3986: a Host is a registered name or an IP literal, and a port.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
_BAD_HOST = {"detail": "Missing, repeated or invalid Host header", "code": "bad_request"}
_TWO_CREDENTIALS = {"detail": "Repeated Authorization header", "code": "bad_request"}


# The body of a 500, also rendered by the app's last-resort handler.
INTERNAL_ERROR = {"detail": "Internal error", "code": "internal_error"}


def _json_error(status: int, content: dict[str, str]) -> tuple[Message, Message]:
    body = json.dumps(content).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def _too_large() -> tuple[Message, Message]:
    content = {"detail": PayloadTooLarge.detail, "code": PayloadTooLarge.code}
    return _json_error(PayloadTooLarge.status, content)


# Paths whose every answer holds or concerns a credential: never stored by a cache, errors
# included (a 403 mfa_required holds an mfa_token; a refusal is no more cacheable).
NO_STORE_PATHS = frozenset(
    "/api/v1/auth/" + path for path in ("login", "token", "refresh", "mfa/verify", "passkeys/login")
)
_NO_STORE = tuple((name.lower().encode(), value.encode()) for name, value in NO_STORE.items())


def _add_no_store(headers: list[tuple[bytes, bytes]]) -> None:
    """`Cache-Control: no-store` (and `Pragma: no-cache`), unless the answer has its own."""
    if not any(name.lower() == b"cache-control" for name, _ in headers):
        headers.extend(_NO_STORE)


# Set in the scope of a request whose client went away before its body ended; the metrics
# count no response for it (none was sent), and the access log says 499, as nginx does.
CLIENT_GONE = "conductor.client_gone"


class ClientGone(Exception):
    """The connection closed, or broke its framing, before the request body ended."""


class EdgeMiddleware:
    """The outermost of the two: a request id, `nosniff`, `no-store` on the sign-in paths, a
    DPoP nonce, and one log line per request, on every answer (CORS's own included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = b""
        length: int | None = None
        dpop = False
        hosts = authorizations = 0
        valid_host = True
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SAFE_REQUEST_ID.fullmatch(value.decode("latin-1")):
                request_id = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"authorization":
                authorizations += 1
                # A DPoP token without its proof: the answer's nonce lets the next one be made.
                dpop = dpop or (value[:4].lower() == b"dpop" and value[4:5] in (b" ", b"\t"))
            elif name == b"dpop":
                dpop = True
            elif name == b"host":
                hosts += 1
                valid_host = valid_host and _HOST.fullmatch(value) is not None
        # RFC 9112 section 3.2: an HTTP/1.1 request has exactly one valid Host (the URL a
        # DPoP proof is compared to is built from it); HTTP/1.0 may have none.
        bad_host = hosts > 1 or not valid_host or (hosts == 0 and scope["http_version"] == "1.1")
        # Authorization holds one credential (RFC 9110 11.6.2): of two, a gateway in front
        # might check one and the server act on the other.
        scope[_HEAD] = (length, bad_host, authorizations > 1)
        if not request_id:
            request_id = secrets.token_hex(16).encode()
        context = REQUEST_ID.set(request_id.decode())
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"x-request-id", request_id))
                if dpop:
                    _add_dpop_nonce(scope, headers)
                # A 404 there is passkeys' while they are off: the answer of an absent path.
                if scope["path"] in NO_STORE_PATHS and status != 404:
                    _add_no_store(headers)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if scope.get(CLIENT_GONE):
                status = 499
            # The path as sent, still percent-encoded: decoded, `%20200%20` would put a
            # space and a forged status into the line's text.
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if raw else scope["path"]
            ACCESS.info(
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "request_id": request_id.decode(),
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - began) * 1000, 2),
                },
            )
            REQUEST_ID.reset(context)


# What EdgeMiddleware read of the request head, for GuardMiddleware: (Content-Length, or
# None when absent and -1 when invalid; whether the Host header is missing or bad; whether
# Authorization came twice).
_HEAD = "conductor.head"


class GuardMiddleware:
    """The inner of the two, inside CORS (so that browsers can read its answers): 400 for a
    bad Host, 413 for an oversized body (enforced before anything parses it), and the JSON
    500 for an error nothing else answered."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, bad_host, two_credentials = scope[_HEAD]
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if bad_host or two_credentials:
            for message in _json_error(400, _BAD_HOST if bad_host else _TWO_CREDENTIALS):
                await send(message)
            return
        if length is not None and (length < 0 or length > self.max_body_bytes):
            await self._refuse(send)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            # No length given (chunked): read up to the limit first, then replay.
            try:
                body = await self._read_limited(receive)
            except ClientGone:
                # The body never ended (RFC 9112 section 8: a chunked message without its
                # last chunk is incomplete): nothing is run, and nothing can be sent.
                scope[CLIENT_GONE] = True
                return
            if body is None:
                await self._refuse(send)
                return
            receive = _replay(body, receive)
        elif length:
            receive = _watching(scope, receive)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Answered here, not by Starlette's last-resort handler: that one sits outside
            # every middleware, and its 500 would lack nosniff, the request id and CORS. It
            # still runs (and logs the error); it sends nothing once a response has started.
            if not started:
                for message in _json_error(500, INTERNAL_ERROR):
                    await send(message)
            raise

    async def _read_limited(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _refuse(send: Send) -> None:
        start, body = _too_large()
        await send(start)
        await send(body)


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's error shape (JSON with
    `detail` and `code` `cors_refused`), and an allowed one with 204 and no body, instead of
    plain text ("OK")."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        if response.status_code != 400:
            return Response(status_code=204, headers=headers)
        content = {"detail": bytes(response.body).decode(), "code": "cors_refused"}
        return JSONResponse(content, status_code=400, headers=headers)


def _add_dpop_nonce(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    """Every answer to a request with a DPoP proof carries a current server nonce (RFC 9449
    section 8), so a client can put one in its next proof before it is asked to."""
    container = getattr(getattr(scope.get("app"), "state", None), "container", None)
    if container is None or any(name == b"dpop-nonce" for name, _ in headers):
        return
    nonce = container.dpop.nonces.current(container.clock.now().timestamp())
    headers.append((b"dpop-nonce", nonce.encode()))


def _watching(scope: Scope, receive: Receive) -> Receive:
    """`receive`, marking the request CLIENT_GONE when the connection ends before its body
    did (a Content-Length not met): what the framework then answers reaches no one, so the
    log says 499 and the metrics count nothing."""
    ended = False

    async def watched() -> Message:
        nonlocal ended
        message = await receive()
        if message["type"] == "http.request":
            ended = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not ended:
            scope[CLIENT_GONE] = True
        return message

    return watched


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
