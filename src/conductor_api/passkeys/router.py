"""HTTP endpoints of passkeys (off, every one a 404, unless WEBAUTHN_RP_ID is set), and the
Digital Asset Links statement that Android's Credential Manager checks."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from conductor_api.auth import flows
from conductor_api.auth.schemas import TokenPairOut
from conductor_api.auth.service import Device
from conductor_api.deps import DPOP_TOKEN_REQUEST, Client, ContainerDep, CurrentPrincipal, DPoPProof
from conductor_api.errors import InvalidPasskey, NotFound
from conductor_api.passkeys.schemas import (
    LoginIn,
    OptionsIn,
    OptionsOut,
    PasskeyOut,
    RegisterIn,
    RenameIn,
)
from conductor_api.passkeys.service import PasskeyView
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import NO_STORE, NO_STORE_DOC, error_responses


class PasskeyRoute(StrictJSONRoute):
    """404 for every passkey path while WEBAUTHN_RP_ID is unset, said before anything else:
    a dependency would come after FastAPI parsed the body (a 422 for bad JSON), and a
    method the path does not take would be a 405; either would say the path is there."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route, or while passkeys are off the 404 of a path that is not there."""
        if not scope["app"].state.container.settings.passkeys_on:
            raise HTTPException(404)
        await super().handle(scope, receive, send)


router = APIRouter(prefix="/auth/passkeys", tags=["passkeys"], route_class=PasskeyRoute)
well_known = APIRouter(tags=["passkeys"], route_class=PasskeyRoute)


def _out(view: PasskeyView) -> PasskeyOut:
    return PasskeyOut(
        id=view.id, name=view.name, created_at=view.created_at, last_used_at=view.last_used_at
    )


def _passkey_id(text: str) -> uuid.UUID:
    """The id in a path; one that is not a UUID is an unknown passkey like any other."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound("No such passkey") from None


def _options(challenge_id: uuid.UUID, options: dict[str, Any]) -> Response:
    body = OptionsOut(challenge_id=challenge_id, options=options)
    return Response(body.model_dump_json(), media_type="application/json", headers=NO_STORE)


@router.post(
    "/register/options",
    response_model=OptionsOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 404, 413, 422, 429, 503)},
    summary="Start adding a passkey",
)
async def register_options(
    _: OptionsIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """A registration challenge and the creation options, with the caller's passkeys in
    `excludeCredentials`. Counted with the sign-in challenges against
    MAX_PASSKEY_CHALLENGES_PER_IP."""
    challenge_id, options = await c.passkeys.registration_options(
        principal.user_id, principal.username, client
    )
    return _options(challenge_id, options)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=PasskeyOut,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503),
    summary="Add a passkey",
)
async def register(
    body: RegisterIn, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> PasskeyOut:
    """Check the registration response against its challenge and store the passkey."""
    try:
        view = await c.passkeys.register(
            principal.user_id, client, body.challenge_id, body.credential, body.name,
            session_id=principal.session_id,
        )  # fmt: skip
    except InvalidPasskey:
        # Counted against the address (and refused once it is over its limit).
        await c.signin.count_address_failure(client)
        raise
    return _out(view)


@router.get(
    "",
    response_model=list[PasskeyOut],
    responses=error_responses(401, 404, 503),
    summary="The caller's passkeys",
)
async def list_passkeys(principal: CurrentPrincipal, c: ContainerDep) -> list[PasskeyOut]:
    """Every passkey of the caller, oldest first."""
    return [_out(view) for view in await c.passkeys.list(principal.user_id)]


@router.patch(
    "/{passkey_id}",
    response_model=PasskeyOut,
    responses=error_responses(400, 401, 404, 413, 422, 503),
    summary="Rename a passkey",
)
async def rename_passkey(
    passkey_id: str, body: RenameIn, principal: CurrentPrincipal, c: ContainerDep
) -> PasskeyOut:
    """Give one of the caller's passkeys a new name."""
    return _out(await c.passkeys.rename(principal.user_id, _passkey_id(passkey_id), body.name))


@router.delete(
    "/{passkey_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 503),
    summary="Delete a passkey",
)
async def delete_passkey(
    passkey_id: str, principal: CurrentPrincipal, c: ContainerDep, client: Client
) -> Response:
    """Delete one of the caller's passkeys; 404 for an unknown id or anyone else's."""
    await c.passkeys.delete(
        principal.user_id, _passkey_id(passkey_id), client, session_id=principal.session_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/login/options",
    response_model=OptionsOut,
    responses={**NO_STORE_DOC, **error_responses(400, 404, 413, 422, 429, 503)},
    summary="Start a passkey sign-in",
)
async def login_options(_: OptionsIn, c: ContainerDep, client: Client) -> Response:
    """A sign-in challenge and the request options (`allowCredentials` empty: the phone
    offers the passkeys it holds for this site). At most MAX_PASSKEY_CHALLENGES_PER_IP
    from one address within LOCKOUT_MINUTES, then 429 `too_many_attempts`."""
    challenge_id, options = await c.passkeys.login_options(client)
    return _options(challenge_id, options)


@router.post(
    "/login",
    response_model=TokenPairOut,
    responses={**NO_STORE_DOC, **error_responses(400, 401, 403, 404, 413, 422, 429, 503)},
    summary="Sign a device in with a passkey",
    openapi_extra=DPOP_TOKEN_REQUEST,
)
async def login(body: LoginIn, c: ContainerDep, client: Client, proof: DPoPProof) -> Response:
    """Check the assertion and start a session for this device, exactly as a password
    sign-in does (token pair, device token, bound to the key of a `DPoP` proof when the
    request has one); no second step follows."""
    with c.metrics.counting_login("passkey"):
        jkt = await flows.sign_in_key(c, proof, client)
        pair = await c.signin.login_passkey(
            body.challenge_id, body.credential, Device(body.device_name, body.device_fingerprint),
            client, body.device_token, jkt,
        )  # fmt: skip
    body_json = TokenPairOut.of(pair).model_dump_json(exclude_none=True)
    return Response(body_json, media_type="application/json", headers=NO_STORE)


ASSET_RELATIONS = (
    "delegate_permission/common.handle_all_urls",
    "delegate_permission/common.get_login_creds",
)


@well_known.get(
    "/.well-known/assetlinks.json",
    responses=error_responses(404),
    summary="Digital Asset Links statement for the Android app",
)
async def assetlinks(c: ContainerDep) -> JSONResponse:
    """The statement Credential Manager checks before it uses this site's passkeys in the
    app: 404 unless passkeys are on and ANDROID_PACKAGE_NAME is set."""
    s = c.settings
    if not s.passkeys_on or s.android_package_name is None:
        raise NotFound()
    return JSONResponse(
        [
            {
                "relation": list(ASSET_RELATIONS),
                "target": {
                    "namespace": "android_app",
                    "package_name": s.android_package_name,
                    "sha256_cert_fingerprints": list(s.android_cert_fingerprints),
                },
            }
        ]
    )
