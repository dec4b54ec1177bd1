"""Request and response bodies of the passkey endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from conductor_api.auth.schemas import NO_CONTROL, NO_NUL


class OptionsIn(BaseModel):
    """The options requests' body: `{}`."""

    model_config = ConfigDict(extra="ignore")


class OptionsOut(BaseModel):
    """A challenge's id, to send back with the answer, and the WebAuthn options to hand to
    Credential Manager (`PublicKeyCredentialCreationOptionsJSON` or
    `PublicKeyCredentialRequestOptionsJSON`)."""

    challenge_id: uuid.UUID
    options: dict[str, Any]


class RegisterIn(BaseModel):
    """The answer to a registration challenge, and a name for the passkey."""

    model_config = ConfigDict(hide_input_in_errors=True)

    challenge_id: str = Field(min_length=1, max_length=64)
    credential: dict[str, Any] = Field(
        description="The RegistrationResponseJSON that Credential Manager returns"
    )
    name: str = Field(
        default="Passkey", min_length=1, max_length=100, pattern=NO_CONTROL, examples=["Pixel 8"]
    )


class RenameIn(BaseModel):
    """A passkey's new name."""

    name: str = Field(min_length=1, max_length=100, pattern=NO_CONTROL)


class PasskeyOut(BaseModel):
    """A passkey (`id` is opaque, not the credential id)."""

    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None


class LoginIn(BaseModel):
    """The answer to a sign-in challenge, and the device it signs in."""

    model_config = ConfigDict(hide_input_in_errors=True)

    challenge_id: str = Field(min_length=1, max_length=64)
    credential: dict[str, Any] = Field(
        description="The AuthenticationResponseJSON that Credential Manager returns"
    )
    device_name: str = Field(min_length=1, max_length=100, pattern=NO_CONTROL, examples=["Pixel 8"])
    device_fingerprint: str | None = Field(
        default=None, min_length=1, max_length=256, pattern=NO_NUL
    )
    device_token: str | None = None
