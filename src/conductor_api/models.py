"""Every table, imported in one place for Alembic's autogenerate and the migration tests."""

from conductor_api.auth.models import LoginThrottle
from conductor_api.db import Base
from conductor_api.devices.models import DeviceToken
from conductor_api.dpop.models import SeenProof
from conductor_api.events.models import SecurityEvent
from conductor_api.keys.models import GeneratedSecret, KekCheck, SettingCheck, SigningKey
from conductor_api.mfa.models import MfaToken, RecoveryCode, TotpFactor
from conductor_api.passkeys.models import Passkey, WebAuthnChallenge
from conductor_api.sessions.models import DeviceSession
from conductor_api.users.models import User

__all__ = [
    "Base",
    "DeviceSession",
    "DeviceToken",
    "GeneratedSecret",
    "KekCheck",
    "LoginThrottle",
    "MfaToken",
    "Passkey",
    "RecoveryCode",
    "SecurityEvent",
    "SeenProof",
    "SettingCheck",
    "SigningKey",
    "TotpFactor",
    "User",
    "WebAuthnChallenge",
]
