"""HTTP endpoints for signing in and out, tokens, the current user and passwords."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from conductor_api.auth import flows
from conductor_api.auth.schemas import (
    NO_CONTROL,
    NO_NUL,
    LoginRequest,
    OAuthErrorOut,
    OAuthMfaRequiredOut,
    PasswordChange,
    RefreshRequest,
    RegisterRequest,
    TokenPairOut,
    UserOut,
)
from conductor_api.deps import (
    DPOP_TOKEN_REQUEST,
    Client,
    ContainerDep,
    CurrentPrincipal,
    DbSession,
    DPoPProof,
)
from conductor_api.errors import AppError, InvalidDPoPProof, MfaRequired
from conductor_api.mfa.schemas import MfaRequiredOut
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import NO_STORE, NO_STORE_DOC, ErrorOut, error_responses
from conductor_api.users import service as users
from conductor_api.values import TokenPair

router = APIRouter(prefix="/auth", tags=["auth"], route_class=StrictJSONRoute)


def _token_response(pair: TokenPair) -> Response:
    # Serialized by pydantic-core in one step: token responses are on the hot path.
    # A refresh has no device token, and its body no such field.
    body = TokenPairOut.of(pair).model_dump_json(exclude_none=True)
    return Response(body, media_type="application/json", headers=NO_STORE)


@router.post(
    "/login",
    response_model=TokenPairOut,
    responses={
        **NO_STORE_DOC,
        **error_responses(400, 401, 403, 413, 422, 429, 503),
        403: {
            "model": MfaRequiredOut | ErrorOut,
            "description": "mfa_required (continue at /auth/mfa/verify) or account_disabled",
        },
    },
    summary="Sign a device in",
    openapi_extra=DPOP_TOKEN_REQUEST,
)
async def login(body: LoginRequest, c: ContainerDep, client: Client, proof: DPoPProof) -> Response:
    """Check the password and start a session for this device (bound to the key of a
    `DPoP` proof, when the request has one)."""
    with c.metrics.counting_login("password"):
        pair = await flows.login(
            c, username=body.username, password=body.password, device_name=body.device_name,
            fingerprint=body.device_fingerprint, client=client, device_token=body.device_token,
            proof=proof,
        )  # fmt: skip
    return _token_response(pair)


# Errors of the grants that RFC 6749 section 5.2 answers with 400 invalid_grant.
_GRANT_ERRORS = {
    "invalid_credentials",
    "invalid_refresh_token",
    "refresh_token_reused",
    "account_disabled",
}


def _oauth_error(
    error: str,
    description: str,
    code: str,
    status_code: int = 400,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    description = _rfc6749_text(description)
    body = OAuthErrorOut(error=error, error_description=description, detail=description, code=code)
    return JSONResponse(
        {**body.model_dump(), **extra},
        status_code=status_code,
        headers={**NO_STORE, **(headers or {})},
    )


def _rfc6749_text(text: str) -> str:
    """`text` in the characters RFC 6749 section 5.2 allows in an `error_description`
    (printable ASCII but `"` and `\\`): those two dropped, anything else a `?`."""
    return "".join(("?" if not " " <= ch <= "~" else ch) for ch in text if ch not in '"\\')


# The form's patterns in words: an `error_description` may not hold a backslash (RFC 6749
# section 5.2), so pydantic's "should match pattern '^[^\x00]*$'" would lose its meaning.
_PATTERNS_IN_WORDS = {
    NO_NUL: "must not contain a NUL character",
    NO_CONTROL: "must not contain control characters",
}


def _described(error: RequestValidationError) -> str:
    """A validation failure as an `error_description`: each field and what is wrong with it
    (never the value)."""
    parts = []
    for each in error.errors():
        field = ".".join(str(part) for part in each.get("loc", ())[1:]) or "form"
        pattern = str((each.get("ctx") or {}).get("pattern"))
        message = _PATTERNS_IN_WORDS.get(pattern) or each.get("msg", "invalid")
        parts.append(f"{field}: {message}")
    return "; ".join(parts) or "the form is invalid"


class _OAuthRoute(StrictJSONRoute):
    """The token endpoint's route: what is refused before the endpoint runs keeps RFC 6749
    section 5.2's shape too, as 400 `invalid_request`: a form that cannot be read (too many
    fields, broken multipart), or a field that fails validation (too long, a NUL; `code`
    `validation_error`, as the JSON endpoints would give). A coded body is the HTTP layer's
    415, as at every route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint's handler, answering its 400s and 422s as `invalid_request`."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                return _oauth_error("invalid_request", _described(e), "validation_error")
            except StarletteHTTPException as e:
                if e.status_code != status.HTTP_400_BAD_REQUEST:
                    raise
                return _oauth_error("invalid_request", str(e.detail), "invalid_request")

        return route


