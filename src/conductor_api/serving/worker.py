"""One worker process: uvicorn on the listening socket its supervisor handed over.

Run as `python -m conductor_api.serving.worker FD PID` by `serving.supervisor` (PID its
own); each worker has
a socket of its own in one SO_REUSEPORT group, so the kernel spreads connections evenly."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from conductor_api.app import app_factory
from conductor_api.config import load_settings
from conductor_api.logs import configure_logging
from conductor_api.security.passwords import tune_allocator
from conductor_api.serving import STARTUP_FAILURE
from conductor_api.serving.protocol import Protocol

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Get SIGTERM when the supervisor (process `parent`) dies, even by SIGKILL: no orphan
    keeps serving. A supervisor that died before this call (while the worker was still
    importing) sends no signal, so then the worker stops here."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        ctypes.CDLL(libc_name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)


# The cyclic garbage collector's first threshold (CPython's default is 700 allocations):
# a sign-in allocates a few thousand tracked objects, almost all freed by reference counting
# before the next collection would look at them.
GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once the application has started: collect what startup left, then move every object
    that is still alive (modules, routes, compiled statements, the settings: about a hundred
    thousand) out of the collector's sight for good (`gc.freeze`). Without it every full
    collection walks all of them again, a pause of tens of milliseconds on the event loop
    for every request in flight; with it a collection sees only what requests made."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


def serving_app() -> FastAPI:
    """The application, its heap settled (`settle_heap`) once its startup is done."""
    app = app_factory()
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with started(app) as state:
            settle_heap()
            yield state

    app.router.lifespan_context = lifespan
    return app


def main(argv: list[str]) -> None:
    """Serve the application on the inherited socket until SIGTERM or SIGINT."""
    tune_allocator()  # before any thread starts (see its docstring)
    die_with_parent(int(argv[2]))
    sock = socket.socket(fileno=int(argv[1]))
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    config = uvicorn.Config(
        serving_app,
        factory=True,
        # httptools, answering a request it cannot parse in the API's error shape, and
        # closing a connection whose request does not arrive in time.
        http=Protocol.with_timeout(settings.request_timeout_seconds),
        # The client address is decided by TRUSTED_PROXIES in the app, not by uvicorn.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main(sys.argv)
