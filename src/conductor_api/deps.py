"""`Annotated` dependency aliases shared by the routers.

Every dependency is `async def`: FastAPI runs a plain `def` dependency in a worker thread,
and those hand-offs were most of the cost of an authenticated request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.auth.client import client_info
from conductor_api.auth.principal import Principal
from conductor_api.config import Settings
from conductor_api.container import Container
from conductor_api.errors import InvalidToken
from conductor_api.security.tokens import UnknownSigningKey
from conductor_api.values import ClientInfo

# auto_error=False: a missing token is answered by `current_principal` in the contract's shape.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


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


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Principal:
    """Verify the bearer token, then check that its session is live and its user active.

    This runs on every authenticated request, so it reads the container straight from the
    app rather than through another dependency level."""
    container: Container = request.app.state.container
    # None: no Bearer credential at all. An empty one ("Bearer ") was still sent, and is
    # refused below as a malformed token with error="invalid_token" (RFC 6750 section 3.1).
    if token is None:
        raise InvalidToken("Not authenticated", token_sent=False)
    try:
        claims = container.tokens.decode_access(token, container.clock.now())
    except UnknownSigningKey as e:
        # A key published a moment ago by another instance: re-read the set (rate-limited,
        # so a stream of forged kids costs at most one read a second) and try once more.
        if container.keys is None or not await container.keys.reload_for_unknown_kid(e.kid):
            raise InvalidToken() from e
        claims = container.tokens.decode_access(token, container.clock.now())
    principal = await container.principals.load(claims.session_id, claims.user_id)
    if principal is None:
        raise InvalidToken("The session of this token has ended")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
