"""HTTP endpoints of the second factor: TOTP setup, confirm, disable, recovery codes,
status, and the second step of a sign-in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from conductor_api.auth.flows import sign_in_key
from conductor_api.auth.schemas import TokenPairOut
from conductor_api.deps import DPOP_TOKEN_REQUEST, Client, ContainerDep, CurrentPrincipal, DPoPProof
from conductor_api.mfa import flows
from conductor_api.mfa.schemas import (
    CodeIn,
    DisableIn,
    RecoveryCodesOut,
    SetupIn,
    SetupOut,
    StatusOut,
    VerifyIn,
)
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import NO_STORE, NO_STORE_DOC, error_responses

router = APIRouter(prefix="/auth/mfa", tags=["mfa"], route_class=StrictJSONRoute)


def _json(body: Any) -> Response:
    return Response(body.model_dump_json(), media_type="application/json", headers=NO_STORE)


@router.get(
    "", response_model=StatusOut, responses=error_responses(401, 503), summary="Second factors"
)
async def mfa_status(principal: CurrentPrincipal, c: ContainerDep) -> StatusOut:
    """Whether TOTP is on, recovery codes left, passkeys."""
    s = await flows.status(c, principal)
    return StatusOut(totp=s.totp, recovery_codes_left=s.recovery_codes_left, passkeys=s.passkeys)


@router.post(
    "/totp/setup",
    response_model=SetupOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 409, 413, 422, 429, 503)},
    summary="Start a TOTP setup",
)
async def totp_setup(
    body: SetupIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """A new secret and its otpauth:// URI; not on until confirmed."""
    secret, uri = await flows.setup(c, principal, body.current_password, client)
    return _json(SetupOut(secret=secret, otpauth_uri=uri))


@router.post(
    "/totp/confirm",
    response_model=RecoveryCodesOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 409, 413, 422, 429, 503)},
    summary="Turn TOTP on with a first code",
)
async def totp_confirm(
    body: CodeIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """TOTP on; ten recovery codes, shown this once."""
    codes = await flows.confirm(c, principal, body.code, client)
    return _json(RecoveryCodesOut(recovery_codes=codes))


@router.post(
    "/totp/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 401, 409, 413, 422, 429, 503),
    summary="Turn TOTP off",
)
async def totp_disable(
    body: DisableIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """TOTP off and the recovery codes void, for the password and a code."""
    await flows.disable(c, principal, body.current_password, body.code, client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/recovery-codes",
    response_model=RecoveryCodesOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 409, 413, 422, 429, 503)},
    summary="New recovery codes",
)
async def recovery_codes(
    body: CodeIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """Ten new recovery codes; the old ones are void."""
    codes = await flows.regenerate(c, principal, body.code, client)
    return _json(RecoveryCodesOut(recovery_codes=codes))


@router.post(
    "/verify",
    response_model=TokenPairOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 403, 413, 422, 429, 503)},
    summary="Second step of a sign-in",
    openapi_extra=DPOP_TOKEN_REQUEST,
)
async def verify(body: VerifyIn, c: ContainerDep, client: Client, proof: DPoPProof) -> Response:
    """A TOTP or recovery code for a pending sign-in: the token pair and a device token
    (bound to the key of a `DPoP` proof, when the request has one)."""
    # The second step ends the sign-in that answered mfa_required: counted as its outcome.
    with c.metrics.counting_login("password"):
        jkt = await sign_in_key(c, proof, client)
        pair = await flows.verify(
            c, body.mfa_token, client, code=body.code, recovery_code=body.recovery_code, jkt=jkt
        )
    return _json(TokenPairOut.of(pair))
