"""HTTP endpoint for the caller's security events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from conductor_api.deps import CurrentPrincipal, DbSession
from conductor_api.events import repository
from conductor_api.events.models import EventType
from conductor_api.events.schemas import EventOut
from conductor_api.schemas import error_responses

router = APIRouter(prefix="/auth/events", tags=["events"])


@router.get("", responses=error_responses(401, 422, 503), summary="The caller's security events")
async def list_events(
    principal: CurrentPrincipal,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[EventOut]:
    """The caller's own recent events, newest first."""
    rows = await repository.list_for_user(db, principal.user_id, limit)
    return [
        EventOut(
            id=e.id,
            type=EventType(e.type),
            created_at=e.created_at,
            ip_address=e.ip_address,
            user_agent=e.user_agent,
            session_id=e.session_id,
        )
        for e in rows
    ]