async def token(
    request: Request,
    c: ContainerDep,
    client: Client,
    proof: DPoPProof,
    grant_type: Annotated[str, Form()] = "",
    username: Annotated[str, Form(max_length=users.USERNAME_MAX, pattern=NO_NUL)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    device_name: Annotated[str, Form(max_length=100, pattern=NO_CONTROL)] = "",
    refresh_token: Annotated[str, Form()] = "",
    scope: Annotated[str, Form()] = "",
    device_token: Annotated[str, Form()] = "",
) -> Response:
    """The same grants as login and refresh, in the OAuth 2.0 form encoding."""
    # RFC 6749 section 3.2: no parameter may be given twice (the form is parsed already).
    form = await request.form()
    repeated = sorted({key for key in form if len(form.getlist(key)) > 1})
    if repeated:
        # The names are the client's own: a few, shortened, are enough to tell which.
        names = ", ".join(name[:40] for name in repeated[:5])
        return _oauth_error("invalid_request", f"given more than once: {names}", "invalid_request")
    if not grant_type:
        # RFC 6749 section 5.2: a missing required parameter is invalid_request.
        return _oauth_error("invalid_request", "grant_type is required", "invalid_request")
    try:
        if grant_type == "password":
            if not username or not password:
                return _oauth_error(
                    "invalid_request", "username and password are required", "invalid_request"
                )
            with c.metrics.counting_login("password"):
                pair = await flows.login(
                    c, username=username, password=password,
                    device_name=device_name or "OAuth client", fingerprint=None, client=client,
                    device_token=device_token or None, proof=proof,
                )  # fmt: skip
        elif grant_type == "refresh_token":
            if not refresh_token:
                return _oauth_error(
                    "invalid_request", "refresh_token is required", "invalid_request"
                )
            with c.metrics.counting_refresh():
                pair = c.metrics.refreshed(await flows.refresh(c, refresh_token, client, proof))
        else:
            return _oauth_error(
                "unsupported_grant_type", "grant_type must be password or refresh_token",
                "unsupported_grant_type",
            )  # fmt: skip
    except MfaRequired as e:
        # Not an RFC 6749 error: the client continues at /auth/mfa/verify.
        return _oauth_error("mfa_required", e.detail, e.code, 403, **e.extra)
    except InvalidDPoPProof as e:
        # RFC 9449 sections 5 and 8: `error` is invalid_dpop_proof or use_dpop_nonce.
        return _oauth_error(e.code, e.detail, e.code, 400, e.headers)
    except AppError as e:
        if e.code in _GRANT_ERRORS:
            return _oauth_error("invalid_grant", e.detail, e.code)
        raise
    return _token_response(pair)


def document_token_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """The token endpoint answers validation failures as 400 `invalid_request` (RFC 6749
    section 5.2), not 422: FastAPI's 422 is taken off its operation."""
    for path, operations in schema.get("paths", {}).items():
        if path.endswith("/auth/token"):
            operations.get("post", {}).get("responses", {}).pop("422", None)
    return schema


router.add_api_route(
    "/token",
    token,
    methods=["POST"],
    response_model=TokenPairOut,
    responses={
        **NO_STORE_DOC,
        400: {"model": OAuthErrorOut, "description": "RFC 6749 section 5.2 error"},
        403: {"model": OAuthMfaRequiredOut, "description": "mfa_required, with mfa_token"},
        **error_responses(413, 429, 503),
    },
    summary="OAuth 2.0 token endpoint (password and refresh_token grants)",
    openapi_extra=DPOP_TOKEN_REQUEST,
    route_class_override=_OAuthRoute,
)


@router.post(
    "/refresh",
    response_model=TokenPairOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 413, 422, 429, 503)},
    summary="Rotate a refresh token",
    openapi_extra=DPOP_TOKEN_REQUEST,
)
async def refresh(
    body: RefreshRequest, c: ContainerDep, client: Client, proof: DPoPProof
) -> Response:
    """A new token pair for the same session; the presented refresh token is spent. A bound
    session's refresh needs a `DPoP` proof by its key."""
    with c.metrics.counting_refresh():
        pair = c.metrics.refreshed(await flows.refresh(c, body.refresh_token, client, proof))
    return _token_response(pair)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 503),
    summary="Sign this device out",
)
async def logout(
    principal: CurrentPrincipal, db: DbSession, c: ContainerDep, client: Client
) -> Response:
    """Revoke the caller's session."""
    await flows.logout(db, c, principal, client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me", response_model=UserOut, responses=error_responses(401, 503), summary="The current user"
)
async def me(principal: CurrentPrincipal) -> Response:
    """Who the bearer token belongs to."""
    body = UserOut(
        id=principal.user_id,
        username=principal.username,
        created_at=principal.created_at,
        is_active=principal.is_active,
    )
    # Serialized here rather than re-validated by FastAPI: this is the hot path.
    return Response(body.model_dump_json(), media_type="application/json")


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 401, 403, 413, 422, 429, 503),
    summary="Change the password",
)
async def change_password(
    body: PasswordChange, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """Set a new password; every other session is revoked."""
    await flows.change_password(
        c, principal, body.current_password, body.new_password, client, code=body.code
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class _RegistrationRoute(StrictJSONRoute):
    """While registration is off, the path answers 404 exactly as an unknown path does,
    whatever the method or body: FastAPI would otherwise validate the body first, and a 422
    (or a 405 for another method) would tell that the path exists."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """404 unless ALLOW_REGISTRATION; else the endpoint."""
        if not scope["app"].state.container.settings.allow_registration:
            raise StarletteHTTPException(status.HTTP_404_NOT_FOUND)
        await super().handle(scope, receive, send)


async def register(
    body: RegisterRequest, db: DbSession, c: ContainerDep, client: Client
) -> UserOut:
    """Create an account; 404 unless registration is enabled."""
    user = await c.signin.register(db, body.username, body.password, client)
    return UserOut(id=user.id, username=user.username, created_at=user.created_at, is_active=True)


router.add_api_route(
    "/register",
    register,
    methods=["POST"],
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=error_responses(400, 404, 409, 413, 422, 429, 503),
    summary="Create an account (only with ALLOW_REGISTRATION=true)",
    route_class_override=_RegistrationRoute,
)
