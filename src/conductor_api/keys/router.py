"""`GET /.well-known/jwks.json`: the public keys other services verify access tokens with."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from conductor_api.deps import ContainerDep
from conductor_api.errors import ServiceUnavailable
from conductor_api.routing import StrictJSONRoute
from conductor_api.schemas import error_responses

router = APIRouter(tags=["keys"], route_class=StrictJSONRoute)
MAX_AGE_LIMIT = 300


class JwkOut(BaseModel):
    """One public key (RFC 7517): Ed25519 as `OKP` (`crv`, `x`), P-256 as `EC` (`x`, `y`)."""

    model_config = ConfigDict(extra="allow")

    kty: str = Field(examples=["OKP"])
    kid: str = Field(examples=["20261201_3f9a1c0b7d2e"])
    alg: str = Field(examples=["EdDSA"])
    use: str = Field(examples=["sig"])
    crv: str = Field(examples=["Ed25519"])
    x: str


class JwksOut(BaseModel):
    """A JSON Web Key Set; empty in the HS256 mode."""

    keys: list[JwkOut]


@router.get(
    "/.well-known/jwks.json",
    summary="Public keys that verify access tokens",
    response_model=JwksOut,
    responses={
        200: {"headers": {"Cache-Control": {"schema": {"type": "string"}}}},
        **error_responses(503),
    },
)
async def jwks(container: ContainerDep, response: Response) -> Any:
    """Every key that may have signed a still-valid access token, and the next key once it
    is published. Cacheable for less than the publish delay minus this server's own re-read
    interval, so a verifier that follows `max-age` sees a new key before any token uses it."""
    settings = container.settings
    if container.keys is not None and not container.keys.loaded:
        # The keys exist but this process could not read them yet: an empty set would be
        # cached by verifiers for max-age and make them refuse every token.
        raise ServiceUnavailable()
    lag = settings.key_publish_seconds - math.ceil(settings.key_refresh_seconds)
    max_age = max(0, min(MAX_AGE_LIMIT, lag))
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    if container.keys is None:
        return {"keys": []}
    return container.keys.ring.jwks
