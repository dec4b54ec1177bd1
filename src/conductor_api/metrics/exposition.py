"""The metrics listener that `serve` runs beside its workers: `GET /metrics` on
METRICS_HOST:METRICS_PORT, summing the files every worker writes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the log."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found; metrics are at /metrics\n"]
        return app(environ, start_response)

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
