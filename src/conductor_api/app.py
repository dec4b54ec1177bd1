"""The application factory: `create_app(settings)`; nothing is built at import."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route, compile_path

from conductor_api import __version__, api_docs
from conductor_api.auth.router import document_token_errors
from conductor_api.auth.router import router as auth_router
from conductor_api.clock import Clock
from conductor_api.config import Settings, load_settings
from conductor_api.container import Container
from conductor_api.db import ASYNCPG_LOST
from conductor_api.deps import document_dpop
from conductor_api.errors import AppError, ServiceUnavailable
from conductor_api.events.router import router as events_router
from conductor_api.keys.router import router as keys_router
from conductor_api.logs import configure_logging
from conductor_api.metrics.middleware import MetricsMiddleware
from conductor_api.mfa.router import router as mfa_router
from conductor_api.middleware import INTERNAL_ERROR, CorsMiddleware, EdgeMiddleware, GuardMiddleware
from conductor_api.passkeys.router import router as passkeys_router
from conductor_api.passkeys.router import well_known as well_known_router
from conductor_api.schemas import ErrorOut
from conductor_api.sessions.router import router as sessions_router

log = logging.getLogger("conductor_api")

# Errors that mean the database did not answer: a 503 with Retry-After, never a 500.
DATABASE_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    OSError,
    TimeoutError,
)
# SQLite result codes (the low byte) that mean the file cannot be used right now rather than
# a bad statement: BUSY, LOCKED, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_SQLITE_DOWN = frozenset({5, 6, 10, 11, 13, 14, 15, 26})
_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    400: "bad_request",
    415: "unsupported_media_type",
}


def _reason(error: BaseException) -> str:
    """What the driver said, for the operator (a full disk, a read-only file or database,
    a refused connection): the first line of its message, bounded. The statement and its
    parameters are not in it (they follow on later lines, and parameters are hidden)."""
    orig = getattr(error, "orig", None)
    cause = orig.__cause__ if orig is not None and orig.__cause__ is not None else orig
    text = str(cause if cause is not None else error).strip().splitlines()
    return f" ({text[0][:200]})" if text and text[0] else ""


def database_down(error: BaseException) -> bool:
    """Whether `error` means the database is unreachable or unusable (503), not a bug (500)."""
    if isinstance(error, DATABASE_DOWN):
        return True
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    # A connection that died in the middle of a statement surfaces as a bare DBAPIError
    # (asyncpg's ConnectionDoesNotExistError); SQLAlchemy flags it as a disconnect.
    if error.connection_invalidated:
        return True
    code = getattr(error.orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _SQLITE_DOWN:
        return True
    # asyncpg's own error behind SQLAlchemy's: a connection failure, the server starting
    # or shutting down (57P03, 57P01) or out of connection slots (53300).
    cause = error.orig.__cause__ if error.orig is not None else None
    return isinstance(cause, ASYNCPG_LOST)


# The order `Allow` lists methods in (RFC 9110 section 10.2.1 sets none; this is the usual).
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _methods_by_path(
    groups: list[tuple[str, Sequence[BaseRoute]]],
) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route's path (its prefix included) as a pattern, with its methods."""
    found = []
    for prefix, routes in groups:
        for route in routes:
            if isinstance(route, Route) and route.methods:  # FastAPI's APIRoute is one
                pattern, _, _ = compile_path(prefix + route.path)
                found.append((pattern, frozenset(route.methods)))
    return found


def _allowed(request: Request) -> str:
    """The `Allow` of a 405: the methods of every route of the path (RFC 9110 section
    15.5.6). Starlette names only the first route's, and a path can have several: GET and
    the HEAD route beside it, PATCH and DELETE of one passkey."""
    path = request.scope["path"]
    methods: set[str] = set()
    for pattern, route_methods in request.app.state.methods_by_path:
        if pattern.match(path):
            methods |= route_methods
    return ", ".join(m for m in _METHOD_ORDER if m in methods)


def _render(error: AppError) -> JSONResponse:
    return JSONResponse(
        {**error.extra, "detail": error.detail, "code": error.code},
        status_code=error.status,
        headers=error.headers,
    )


