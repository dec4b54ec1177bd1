"""The second factor's rules: a TOTP factor's life, recovery codes, pending sign-ins.

Nothing here counts failures: `auth.second_step` runs every code check as a sign-in step.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from conductor_api.db import Writer
from conductor_api.errors import MfaAlreadyEnabled, MfaNotEnabled, MfaNotSetUp
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.mfa import repository
from conductor_api.mfa.models import TotpFactor
from conductor_api.security import otp
from conductor_api.security.encryption import DecryptionError, SecretBox, derive_key
from conductor_api.security.tokens import token_digest
from conductor_api.users import repository as users
from conductor_api.values import ClientInfo

PENDING_SECONDS = 300
METHODS = ("totp", "recovery_code")
# An mfa_token longer than this was not made here.
MAX_MFA_TOKEN_LENGTH = 256
CodeKind = Literal["totp", "recovery_code"]


async def void_pending(db: AsyncSession, user_id: uuid.UUID) -> None:
    """Drop a user's pending sign-ins (a password change): their password was checked
    before the change, and must not finish into a session after it."""
    await repository.delete_pending_for_user(db, user_id)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a factor belongs to, and who is asking (for events)."""

    user_id: uuid.UUID
    username: str
    username_key: str
    client: ClientInfo | None = None
    session_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """What `GET /auth/mfa` answers."""

    totp: bool
    recovery_codes_left: int
    passkeys: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    """A pending sign-in as the second step needs it."""

    id: uuid.UUID
    user_id: uuid.UUID
    device_name: str
    device_fingerprint: str | None
    device_token_id: uuid.UUID | None
    # The DPoP key the login's proof was by (its thumbprint), if it had one.
    jkt: str | None


