"""Request and response bodies of the second-factor endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from conductor_api.security.passwords import MAX_PASSWORD_LENGTH

# Longer than any code a person types, spaces and dashes included: a 422, not a guess.
CODE_MAX = 64


class SetupIn(BaseModel):
    """The caller's password, to start a TOTP setup."""

    model_config = ConfigDict(hide_input_in_errors=True)

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class SetupOut(BaseModel):
    """A new TOTP secret (base32) and the otpauth:// URI that authenticator apps read."""

    secret: str
    otpauth_uri: str = Field(
        examples=["otpauth://totp/Conductor:alice?secret=...&issuer=Conductor"]
    )


class CodeIn(BaseModel):
    """A code: six digits from the authenticator app (spaces allowed), or, where a TOTP
    factor is already on, a recovery code (any case, dash optional)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    code: str = Field(min_length=1, max_length=CODE_MAX, examples=["123 456"])


class DisableIn(CodeIn):
    """The password and a code, to turn TOTP off."""

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class RecoveryCodesOut(BaseModel):
    """Ten single-use recovery codes, shown this once."""

    recovery_codes: list[str] = Field(examples=[["7k2mq-x9c4d"]])


class StatusOut(BaseModel):
    """Which second factors the caller has."""

    totp: bool
    recovery_codes_left: int
    passkeys: int


class VerifyIn(BaseModel):
    """The second step of a sign-in: the mfa_token and exactly one of the two codes."""

    model_config = ConfigDict(hide_input_in_errors=True)

    mfa_token: str = Field(min_length=1, max_length=512)
    code: str | None = Field(default=None, min_length=1, max_length=CODE_MAX)
    recovery_code: str | None = Field(default=None, min_length=1, max_length=CODE_MAX)

    @model_validator(mode="after")
    def _one_code(self) -> VerifyIn:
        if (self.code is None) == (self.recovery_code is None):
            raise ValueError("give exactly one of code and recovery_code")
        return self


class MfaRequiredOut(BaseModel):
    """403 for a right password when a second factor is on: the pending sign-in."""

    detail: str
    code: Literal["mfa_required"]
    mfa_token: str
    methods: list[str] = Field(examples=[["totp", "recovery_code"]])
    expires_in: int = Field(examples=[300])