def _count_database_error(request: Request) -> None:
    container: Container | None = getattr(request.app.state, "container", None)
    if container is not None:
        container.metrics.database_error()


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, error: AppError) -> JSONResponse:
        if isinstance(error, ServiceUnavailable):
            _count_database_error(request)
        return _render(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 shape, minus `input`: it would echo a submitted password or token.
        errors = [
            {k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()
        ]
        return JSONResponse({"detail": errors, "code": "validation_error"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "http_error")
        headers = error.headers
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed(request)}
        return JSONResponse(
            {"detail": str(error.detail), "code": code},
            status_code=error.status_code,
            headers=headers,
        )

    for exc_type in (*DATABASE_DOWN, sa_exc.DBAPIError):

        @app.exception_handler(exc_type)
        async def database_error(request: Request, error: Exception) -> JSONResponse:
            if not database_down(error):
                # A bug, not an outage: the 500 handler below, which counts it. Not counted
                # here: Starlette runs this handler twice for an error it re-raises (where
                # the route raised, and again in its exception middleware).
                raise error
            _count_database_error(request)
            log.warning("database unavailable: %s%s", type(error).__name__, _reason(error))
            return _render(ServiceUnavailable())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, (*DATABASE_DOWN, sa_exc.DBAPIError)):
            _count_database_error(request)  # a request the database failed, as a 500
        log.error("unhandled error: %s", type(error).__name__, exc_info=error)
        return JSONResponse(INTERNAL_ERROR, status_code=500)


def _document_validation(schema: dict[str, Any]) -> dict[str, Any]:
    """A 422 only on operations where validation can fail: those with a body or a query
    parameter. FastAPI lists one on every route with a parameter (a path's id, read as free
    text and answered 404 when it names nothing), which a client generated from the
    document would then handle for nothing."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            parameters = operation.get("parameters", [])
            if "requestBody" in operation or any(p.get("in") == "query" for p in parameters):
                continue
            operation.get("responses", {}).pop("422", None)
    return schema


def _document_dpop(app: FastAPI) -> None:
    """The OpenAPI document, with the DPoP header on the operations behind a token, and a
    422 only where a request can fail validation (not on the token endpoint, whose
    validation failures are RFC 6749's 400)."""
    generate = app.openapi
    app.openapi = lambda: document_dpop(  # type: ignore[method-assign]
        document_token_errors(_document_validation(generate()))
    )


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """Build the application. The engine and every service are made in the lifespan."""
    settings = settings or load_settings()
    clock = clock or Clock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container = await Container.start(settings, clock)
        app.state.container = container
        try:
            yield
        finally:
            await container.close()

    app = FastAPI(
        title="Conductor API",
        version=__version__,
        description="Authentication for the Conductor Android app: JWT access and rotating "
        "refresh tokens, device sessions, brute-force protection.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks asked the global providers on every request
        # (3 µs each, a percent of an /auth/me); the service's metrics are Prometheus's.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # A path with a trailing slash is not one of the API's: 404, not a redirect built
        # from the Host header (always http://, so a client that follows a 307 with its
        # POST would send the password again in clear, to whatever host it named).
        redirect_slashes=False,
        # Made by conductor_api.api_docs, with their scripts pinned and checked.
        docs_url=None,
        redoc_url=None,
    )
    _install_handlers(app)
    routers = (
        (auth_router, "/api/v1"),
        (sessions_router, "/api/v1"),
        (events_router, "/api/v1"),
        (keys_router, ""),
        (mfa_router, "/api/v1"),
        (passkeys_router, "/api/v1"),
        (well_known_router, ""),
    )
    for router, prefix in routers:
        app.include_router(router, prefix=prefix)
    _document_dpop(app)
    api_docs.install(app)

    @app.get("/health/live", tags=["health"], summary="The process answers")
    async def live() -> dict[str, str]:
        """Always 200 while the process runs."""
        return {"status": "ok"}

    @app.get(
        "/health/ready",
        tags=["health"],
        summary="The database answers",
        responses={503: {"model": ErrorOut, "description": "The database does not answer"}},
    )
    async def ready(request: Request) -> Any:
        """200 when the database answers a query, 503 otherwise."""
        container: Container = request.app.state.container
        try:
            async with container.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:
            if not database_down(e):
                raise
            container.metrics.database_error()
            return _render(ServiceUnavailable())
        return {"status": "ok"}

    _answer_head_like_get(app, app.router.routes)
    for router, prefix in routers:
        _answer_head_like_get(app, router.routes, prefix)
    app.state.methods_by_path = _methods_by_path(
        [("", app.router.routes), *((prefix, r.routes) for r, prefix in routers)]
    )

    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CorsMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "DPoP", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "DPoP-Nonce", "WWW-Authenticate"],
        )
    app.add_middleware(EdgeMiddleware)
    # Added last, so outermost: the time it measures includes every other middleware.
    app.add_middleware(MetricsMiddleware)
    return app


def _answer_head_like_get(app: FastAPI, routes: Sequence[BaseRoute], prefix: str = "") -> None:
    """HEAD on every GET endpoint of `routes`, answered as GET is (RFC 9110 section 9.3.2:
    the same status and headers; the server sends no body). Load balancers and uptime
    checkers often probe with it. Kept out of the API's description, where it would only
    repeat GET."""
    for route in list(routes):
        if isinstance(route, APIRoute) and "GET" in (route.methods or ()):
            app.router.add_api_route(
                prefix + route.path,
                route.endpoint,
                methods=["HEAD"],
                include_in_schema=False,
                dependencies=route.dependencies,
                response_model=route.response_model,
                status_code=route.status_code,
                response_class=route.response_class,
                route_class_override=type(route),
            )


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory` (each worker builds its own app)."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
