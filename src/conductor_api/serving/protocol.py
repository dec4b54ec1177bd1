"""uvicorn's HTTP protocol (httptools), answering a request it cannot parse in the API's shape,
and closing connections whose requests stall.

uvicorn answers such a request itself, before any application code runs: `400`, `text/plain`,
no `X-Content-Type-Options`. The contract wants every error body in JSON with a `code` and
every response with `nosniff`, so this protocol writes that 400 instead. uvicorn also waits
for a request's bytes for ever (only an idle keep-alive connection is closed): a client that
opens connections and sends half a request on each could hold every connection a worker can
have. Here each request must arrive whole within REQUEST_TIMEOUT_SECONDS. It also writes
for ever to a client that has stopped reading (the answer waits in the connection's buffer
and the request's task waits on it); here a client that reads nothing of a pending answer
for REQUEST_TIMEOUT_SECONDS is dropped."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from conductor_api.logs import ACCESS
from conductor_api.metrics.middleware import UNMATCHED

_BODY = json.dumps({"detail": "Invalid HTTP request", "code": "bad_request"}).encode()
_HEADERS_BODY = json.dumps(
    {"detail": "Request headers too large", "code": "headers_too_large"}
).encode()
_CODING_BODY = json.dumps(
    {"detail": "Transfer coding not implemented", "code": "not_implemented"}
).encode()
_TIMEOUT_BODY = json.dumps(
    {"detail": "The request did not arrive in time", "code": "request_timeout"}
).encode()
# The request line and headers of one request, at most: far above what a client sends (the
# app's are a few hundred bytes; nginx's default buffers hold 8 KiB a line), and a bound on
# what one connection can make a worker hold before the request is even routed.
MAX_HEAD_BYTES = 64 * 1024


def _application(app: Any) -> Any:
    """The application under uvicorn's wrappers (each keeps the one it wraps as `app`)."""
    while not hasattr(app, "state") and hasattr(app, "app"):
        app = app.app
    return app


