"""`Annotated` dependency aliases shared by the routers.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker thread,
and those hand-offs were most of the cost of an authenticated request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.client import client_info, request_url
from conductor_api.auth.principal import Principal
from conductor_api.config import Settings
from conductor_api.container import Container
from conductor_api.errors import InvalidToken
from conductor_api.security.dpop import DPoPError, Proof, WrongKey
from conductor_api.security.tokens import Claims, UnknownSigningKey
from conductor_api.sessions import service as sessions
from conductor_api.values import ClientInfo

# auto_error=False: a missing token is answered by `current_principal` in the contract's shape.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


def _dpop_header(description: str) -> dict[str, Any]:
    return {
        "name": "DPoP",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


# The DPoP header in the API's description only, not as FastAPI `Header` parameters: those
# cost about 0.1 ms per request (measured on /auth/me, a third of its CPU). The proofs are
# read from the request itself, every copy of the header (two proofs are refused).
DPOP_TOKEN_REQUEST: dict[str, Any] = {
    "parameters": [
        _dpop_header(
            "Optional DPoP proof (RFC 9449) for this method and URL: the session and its "
            'tokens are bound to its key (`token_type` "DPoP"); a bound session\'s refresh '
            "needs a proof by that key"
        )
    ]
}
_DPOP_RESOURCE = _dpop_header(
    "With `Authorization: DPoP <access token>`: a DPoP proof (RFC 9449) by the token's key, "
    "for this method and URL, with `ath` the token's hash"
)


def document_dpop(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare the DPoP header on every operation behind an access token (one with a
    `security` requirement), once; the token requests declare theirs (`DPOP_TOKEN_REQUEST`)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security"):
                parameters = operation.setdefault("parameters", [])
                if _DPOP_RESOURCE not in parameters:
                    parameters.append(_DPOP_RESOURCE)
    return schema


async def get_container(request: Request) -> Container:
    """The application's services."""
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


async def get_settings(container: ContainerDep) -> Settings:
    """The validated settings."""
    return container.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_db(container: ContainerDep) -> AsyncIterator[AsyncSession]:
    """The request's database session: it owns the transaction, committed on success."""
    async with container.sessionmaker.begin() as session:
        yield session


# scope="function": commit before the response is sent, so that a 204 for a logout means
# the revocation is already visible to the next request on any worker.
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]


async def get_client(request: Request, container: ContainerDep) -> ClientInfo:
    """The caller's address and user agent."""
    return client_info(request, container.settings.trusted_proxies)


Client = Annotated[ClientInfo, Depends(get_client)]


async def _claims(container: Container, token: str) -> Claims:
    try:
        return container.tokens.decode_access(token, container.clock.now())
    except UnknownSigningKey as e:
        # A key published a moment ago by another instance: re-read the set (rate-limited,
        # so a stream of forged kids costs at most one read a second) and try once more.
        if container.keys is None or not await container.keys.reload_for_unknown_kid(e.kid):
            raise InvalidToken() from e
        return container.tokens.decode_access(token, container.clock.now())


async def _dpop_claims(request: Request, container: Container, token: str) -> Claims:
    """`Authorization: DPoP <token>` (RFC 9449 section 7): a bound token and a proof by its
    key for this request (`ath` its hash), spent once. A faulty proof is
    `invalid_dpop_proof`; an unbound token or a proof by another key, `invalid_token`."""
    try:
        claims = await _claims(container, token)
    except InvalidToken as e:
        raise InvalidToken(dpop=True) from e
    if not claims.jkt:
        raise InvalidToken("This token is not bound to a DPoP key: send it as Bearer", dpop=True)
    now = container.clock.now().timestamp()
    try:
        await container.dpop.check(
            request.headers.getlist("dpop"), method=request.method,
            url=request_url(request, container.settings.trusted_proxies), now=now,
            access_token=token, jkt=claims.jkt,
        )  # fmt: skip
    except DPoPError as e:
        if not e.nonce:
            # A bound token without its key's valid proof: perhaps a copied token, so the
            # user sees it (`dpop_proof_invalid`, with the address), as at refresh.
            await sessions.record_invalid_proof(
                container.sessionmaker, claims,
                client_info(request, container.settings.trusted_proxies), container.clock.now(),
            )  # fmt: skip
        if isinstance(e, WrongKey):
            raise InvalidToken("The DPoP proof is not by this token's key", dpop=True) from e
        raise container.dpop.error(e, now, resource=True) from e
    return claims


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """Verify the access token (Bearer, or DPoP with its proof), then check that its
    session is live and its user active.

    This runs on every authenticated request, so it reads the container straight from the
    app rather than through another dependency level."""
    container: Container = request.app.state.container
    # None: no Bearer credential at all. An empty one ("Bearer ") was still sent, and is
    # refused below as a malformed token with error="invalid_token" (RFC 6750 section 3.1).
    if token is None:
        authorization = request.headers.get("authorization", "")
        scheme, rest = authorization[:4], authorization[4:]
        if scheme.lower() != "dpop" or rest[:1] not in ("", " ", "\t"):
            raise InvalidToken("Not authenticated", token_sent=False)
        # The DPoP scheme with no token, or not after a single space (RFC 9110 section
        # 11.4): refused as a malformed token, with the DPoP challenge (RFC 9449 section 7.1).
        token_ = rest[1:].strip() if rest[:1] == " " else ""
        claims = await _dpop_claims(request, container, token_)
    else:
        claims = await _claims(container, token)
        if claims.jkt:
            # A bound token is worth nothing without its key: never accepted as Bearer.
            # Perhaps a copied token, so the user sees it, as with a missing proof.
            await sessions.record_invalid_proof(
                container.sessionmaker, claims,
                client_info(request, container.settings.trusted_proxies), container.clock.now(),
            )  # fmt: skip
            raise InvalidToken("This token is bound to a DPoP key: send it as DPoP", dpop=True)
    principal = await container.principals.load(claims.session_id, claims.user_id)
    if principal is None:
        # A bound token is only ever sent with the DPoP scheme: its challenge is DPoP's.
        raise InvalidToken("The session of this token has ended", dpop=bool(claims.jkt))
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def get_proof(request: Request) -> Proof | DPoPError | None:
    """The DPoP proof of a token request (login, /auth/token, refresh, the second step),
    checked and spent: None without one, the `DPoPError` when it does not verify (each
    endpoint decides what a missing or faulty proof means for it)."""
    container: Container = request.app.state.container
    proofs = request.headers.getlist("dpop")
    if not proofs:
        return None
    try:
        return await container.dpop.check(
            proofs, method=request.method, now=container.clock.now().timestamp(),
            url=request_url(request, container.settings.trusted_proxies),
        )  # fmt: skip
    except DPoPError as e:
        return e


DPoPProof = Annotated[Proof | DPoPError | None, Depends(get_proof)]