class SecondFactor:
    """TOTP and recovery codes of every user, with secrets sealed under the KEK."""

    def __init__(self, kek: bytes) -> None:
        self._box = SecretBox(kek, b"conductor-api totp-secret encryption v1")
        self._recovery_key = derive_key(kek, b"conductor-api recovery-code hash v1")

    @staticmethod
    def _context(user_id: uuid.UUID) -> bytes:
        # The ciphertext is bound to its user: copied into another row it does not decrypt.
        return b"totp:" + str(user_id).encode()

    def _secret(self, factor: TotpFactor) -> str:
        return self._box.open(factor.secret_encrypted, self._context(factor.user_id)).decode()

    async def opens_stored(self, db: AsyncSession) -> bool:
        """Whether this KEY_ENCRYPTION_KEY opens the stored TOTP secrets (checked at start:
        with another key, every sign-in of a user with TOTP on would fail)."""
        factor = await repository.any_factor(db)
        if factor is None:
            return True
        try:
            self._secret(factor)
        except DecryptionError:
            return False
        return True

    async def status(self, db: AsyncSession, user_id: uuid.UUID) -> Status:
        """Whether TOTP is on and how many recovery codes are left."""
        factor = await repository.get_factor(db, user_id)
        on = factor is not None and factor.confirmed
        left = await repository.recovery_codes_left(db, user_id) if on else 0
        return Status(totp=on, recovery_codes_left=left)

    async def is_on(self, db: Writer, user_id: uuid.UUID) -> bool:
        """Whether the user's sign-ins need a second factor."""
        return await repository.factor_confirmed(db, user_id)

    async def users_with_totp(self, db: AsyncSession) -> set[uuid.UUID]:
        """Every user with TOTP on (for `users list`)."""
        return await repository.users_with_totp(db)

    async def begin_setup(self, db: AsyncSession, owner: Owner, now: datetime) -> tuple[str, str]:
        """A new secret, not yet on: (secret, otpauth URI). Setting up again before the
        confirmation replaces the secret (the first QR code may have been lost). Setups of
        one user at once take turns on the user's row: the last one's secret is kept."""
        await users.get(db, owner.user_id, lock=True)
        factor = await repository.get_factor(db, owner.user_id)
        if factor is not None and factor.confirmed:
            raise MfaAlreadyEnabled()
        if factor is not None:
            await repository.delete_factor(db, owner.user_id)
        secret = otp.new_secret()
        await repository.add_factor(
            db,
            TotpFactor(
                user_id=owner.user_id,
                secret_encrypted=self._box.seal(secret.encode(), self._context(owner.user_id)),
                confirmed=False,
                created_at=now,
                confirmed_at=None,
                last_used_step=None,
            ),
        )
        return secret, otp.provisioning_uri(secret, owner.username)

    async def require_pending_setup(self, db: AsyncSession, user_id: uuid.UUID) -> None:
        """`MfaNotSetUp` unless a secret waits for its confirmation; `MfaAlreadyEnabled` if on."""
        factor = await repository.get_factor(db, user_id)
        if factor is None:
            raise MfaNotSetUp()
        if factor.confirmed:
            raise MfaAlreadyEnabled()

    async def require_on(self, db: AsyncSession, user_id: uuid.UUID) -> None:
        """`MfaNotEnabled` unless TOTP is on."""
        if not await self.is_on(db, user_id):
            raise MfaNotEnabled()

    async def check_confirmation(
        self, db: AsyncSession, user_id: uuid.UUID, text: str, now: datetime
    ) -> bool:
        """A TOTP code of the unconfirmed secret, spent when right (`enabled` then turns the
        factor on, with the recovery codes and the event, in one transaction)."""
        code = otp.parse_totp(text)
        factor = await repository.get_factor(db, user_id)
        if code is None or factor is None or factor.confirmed:
            return False
        step = otp.matching_step(self._secret(factor), code, now)
        return step is not None and await repository.take_step(db, user_id, step, confirmed=False)

    async def check(
        self,
        db: AsyncSession,
        owner: Owner,
        now: datetime,
        *,
        totp: str | None = None,
        recovery: str | None = None,
        either: str | None = None,
    ) -> CodeKind | None:
        """Check a code of a user whose TOTP is on; spend it when right. `either` takes a
        TOTP code or a recovery code in one field. Returns which kind matched, or None."""
        code: otp.TotpCode | otp.RecoveryCode | None = None
        if totp is not None:
            code = otp.parse_totp(totp)
        elif recovery is not None:
            code = otp.parse_recovery(recovery)
        elif either is not None:
            code = otp.parse_any(either)
        factor = await repository.get_factor(db, owner.user_id)
        if code is None or factor is None or not factor.confirmed:
            return None
        if isinstance(code, otp.TotpCode):
            step = otp.matching_step(self._secret(factor), code, now)
            if step is None:
                return None
            taken = await repository.take_step(db, owner.user_id, step, confirmed=True)
            return "totp" if taken else None
        digest = otp.recovery_hash(self._recovery_key, code)
        if not await repository.use_recovery_code(db, owner.user_id, digest, now):
            return None
        await self._record(db, EventType.RECOVERY_CODE_USED, owner, now)
        return "recovery_code"

    async def new_recovery_codes(self, db: AsyncSession, owner: Owner, now: datetime) -> list[str]:
        """Ten new codes; the earlier ones are void. Under the factor's row lock, so that of
        two requests at once the later one voids the codes of the earlier; `MfaNotEnabled`
        when TOTP went off meanwhile."""
        factor = await repository.get_factor(db, owner.user_id, lock=True)
        if factor is None or not factor.confirmed:
            raise MfaNotEnabled()
        codes = otp.new_recovery_codes()
        hashes = []
        for code in codes:
            parsed = otp.parse_recovery(code)
            assert parsed is not None
            hashes.append(otp.recovery_hash(self._recovery_key, parsed))
        await repository.replace_recovery_codes(db, owner.user_id, hashes, now)
        return codes

    async def enabled(self, db: AsyncSession, owner: Owner, now: datetime) -> list[str]:
        """After a right confirmation code: the factor on, its first recovery codes and the
        event, in one transaction (a crash or a timeout between them would leave TOTP on
        with no recovery codes, and a retry refused as already on). `MfaAlreadyEnabled` when
        another confirmation turned it on meanwhile."""
        if not await repository.confirm_factor(db, owner.user_id, now):
            raise MfaAlreadyEnabled()
        codes = await self.new_recovery_codes(db, owner, now)
        await self._record(db, EventType.MFA_ENABLED, owner, now)
        return codes

    async def regenerated(self, db: AsyncSession, owner: Owner, now: datetime) -> list[str]:
        """New recovery codes for a user with TOTP on, and the event."""
        codes = await self.new_recovery_codes(db, owner, now)
        await self._record(db, EventType.RECOVERY_CODES_REGENERATED, owner, now)
        return codes

    async def turn_off(self, db: AsyncSession, owner: Owner, now: datetime) -> bool:
        """Remove the factor, void the recovery codes and pending sign-ins; whether it was on."""
        # In the order a second step takes them (its pending sign-in, then the factor or a
        # recovery code): the other order deadlocks with one in flight.
        await repository.delete_pending_for_user(db, owner.user_id)
        factor = await repository.get_factor(db, owner.user_id, lock=True)
        was_on = factor is not None and factor.confirmed
        await repository.delete_factor(db, owner.user_id)
        await repository.delete_recovery_codes(db, owner.user_id)
        if was_on:
            await self._record(db, EventType.MFA_DISABLED, owner, now)
        return was_on

    async def start_pending(
        self,
        db: Writer,
        user_id: uuid.UUID,
        now: datetime,
        *,
        device_name: str,
        fingerprint: str | None,
        device_token_id: uuid.UUID | None,
        jkt: str | None,
    ) -> str:
        """A pending sign-in for the device a login named (and the DPoP key its proof was
        by, `jkt`); returns its mfa_token."""
        token = secrets.token_urlsafe(32)
        await repository.add_pending(
            db,
            {
                "id": uuid.uuid4(), "token_hash": token_digest(token), "user_id": user_id,
                "device_name": device_name, "device_fingerprint": fingerprint,
                "device_token_id": device_token_id, "created_at": now,
                "expires_at": now + timedelta(seconds=PENDING_SECONDS), "failures": 0,
                "spent_at": None, "dpop_jkt": jkt,
            },
        )  # fmt: skip
        return token

    async def find_pending(
        self, db: AsyncSession, token: str, now: datetime, *, max_failures: int
    ) -> Pending | None:
        """The live pending sign-in of an mfa_token (None: unknown, spent, expired, used up)."""
        if not token or len(token) > MAX_MFA_TOKEN_LENGTH:
            return None
        row = await repository.get_pending(db, token_digest(token), now, max_failures=max_failures)
        if row is None:
            return None
        return Pending(
            row.id, row.user_id, row.device_name, row.device_fingerprint, row.device_token_id,
            row.dpop_jkt,
        )  # fmt: skip

    async def lock_pending(
        self, db: AsyncSession, pending: Pending, now: datetime, *, max_failures: int
    ) -> bool:
        """Whether a pending sign-in is still live, read under a row lock (PostgreSQL) so
        that concurrent attempts on it take turns."""
        return await repository.lock_live_pending(db, pending.id, now, max_failures=max_failures)

    async def still_pending(self, db: Writer, pending: Pending) -> bool:
        """In the sign-in's last transaction, after the user row's lock: whether the pending
        sign-in was voided since its code was checked (TOTP reset or off, a new password)."""
        return await repository.pending_kept(db, pending.id)

    async def spend_pending(self, db: AsyncSession, pending: Pending, now: datetime) -> None:
        """The pending sign-in is done: its mfa_token is dead."""
        await repository.spend_pending(db, pending.id, now)

    async def fail_pending(self, db: AsyncSession, pending: Pending) -> None:
        """A wrong code against a pending sign-in (it dies at MAX_FAILED_LOGIN_ATTEMPTS)."""
        await repository.fail_pending(db, pending.id)

    @staticmethod
    async def _record(db: AsyncSession, type_: EventType, owner: Owner, now: datetime) -> None:
        client = owner.client
        await events.record(
            db, type_, now=now, username_key=owner.username_key, user_id=owner.user_id,
            ip_address=client.ip_address if client else None,
            user_agent=client.user_agent if client else None, session_id=owner.session_id,
        )  # fmt: skip
