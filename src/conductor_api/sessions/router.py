"""HTTP endpoints for the caller's device sessions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from conductor_api.auth.flows import live_caller
from conductor_api.deps import Client, ContainerDep, CurrentPrincipal, DbSession
from conductor_api.errors import NotFound
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import error_responses
from conductor_api.sessions import repository, service
from conductor_api.sessions.schemas import RevokedOut, SessionOut

router = APIRouter(prefix="/auth/sessions", tags=["sessions"], route_class=StrictJSONRoute)


@router.get("", responses=error_responses(401, 503), summary="The caller's active sessions")
async def list_sessions(
    principal: CurrentPrincipal, db: DbSession, c: ContainerDep
) -> list[SessionOut]:
    """Active sessions, most recently used first; `current` marks the caller's own."""
    now = c.clock.now()
    rows = await repository.list_active(db, principal.user_id, now)
    ends = ((s, service.session_end(c.settings, s)) for s in rows)
    return [
        SessionOut(
            id=s.id,
            device_name=s.device_name,
            device_fingerprint=s.device_fingerprint,
            ip_address=s.ip_address,
            user_agent=s.user_agent,
            created_at=s.created_at,
            last_used_at=s.last_used_at,
            expires_at=end,
            current=s.id == principal.session_id,
            bound=s.dpop_jkt is not None,
        )
        for s, end in ends
        if end > now
    ]


@router.post(
    "/revoke-others",
    responses=error_responses(401, 503),
    summary="Sign out every other device",
)
async def revoke_others(
    principal: CurrentPrincipal, db: DbSession, c: ContainerDep, client: Client
) -> RevokedOut:
    """Revoke every session of the caller but the current one."""
    user = await live_caller(db, c, principal)
    revoked = await service.revoke_many(
        db, user, c.clock.now(), client, reason="revoked", except_id=principal.session_id
    )
    return RevokedOut(revoked=len(revoked))


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 503),
    summary="Sign one device out",
)
async def revoke(
    session_id: str, principal: CurrentPrincipal, db: DbSession, c: ContainerDep, client: Client
) -> Response:
    """Revoke one of the caller's sessions; 404 for an id that is not one of them."""
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        raise NotFound("No such session") from None
    user = await live_caller(db, c, principal)
    await service.revoke_users_session(db, user, sid, c.clock.now(), client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