class Protocol(HttpToolsProtocol):
    """httptools, with the 400 for an unparsable request as JSON with `nosniff`, counted in
    the metrics as every answered request is (method `other`, route `unmatched`); and a
    request whose line and headers pass `MAX_HEAD_BYTES` refused the same way, with 431."""

    # Bytes received while a request's head was open: an upper bound of its size (the
    # chunk that ends the head may carry body too), counted without a call per header.
    _in_head = True
    _head_received = 0
    _head_too_large = False
    # A Transfer-Encoding other than `chunked` alone (RFC 9112 section 6.1: 501).
    _unknown_coding = False
    # Seconds a request may take to arrive whole (REQUEST_TIMEOUT_SECONDS; see `with_timeout`),
    # and the timer that enforces it while one is arriving.
    request_timeout = 30.0
    _arrival: asyncio.TimerHandle | None = None
    # Set while the transport's buffer is over its high-water mark (the client reads
    # nothing of what is pending): drops the connection after REQUEST_TIMEOUT_SECONDS.
    _stalled: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[Protocol]:
        """This protocol with REQUEST_TIMEOUT_SECONDS set (uvicorn makes it from the class)."""
        return type(cls.__name__, (cls,), {"request_timeout": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request must begin and end in time too."""
        super().connection_made(transport)
        self._expect_arrival()

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: nothing more to wait for."""
        self._arrived()
        self._reading_again()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client reads slower than the answer is written: if it reads none of what is
        pending for REQUEST_TIMEOUT_SECONDS, it has stopped reading."""
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.request_timeout, self._reader_gone)

    def resume_writing(self) -> None:
        """The client read what was pending: the clock stops."""
        self._reading_again()
        super().resume_writing()

    def _reading_again(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _reader_gone(self) -> None:
        """Dropped at once: a close would wait to send the buffer it does not read."""
        self._stalled = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()

    def on_message_begin(self) -> None:
        """A request begins (its first byte, or the next one on a kept-alive connection)."""
        self._expect_arrival()
        super().on_message_begin()

    def _expect_arrival(self) -> None:
        if self._arrival is None:
            self._arrival = self.loop.call_later(self.request_timeout, self._timed_out)

    def _arrived(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None

    def _timed_out(self) -> None:
        """The request did not arrive whole in time: a head begun gets a 408 (nothing of it
        reached the application); a connection that sent nothing, or a body that stalled
        (the application sees the client gone, and runs nothing), is closed."""
        self._arrival = None
        if self.transport.is_closing():
            return
        previous_answered = self.cycle is None or self.cycle.response_complete
        if self._in_head and self._head_received and previous_answered:
            self._refuse(b"408 Request Timeout", 408, _TIMEOUT_BODY)
        else:
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header, without the trailing spaces and tabs httptools leaves on its value:
        RFC 9110 5.5, they are not part of it (leading ones httptools drops itself). Every
        reader of a header (Host, DPoP, X-Request-ID, ...) then sees the value alone."""
        value = value.rstrip(b" \t")
        if name.lower() == b"transfer-encoding" and value.lower() != b"chunked":
            # The parser reads `gzip, chunked` or `identity, chunked` as chunked, and the
            # body would reach the application still coded (or the coding ignored).
            self._unknown_coding = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is whole: what follows is the body (bounded by `GuardMiddleware`). Its
        exact size is summed only when the bound says it may be over `MAX_HEAD_BYTES`.

        Refused here (raised inside the parser's callback: the parser stops, and uvicorn
        answers its parse error with `send_400_response`, which tells them apart): a head
        over `MAX_HEAD_BYTES` (431); a transfer coding other than chunked (501); a version
        other than HTTP/1.0 and 1.1 (400): a request line with none (HTTP/0.9) or with 2.0
        would be served as 1.1, without the Host that 1.1 requires."""
        self._in_head = False
        if self._head_received > MAX_HEAD_BYTES and self._head_size() > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise ValueError("request head too large")
        if self._unknown_coding:
            raise ValueError("transfer coding not implemented")
        if self.parser.get_http_version() not in ("1.1", "1.0"):
            raise ValueError("HTTP version not supported")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request is whole: the next bytes begin the next one's head."""
        self._arrived()
        self._in_head, self._head_received = True, 0
        super().on_message_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def data_received(self, data: bytes) -> None:
        """Bytes from the client; a head still incomplete past `MAX_HEAD_BYTES` (a line that
        never ends) is refused before the parser holds more of it."""
        if self._in_head:
            self._head_received += len(data)
            # Any byte starts the clock, also the blank lines a parser skips before a request
            # line (they begin no message, yet end uvicorn's keep-alive timeout).
            self._expect_arrival()
        super().data_received(data)
        too_large = self._in_head and self._head_received > MAX_HEAD_BYTES
        if too_large and not self.transport.is_closing():
            self._refuse(b"431 Request Header Fields Too Large", 431, _HEADERS_BODY)

    def send_400_response(self, msg: str) -> None:
        """The connection's last answer: a malformed request line, header or body framing
        (400), or what `on_headers_complete` refuses."""
        if self._head_too_large:
            self._refuse(b"431 Request Header Fields Too Large", 431, _HEADERS_BODY)
        elif self._unknown_coding:
            self._refuse(b"501 Not Implemented", 501, _CODING_BODY)
        else:
            self._refuse(b"400 Bad Request", 400, _BODY)

    def _refuse(self, status_line: bytes, status: int, body: bytes) -> None:
        # The container (and its metrics) exists once the application's lifespan has run.
        container = getattr(getattr(_application(self.app), "state", None), "container", None)
        if container is not None:
            container.metrics.observe_request("", UNMATCHED, status, 0.0)
        # Its line in the access log, as for every answer, so that the id a client reports
        # finds it (the method and path may not have been read).
        request_id = uuid.uuid4().hex
        ACCESS.info(
            "- - %d", status,
            extra={"request_id": request_id, "method": "-", "path": "-", "status": status},
        )  # fmt: skip
        content = [b"HTTP/1.1 " + status_line + b"\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"x-content-type-options: nosniff\r\n",
                b"x-request-id: " + request_id.encode() + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
