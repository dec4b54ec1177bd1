"""The metrics listener that `serve` runs beside its workers: `GET /metrics` on
METRICS_HOST:METRICS_PORT, summing the files every worker writes."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

StartResponse = Callable[..., Any]


# Every answer of the listener, as of the API's: no type sniffing.
_NOSNIFF = ("X-Content-Type-Options", "nosniff")


class _Unnamed(ServerHandler):
    """wsgiref's handler, without the `Server` header naming Python and its version."""

    server_software = ""


# How long a scrape may take to send its request: a connection that sends part of one and
# stalls is closed, so idle connections cannot pile up threads in the supervisor.
REQUEST_TIMEOUT_SECONDS = 10.0


class _Quiet(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_SECONDS
    # The answers of the HTTP layer (`send_error`) in plain text, not Python's HTML page.
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the log."""

    def handle(self) -> None:
        """`WSGIRequestHandler.handle`, with `_Unnamed` for the answer, and a deadline for
        the whole request: `timeout` bounds each read only, and a client sending a byte at
        a time would otherwise hold its thread for ever."""
        deadline = threading.Timer(self.timeout, self._cut)
        deadline.daemon = True
        deadline.start()
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # answered already (send_error)
                return
        finally:
            deadline.cancel()
        output: Any = self.wfile
        handler = _Unnamed(self.rfile, output, self.get_stderr(), self.get_environ())
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def _cut(self) -> None:
        """Past the deadline: the connection closed under the reads still waiting on it."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def send_header(self, keyword: str, value: str) -> None:
        """The answers to requests that cannot be parsed (`send_error`): no `Server`."""
        if keyword.lower() != "server":
            super().send_header(keyword, value)

    def end_headers(self) -> None:
        """...and `nosniff`, as every other answer."""
        self.send_header(*_NOSNIFF)
        super().end_headers()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stalled (the timeout) or went away: closed, with no traceback."""


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*headers, _NOSNIFF], *exc_info)

        if environ.get("PATH_INFO") != "/metrics":
            respond("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found; metrics are at /metrics\n"]
        return app(environ, respond)

    return wsgi


class _Declared:
    """The workers' summed figures, plus every declared metric that has none yet: the files
    hold samples only, so a labelled metric would be missing until its first one."""

    def __init__(self, directory: str, declared: list[Metric]) -> None:
        self.summed = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
        self.declared = declared

    def collect(self) -> Iterator[Metric]:
        """The summed families, then the declared ones without samples."""
        seen = set()
        for family in self.summed.collect():  # type: ignore[no-untyped-call]
            seen.add(family.name)
            yield family
        for family in self.declared:
            if family.name not in seen:
                yield Metric(family.name, family.documentation, family.type)


class MetricsListener:
    """A threaded HTTP server for the summed metrics of `directory`; `declared` are the
    metrics shown (without samples) before any worker has counted one."""

    def __init__(self, host: str, port: int, directory: str, declared: list[Metric]) -> None:
        registry = CollectorRegistry()
        registry.register(_Declared(directory, declared))
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_MetricsServer", (_Server,), {"address_family": family})
        self._server: WSGIServer = make_server(
            host, port, _only_metrics(make_wsgi_app(registry)), server_class, _Quiet
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
