"""Counts and times every HTTP request by its route template."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conductor_api.metrics.service import Metrics
from conductor_api.middleware import CLIENT_GONE

UNMATCHED = "unmatched"


def _metrics(scope: Scope) -> Metrics | None:
    # The container (and its metrics) exists once the lifespan has run.
    container: Any = getattr(scope["app"].state, "container", None)
    return container.metrics if container is not None else None


def route_of(scope: Scope, status: int) -> str:
    """The matched route's template (`/api/v1/auth/sessions/{session_id}`), never the raw
    path, which would hold ids and make one series per request."""
    # FastAPI keeps included routers whole; the route it ran is then known with its full
    # path (the include prefix added) only from its routing context.
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if isinstance(template, str):
        return template
    route = scope.get("route")
    if route is not None:
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else UNMATCHED
    if status != 404:
        # Refused before routing (a 413 by the edge middleware), or a plain Starlette route
        # (the interactive docs), which leaves no trace in the scope: find the route.
        method = "get" if scope["method"] == "HEAD" else scope["method"].lower()
        matching = [t for t in _templates(scope["app"]) if t.pattern.match(scope["path"])]
        # The route that would have run: one that takes the method, a literal path before
        # a parameter that would also match it (`/passkeys/login`, not `/{passkey_id}`).
        if matching:
            return min(matching, key=lambda t: (method not in t.methods, t.params)).path
    return UNMATCHED


@dataclass(frozen=True, slots=True)
class _Template:
    pattern: re.Pattern[str]
    path: str
    methods: frozenset[str]
    params: int


def _templates(app: Any) -> list[_Template]:
    """The documented paths (with their methods) and the application's own plain routes
    (`/docs`, `/openapi.json`) as patterns, computed once per application."""
    cached: list[_Template] | None = getattr(app.state, "route_templates", None)
    if cached is None:
        paths: dict[str, frozenset[str]] = {
            path: frozenset(operations) for path, operations in app.openapi()["paths"].items()
        }
        for r in app.routes:
            if isinstance(r, Route) and r.path not in paths:
                paths[r.path] = frozenset(m.lower() for m in r.methods or ())
        cached = [
            _Template(compile_path(path)[0], path, methods, path.count("{"))
            for path, methods in paths.items()
        ]
        app.state.route_templates = cached
    return cached


class MetricsMiddleware:
    """The outermost middleware: its time covers everything the app does for a request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = _metrics(scope) if scope["type"] == "http" else None
        if metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        counted = False

        def count() -> None:
            nonlocal counted
            counted = True
            if scope.get(CLIENT_GONE):
                return  # nothing reached the client (see `middleware.CLIENT_GONE`)
            metrics.observe_request(
                scope["method"], route_of(scope, status), status, time.perf_counter() - started
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # Counted before the last byte leaves: a scrape that follows the answer
                # always includes it.
                count()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not counted:
                # An error the server's last handler answers outside this middleware (500),
                # or a client that went away during the response.
                count()
