"""TOTP (RFC 6238, through pyotp) and recovery codes: generating, parsing what people type,
checking. Pure: no FastAPI, no database."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import pyotp

ISSUER = "Conductor"
DIGITS = 6
STEP_SECONDS = 30
# One step either way: a phone's clock a little off, or a code typed as it rolled over.
DRIFT_STEPS = 1
RECOVERY_CODES = 10
# Crockford's base32 alphabet (no i, l, o, u): nothing that reads as another character.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECOVERY_LENGTH = 10  # 50 bits, shown as two groups of five
_TOTP_RE = re.compile(r"[0-9]{6}", re.ASCII)
_RECOVERY_RE = re.compile(f"[{_ALPHABET}]{{{_RECOVERY_LENGTH}}}", re.ASCII)
# What people put between the characters of a code they copy or type.
_SEPARATORS = re.compile(r"[\s\-]+")


@dataclass(frozen=True, slots=True)
class TotpCode:
    """Six digits, as typed once the spaces are gone."""

    digits: str


@dataclass(frozen=True, slots=True)
class RecoveryCode:
    """A recovery code in its canonical form (lower case, no dashes)."""

    value: str


def new_secret() -> str:
    """A fresh base32 TOTP secret (160 bits, RFC 4226's recommendation)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str) -> str:
    """The `otpauth://totp/...` URI that authenticator apps read (SHA-1, 6 digits, 30 s)."""
    uri: str = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=username, issuer_name=ISSUER
    )
    # pyotp leaves the defaults implicit; some apps want them spelled out.
    if "algorithm=" not in uri:
        uri += "&algorithm=SHA1&digits=6&period=30"
    return uri


def parse_totp(text: str) -> TotpCode | None:
    """Six ASCII digits once spaces are removed ("123 456" as an app shows it); else None."""
    compact = re.sub(r"\s+", "", text)
    return TotpCode(compact) if _TOTP_RE.fullmatch(compact) else None


def parse_recovery(text: str) -> RecoveryCode | None:
    """A recovery code in any case, with or without its dash or spaces; else None."""
    compact = _SEPARATORS.sub("", text).lower()
    return RecoveryCode(compact) if _RECOVERY_RE.fullmatch(compact) else None


def parse_any(text: str) -> TotpCode | RecoveryCode | None:
    """Either kind of code: the two forms cannot be confused (6 digits, or 10 characters)."""
    return parse_totp(text) or parse_recovery(text)


def time_step(now: datetime) -> int:
    """The RFC 6238 time step that `now` falls in."""
    return int(now.timestamp()) // STEP_SECONDS


def matching_step(secret: str, code: TotpCode, now: datetime) -> int | None:
    """The step within the allowed drift whose code is `code` (the latest if several)."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = time_step(now)
    found = None
    # Every candidate is compared, in constant time, so timing says nothing about which.
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code.digits):
            found = step
    return found


def new_recovery_codes() -> list[str]:
    """Ten fresh codes, shown as `xxxxx-xxxxx`."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def recovery_hash(key: bytes, code: RecoveryCode) -> str:
    """A keyed hash of a recovery code: a copy of the database alone cannot test guesses."""
    return hmac.new(key, code.value.encode(), hashlib.sha256).hexdigest()
