"""One error base carrying status, a stable `code` and headers; one handler renders it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conductor_api.schemas import NO_STORE


class AppError(Exception):
    """A client-facing error: rendered as `{"detail", "code"}` with `status`."""

    status: int = 400
    code: str = "bad_request"
    detail: str = "Bad request"

    def __init__(self, detail: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.headers = dict(headers or {})
        # Fields rendered beside `detail` and `code` (the pending sign-in of mfa_required).
        self.extra: dict[str, Any] = {}


class InvalidCredentials(AppError):
    status, code, detail = 401, "invalid_credentials", "Incorrect username or password"


# The challenge of the DPoP scheme (RFC 9449 section 7.1): the algorithms a proof may use.
DPOP_CHALLENGE = 'DPoP algs="ES256 EdDSA"'


class InvalidToken(AppError):
    status, code, detail = 401, "invalid_token", "Invalid or expired access token"

    def __init__(
        self, detail: str | None = None, *, token_sent: bool = True, dpop: bool = False
    ) -> None:
        # RFC 6750 section 3: error="invalid_token" only when a token was presented.
        if dpop:
            # RFC 9449 section 7.1: a token sent (or bound) for the DPoP scheme.
            challenge = f'{DPOP_CHALLENGE}, error="invalid_token"'
        else:
            challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
        super().__init__(detail, {"WWW-Authenticate": challenge})


class InvalidDPoPProof(AppError):
    """A DPoP proof that is missing where required, malformed, or does not verify: 400 at
    the token endpoints, 401 with a DPoP challenge at resources (RFC 9449 section 7.1)."""

    status, code, detail = 400, "invalid_dpop_proof", "Invalid or missing DPoP proof"

    def __init__(self, detail: str | None = None, *, resource: bool = False) -> None:
        headers = {}
        if resource:
            self.status = 401
            headers["WWW-Authenticate"] = f'{DPOP_CHALLENGE}, error="{self.code}"'
        super().__init__(detail, headers)


class UseDPoPNonce(InvalidDPoPProof):
    """A proof without a current server nonce (RFC 9449 section 8): retry with `DPoP-Nonce`."""

    code, detail = "use_dpop_nonce", "A DPoP proof with the server's current nonce is required"

    def __init__(self, nonce: str, *, resource: bool = False) -> None:
        super().__init__(None, resource=resource)
        if resource:
            # The contract's form, as RFC 9449 section 8's example: the error first.
            self.headers["WWW-Authenticate"] = 'DPoP error="use_dpop_nonce", algs="ES256 EdDSA"'
        self.headers["DPoP-Nonce"] = nonce


class InvalidRefreshToken(AppError):
    status, code, detail = 401, "invalid_refresh_token", "Invalid or expired refresh token"


class RefreshTokenReused(AppError):
    status, code = 401, "refresh_token_reused"
    detail = "This refresh token was already used; the session has been revoked"


class AccountDisabled(AppError):
    status, code, detail = 403, "account_disabled", "This account is disabled"


class MfaRequired(AppError):
    status, code, detail = 403, "mfa_required", "A second factor is required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        # The pending sign-in's mfa_token is a credential: never cached, like a token pair
        # (and like this answer on /auth/token).
        super().__init__(detail, NO_STORE)
        self.extra = extra


class InvalidMfaCode(AppError):
    status, code, detail = 401, "invalid_mfa_code", "Wrong, reused or expired code"


class InvalidMfaToken(AppError):
    status, code, detail = 401, "invalid_mfa_token", "Unknown, spent or expired mfa_token"


class MfaAlreadyEnabled(AppError):
    status, code, detail = 409, "mfa_already_enabled", "Two-step sign-in is already on"


class MfaNotEnabled(AppError):
    status, code, detail = 409, "mfa_not_enabled", "Two-step sign-in is not on"


class MfaNotSetUp(AppError):
    status, code, detail = 409, "mfa_not_set_up", "Call /auth/mfa/totp/setup first"


class NotFound(AppError):
    status, code, detail = 404, "not_found", "Not found"


class UsernameTaken(AppError):
    status, code, detail = 409, "username_taken", "This username is taken"


class PayloadTooLarge(AppError):
    status, code, detail = 413, "payload_too_large", "Request body too large"


class PasswordRejected(AppError):
    status, code, detail = 422, "password_rejected", "Password does not meet the rules"


class RetryLater(AppError):
    """A 429 or 503 that tells the client when to come back."""

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail, {"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class AccountLocked(RetryLater):
    status, code = 429, "account_locked"
    detail = "Too many failed logins for this account; try again later"


class TooManyAttempts(RetryLater):
    status, code = 429, "too_many_attempts"
    detail = "Too many failed logins from this address; try again later"


class ServiceUnavailable(RetryLater):
    status, code, detail = 503, "service_unavailable", "The database is not answering"

    def __init__(self, retry_after: int = 5, detail: str | None = None) -> None:
        super().__init__(retry_after, detail)


class InvalidPasskey(AppError):
    status, code, detail = 401, "invalid_passkey", "The passkey could not be verified"


class PasskeyExists(AppError):
    status, code, detail = 409, "passkey_exists", "This passkey is already registered"
