"""Response bodies shared by every router, and the error body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# Token pairs, secrets and what leads to them: never stored by a cache (RFC 6749 section 5.1
# for the pair).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# How a 200 with NO_STORE is described in the OpenAPI document.
NO_STORE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"Cache-Control": {"schema": {"type": "string"}, "description": "no-store"}}}
}


class ErrorOut(BaseModel):
    """Every error body: `detail` for people, `code` for programs."""

    detail: str = Field(examples=["Incorrect username or password"])
    code: str = Field(examples=["invalid_credentials"])


class ValidationIssue(BaseModel):
    """One failed field, as FastAPI reports it (never with the submitted input)."""

    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorOut(BaseModel):
    """A request-validation 422: FastAPI's list of issues, plus `code`."""

    detail: list[ValidationIssue]
    code: str = Field(examples=["validation_error"])


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the contract's error statuses."""
    described = {
        400: "Bad request",
        401: "Not authenticated, or the credential was refused",
        403: "The account is disabled",
        404: "Not found",
        409: "Conflict",
        413: "Request body over 64 KiB",
        415: "A request body sent with a Content-Encoding (none is decoded)",
        422: "The body failed validation (submitted secrets are never echoed)",
        429: "Too many failed attempts; see Retry-After",
        503: "The database is not answering; see Retry-After",
    }
    # A 422 is either a rule's ErrorOut (password_rejected) or a validation list.
    models: dict[int, object] = {422: ValidationErrorOut | ErrorOut}
    # Where a body is read (and may be too large), it may also come coded.
    listed = sorted({*statuses, 415}) if 413 in statuses else statuses
    return {s: {"model": models.get(s, ErrorOut), "description": described[s]} for s in listed}
