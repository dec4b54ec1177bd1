"""HTTP endpoint for the caller's security events."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BeforeValidator, TypeAdapter

from conductor_api.deps import CurrentPrincipal, DbSession
from conductor_api.events import repository
from conductor_api.events.models import EventType
from conductor_api.events.schemas import EventOut
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import error_responses

router = APIRouter(prefix="/auth/events", tags=["events"], route_class=StrictJSONRoute)


_EVENTS = TypeAdapter(list[EventOut])


def _decimal_digits(value: object) -> object:
    """A query value as a client writes a count: decimal digits only. Pydantic's lax int
    would also take `5.0`, `+5`, ` 5` and `1_0` (as 10)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits")
    return value


@router.get(
    "",
    response_model=list[EventOut],
    responses=error_responses(401, 422, 503),
    summary="The caller's security events",
)
async def list_events(
    principal: CurrentPrincipal,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=200), BeforeValidator(_decimal_digits)] = 50,
) -> Response:
    """The caller's own recent events, newest first (`method` and `mfa` on sign-ins only)."""
    rows = await repository.list_for_user(db, principal.user_id, limit)
    events = [
        EventOut(
            id=e.id,
            type=EventType(e.type),
            created_at=e.created_at,
            ip_address=e.ip_address,
            user_agent=e.user_agent,
            session_id=e.session_id,
            method=e.method,
            mfa=e.mfa,
        )
        for e in rows
    ]
    body = [
        {k: v for k, v in event.items() if v is not None or k not in ("method", "mfa")}
        for event in _EVENTS.dump_python(events, mode="json")
    ]
    return Response(json.dumps(body), media_type="application/json")
