"""Request and response bodies of the auth endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from conductor_api.security.passwords import MAX_PASSWORD_LENGTH
from conductor_api.users.service import USERNAME_MAX
from conductor_api.values import TokenPair

# PostgreSQL text cannot hold NUL, and these fields reach the database (throttle keys,
# session rows): refused here as a 422 rather than failing there as a 500.
NO_NUL = r"^[^\x00]*$"
# A name people read in a list, on a screen or a terminal (`sessions list`): no control
# characters (C0, DEL, C1), which could break its lines or drive the terminal.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"


class LoginRequest(BaseModel):
    """Credentials plus the device they sign in."""

    model_config = ConfigDict(hide_input_in_errors=True)

    username: str = Field(min_length=1, max_length=USERNAME_MAX, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    device_name: str = Field(min_length=1, max_length=100, pattern=NO_CONTROL, examples=["Pixel 8"])
    device_fingerprint: str | None = Field(
        default=None, min_length=1, max_length=256, pattern=NO_NUL
    )
    # Not validated beyond being a string: a malformed or forged one counts as none.
    device_token: str | None = None


class RefreshRequest(BaseModel):
    """A refresh token to rotate."""

    model_config = ConfigDict(hide_input_in_errors=True)

    refresh_token: str


class PasswordChange(BaseModel):
    """The current password and the new one."""

    model_config = ConfigDict(hide_input_in_errors=True)

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    # Required when TOTP is on: a TOTP code or a recovery code.
    code: str | None = Field(default=None, min_length=1, max_length=64)


class RegisterRequest(BaseModel):
    """A new account."""

    model_config = ConfigDict(hide_input_in_errors=True)

    username: str = Field(min_length=1, max_length=USERNAME_MAX)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class TokenPairOut(BaseModel):
    """A token pair (RFC 6749 section 5.1, plus the session it belongs to)."""

    access_token: str
    token_type: Literal["bearer", "DPoP"] = Field(
        default="bearer", description='"DPoP" when bound to the key of the request\'s DPoP proof'
    )
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: uuid.UUID
    device_token: str | None = Field(
        default=None, description="Sign-ins only: send it with this device's next sign-in"
    )

    @classmethod
    def of(cls, pair: TokenPair) -> TokenPairOut:
        """The body for a token pair."""
        return cls(
            access_token=pair.access_token,
            token_type="DPoP" if pair.bound else "bearer",
            expires_in=pair.expires_in,
            refresh_token=pair.refresh_token,
            refresh_expires_in=pair.refresh_expires_in,
            session_id=pair.session_id,
            device_token=pair.device_token,
        )


class UserOut(BaseModel):
    """An account as its owner sees it."""

    id: uuid.UUID
    username: str
    created_at: datetime
    is_active: bool


class OAuthErrorOut(BaseModel):
    """RFC 6749 section 5.2, with the contract's `code` beside it."""

    error: str = Field(examples=["invalid_grant"])
    error_description: str
    detail: str
    code: str = Field(examples=["invalid_credentials"])


class OAuthMfaRequiredOut(OAuthErrorOut):
    """403 at the token endpoint for a right password when a second factor is on: the
    pending sign-in, as at the login (continue at /auth/mfa/verify)."""

    error: Literal["mfa_required"]
    code: Literal["mfa_required"]
    mfa_token: str
    methods: list[str] = Field(examples=[["totp", "recovery_code"]])
    expires_in: int = Field(examples=[300])
