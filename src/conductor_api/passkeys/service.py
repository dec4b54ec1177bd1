"""The WebAuthn ceremonies, on the `webauthn` package (py_webauthn): options, the checks of
a registration and of an assertion, and the passkeys' rules (counter, owner, names).

Nothing here counts failures or starts sessions: a sign-in's assertion is the credential
step of `auth.signin.SignIn` (`SignInService.login_passkey`).

`webauthn` is imported where a ceremony needs it, not with this module: it brings pyOpenSSL
(for attestation certificates), about 5 MiB in every worker that never sees a passkey."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conductor_api.auth.limits import PasskeyChallengeLimit
from conductor_api.auth.signin import PasskeyOutcome
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.db import Writer
from conductor_api.errors import (
    AccountDisabled,
    AppError,
    InvalidPasskey,
    NotFound,
    PasskeyExists,
)
from conductor_api.events import repository as events
from conductor_api.events.models import EventType
from conductor_api.passkeys import repository
from conductor_api.passkeys.models import Passkey, WebAuthnChallenge
from conductor_api.users import service as users
from conductor_api.users.models import User
from conductor_api.values import ClientInfo

if TYPE_CHECKING:
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.structs import AuthenticationCredential

REGISTRATION = "registration"
AUTHENTICATION = "authentication"
CHALLENGE_BYTES = 32


@cache
def algorithms() -> list[COSEAlgorithmIdentifier]:
    """ES256 first (what Android's passkey providers make), then RS256 and EdDSA."""
    from webauthn.helpers.cose import COSEAlgorithmIdentifier

    return [
        COSEAlgorithmIdentifier.ECDSA_SHA_256,
        COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
        COSEAlgorithmIdentifier.EDDSA,
    ]


# WebAuthn caps a credential id at 1023 bytes; a credential's JSON past this size was not
# made by an authenticator (a passkey's is well under 2 KiB, with attestation under 8 KiB).
MAX_CREDENTIAL_ID_BYTES = 1023
MAX_CREDENTIAL_JSON = 16 * 1024


@dataclass(frozen=True, slots=True)
class PasskeyView:
    """A passkey as its owner sees it."""

    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: Passkey) -> PasskeyView:
        """The view of a stored passkey."""
        return cls(row.id, row.name, row.created_at, row.last_used_at)


@dataclass(frozen=True, slots=True)
class Assertion:
    """An assertion that verified: the passkey, its counters and backup state."""

    passkey_id: uuid.UUID
    old_count: int
    new_count: int
    backup_state: bool


def _cross_origin(client_data_json: bytes) -> bool:
    """Whether the ceremony ran in a frame of another origin (`crossOrigin: true`, which
    py_webauthn does not check): neither the app nor a page of the RP's asks for that."""
    from webauthn.helpers import parse_client_data_json

    return bool(parse_client_data_json(client_data_json).cross_origin)


def _challenge_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _oversized(credential: dict[str, Any]) -> bool:
    try:
        size = len(json.dumps(credential, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        # RecursionError: nested about as deep as the request's parser goes ("[" nine
        # hundred times), past what the encoder can recurse from here. No WebAuthn
        # response is nested more than a few levels.
        return True
    return size > MAX_CREDENTIAL_JSON


def _parse_assertion(credential: dict[str, Any]) -> AuthenticationCredential | None:
    """The assertion's structure, or None when it is not one (malformed, oversized)."""
    from webauthn.helpers import parse_authentication_credential_json

    if _oversized(credential):
        return None
    try:
        parsed = parse_authentication_credential_json(credential)
    except Exception:
        return None
    if not parsed.raw_id or len(parsed.raw_id) > MAX_CREDENTIAL_ID_BYTES:
        return None
    return parsed


# The smallest RSA key accepted (what Windows Hello and security keys make).
MIN_RSA_BITS = 2048


def _usable_key(public_key: bytes) -> bool:
    """Whether a registration's COSE public key is one a signature can verify with: a key
    of an offered algorithm, of that algorithm's type and curve, on its curve. Attestation
    `none` vouches for nothing, so nothing else would refuse one that never verifies."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from webauthn.helpers import decode_credential_public_key, decoded_public_key_to_cryptography
    from webauthn.helpers.cose import COSEAlgorithmIdentifier as Alg

    try:
        decoded = decode_credential_public_key(public_key)
        key = decoded_public_key_to_cryptography(decoded)
    except Exception:
        return False
    if decoded.alg == Alg.ECDSA_SHA_256:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if decoded.alg == Alg.RSASSA_PKCS1_v1_5_SHA_256:
        return isinstance(key, RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if decoded.alg == Alg.EDDSA:
        return isinstance(key, ed25519.Ed25519PublicKey)
    return False


def user_handle(user_id: uuid.UUID) -> bytes:
    """The WebAuthn user handle of a user: the 16 bytes of its id (no name, no email)."""
    return user_id.bytes


class PasskeyService:
    """Passkeys of every user, for one relying party (WEBAUTHN_RP_ID)."""

    def __init__(
        self, settings: Settings, clock: Clock, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessionmaker = sessionmaker
        self.challenges_per_address = PasskeyChallengeLimit(settings, clock)

    @property
    def rp_id(self) -> str:
        """WEBAUTHN_RP_ID (only called while passkeys are on)."""
        assert self.settings.webauthn_rp_id is not None
        return self.settings.webauthn_rp_id

    @property
    def _timeout_ms(self) -> int:
        return self.settings.webauthn_challenge_seconds * 1000

    async def _new_challenge(
        self, db: AsyncSession, purpose: str, user_id: uuid.UUID | None, client: ClientInfo
    ) -> tuple[uuid.UUID, bytes] | AppError:
        """A stored challenge; or the refusal, when the client has asked for
        MAX_PASSKEY_CHALLENGES_PER_IP in the window (each one is a row until the prune,
        and a sign-in's needs no token). The count is committed either way."""
        now = self.clock.now()
        refusal = await self.challenges_per_address.count(db, client.limit_key, now)
        if refusal is not None:
            return refusal
        row = WebAuthnChallenge(
            id=uuid.uuid4(),
            challenge=secrets.token_bytes(CHALLENGE_BYTES),
            purpose=purpose,
            user_id=user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.webauthn_challenge_seconds),
            spent_at=None,
        )
        await repository.add_challenge(db, row)
        return row.id, row.challenge

    # --- registration ------------------------------------------------------------------

    async def registration_options(
        self, user_id: uuid.UUID, username: str, client: ClientInfo
    ) -> tuple[uuid.UUID, dict[str, Any]]:
        """A registration challenge for this user, and the creation options."""
        from webauthn import generate_registration_options, options_to_json
        from webauthn.helpers.structs import (
            AuthenticatorSelectionCriteria,
            PublicKeyCredentialDescriptor,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

        async with self.sessionmaker.begin() as db:
            existing = await repository.list_for_user(db, user_id)
            started = await self._new_challenge(db, REGISTRATION, user_id, client)
        if isinstance(started, AppError):
            raise started
        challenge_id, challenge = started
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.settings.webauthn_rp_name,
            user_name=username,
            user_id=user_handle(user_id),
            user_display_name=username,
            challenge=challenge,
            timeout=self._timeout_ms,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                require_resident_key=True,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=row.credential_id) for row in existing
            ],
            supported_pub_key_algs=algorithms(),
        )
        return challenge_id, json.loads(options_to_json(options))

    async def register(
        self,
        user_id: uuid.UUID,
        client: ClientInfo,
        challenge_id: str,
        credential: dict[str, Any],
        name: str,
        *,
        session_id: uuid.UUID | None = None,
    ) -> PasskeyView:
        """Check a registration response against its challenge (spent here, right or
        wrong) and store the passkey; the event names the caller's session. `InvalidPasskey`
        when it does not verify (the caller counts it against the address), `PasskeyExists`,
        `AccountDisabled`."""
        from webauthn import verify_registration_response
        from webauthn.helpers import parse_registration_credential_json
        from webauthn.helpers.structs import CredentialDeviceType

        now = self.clock.now()
        cid = _challenge_id(challenge_id)
        expected = None
        if cid is not None:
            async with self.sessionmaker.begin() as db:
                expected = await repository.spend_challenge(db, cid, REGISTRATION, now, user_id)
        if expected is None or _oversized(credential):
            raise InvalidPasskey()
        try:
            parsed = parse_registration_credential_json(credential)
            verified = verify_registration_response(
                credential=parsed,
                expected_challenge=expected,
                expected_rp_id=self.rp_id,
                expected_origin=list(self.settings.webauthn_origins),
                require_user_presence=True,
                require_user_verification=True,
                supported_pub_key_algs=algorithms(),
            )
        except Exception:
            raise InvalidPasskey() from None
        if (
            len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES
            # The id the client declares is the one the authenticator attested, or the
            # client would keep one that never signs in.
            or not secrets.compare_digest(parsed.raw_id, verified.credential_id)
            or not _usable_key(verified.credential_public_key)
            or _cross_origin(parsed.response.client_data_json)
        ):
            raise InvalidPasskey()
        transports = ",".join(t.value for t in parsed.response.transports or [])[:200]
        row = Passkey(
            id=uuid.uuid4(),
            user_id=user_id,
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            transports=transports,
            backup_eligible=(verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE),
            backup_state=verified.credential_backed_up,
            aaguid=verified.aaguid,
            name=name,
            created_at=now,
            last_used_at=None,
        )
        try:
            async with self.sessionmaker.begin() as db:
                # Under the row lock a disable takes: a disabled account gets no passkey.
                user = await users.lock(db, user_id)
                if user is None or not user.is_active:
                    raise AccountDisabled()
                if await repository.credential_exists(db, verified.credential_id):
                    raise PasskeyExists()
                await repository.add(db, row)
                await self._record(db, EventType.PASSKEY_ADDED, user, client, session_id)
        except IntegrityError:
            # Registered by a concurrent request between the check and the insert.
            raise PasskeyExists() from None
        return PasskeyView.of(row)

    # --- the owner's list ----------------------------------------------------------------

    async def list(self, user_id: uuid.UUID) -> list[PasskeyView]:
        """The user's passkeys."""
        async with self.sessionmaker() as db:
            return [PasskeyView.of(row) for row in await repository.list_for_user(db, user_id)]

    async def count(self, db: AsyncSession, user_id: uuid.UUID) -> int:
        """How many passkeys the user has."""
        return await repository.count_for_user(db, user_id)

    async def delete(
        self,
        user_id: uuid.UUID,
        passkey_id: uuid.UUID,
        client: ClientInfo,
        *,
        session_id: uuid.UUID | None = None,
    ) -> None:
        """Delete one of the user's passkeys (`NotFound` for anyone else's); the event names
        the caller's session."""
        async with self.sessionmaker.begin() as db:
            user = await users.get(db, user_id)
            if user is None or not await repository.delete_for_user(db, passkey_id, user_id):
                raise NotFound("No such passkey")
            await self._record(db, EventType.PASSKEY_REMOVED, user, client, session_id)

    async def rename(self, user_id: uuid.UUID, passkey_id: uuid.UUID, name: str) -> PasskeyView:
        """Rename one of the user's passkeys (`NotFound` for anyone else's)."""
        async with self.sessionmaker.begin() as db:
            if not await repository.rename(db, passkey_id, user_id, name):
                raise NotFound("No such passkey")
            row = await repository.get_for_user(db, passkey_id, user_id)
            assert row is not None
            return PasskeyView.of(row)

    # --- sign-in -------------------------------------------------------------------------

    async def login_options(self, client: ClientInfo) -> tuple[uuid.UUID, dict[str, Any]]:
        """A sign-in challenge and the request options: discoverable credentials only."""
        from webauthn import generate_authentication_options, options_to_json
        from webauthn.helpers.structs import UserVerificationRequirement

        async with self.sessionmaker.begin() as db:
            started = await self._new_challenge(db, AUTHENTICATION, None, client)
        if isinstance(started, AppError):
            raise started
        challenge_id, challenge = started
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=challenge,
            timeout=self._timeout_ms,
            allow_credentials=[],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        body: dict[str, Any] = json.loads(options_to_json(options))
        body["allowCredentials"] = []
        return challenge_id, body

    async def check_assertion(
        self, challenge_id: str, credential: dict[str, Any], client: ClientInfo
    ) -> tuple[PasskeyOutcome, Assertion | None]:
        """Check a sign-in's assertion: its challenge (spent here), the passkey of its
        credential id, type, origin, RP ID hash, presence and verification, signature,
        user handle and counter. The outcome names the user whenever the credential id is
        a passkey's, so that a failure is recorded as theirs."""
        from webauthn import verify_authentication_response
        from webauthn.helpers.structs import CredentialDeviceType

        now = self.clock.now()
        parsed = _parse_assertion(credential)
        cid = _challenge_id(challenge_id)
        async with self.sessionmaker.begin() as db:
            expected = (
                await repository.spend_challenge(db, cid, AUTHENTICATION, now, None)
                if cid is not None
                else None
            )
            passkey = (
                await repository.find_by_credential(db, parsed.raw_id)
                if parsed is not None
                else None
            )
            user = await users.get(db, passkey.user_id) if passkey is not None else None
        if parsed is None or passkey is None or user is None:
            return PasskeyOutcome(None, InvalidPasskey()), None
        refused = PasskeyOutcome(user, InvalidPasskey())
        if expected is None:
            return refused, None
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=expected,
                expected_rp_id=self.rp_id,
                expected_origin=list(self.settings.webauthn_origins),
                credential_public_key=passkey.public_key,
                # The counter is checked below, where a clone can be told from the rest.
                credential_current_sign_count=0,
                require_user_verification=True,
            )
        except Exception:
            return refused, None
        if _cross_origin(parsed.response.client_data_json):
            return refused, None
        # WebAuthn L3 7.2: whether a credential may be backed up is fixed when it is made.
        eligible = verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE
        if eligible != passkey.backup_eligible:
            return refused, None
        handle = parsed.response.user_handle
        if handle is None or not secrets.compare_digest(handle, user_handle(user.id)):
            return refused, None
        stored, presented = passkey.sign_count, verified.new_sign_count
        if (stored != 0 or presented != 0) and presented <= stored:

            async def clone(db: AsyncSession) -> None:
                await self._record(db, EventType.PASSKEY_CLONE_SUSPECTED, user, client)

            return PasskeyOutcome(user, InvalidPasskey(), clone), None
        assertion = Assertion(passkey.id, stored, presented, verified.credential_backed_up)
        return PasskeyOutcome(user), assertion

    async def used(self, db: Writer, assertion: Assertion) -> None:
        """In the sign-in's last transaction: the passkey's new counter and last use.
        `InvalidPasskey` when it was deleted or used with this counter meanwhile."""
        if not await repository.used(
            db, assertion.passkey_id, old_count=assertion.old_count,
            new_count=assertion.new_count, backup_state=assertion.backup_state,
            now=self.clock.now(),
        ):  # fmt: skip
            raise InvalidPasskey()

    def overtaken(
        self, assertion: Assertion, user: User, client: ClientInfo
    ) -> Callable[[AsyncSession], Awaitable[None]]:
        """What to record beside the failure of an assertion that verified but that `used`
        refused: another sign-in with the same passkey and counter got there first, so one
        of the two came from a copy (`passkey_clone_suspected`), unless the passkey was
        deleted meanwhile."""

        async def record(db: AsyncSession) -> None:
            if await db.get(Passkey, assertion.passkey_id) is not None:
                await self._record(db, EventType.PASSKEY_CLONE_SUSPECTED, user, client)

        return record

    async def _record(
        self,
        db: AsyncSession,
        type_: EventType,
        user: User,
        client: ClientInfo | None,
        session_id: uuid.UUID | None = None,
    ) -> None:
        await events.record(
            db, type_, now=self.clock.now(), username_key=user.username_key, user_id=user.id,
            ip_address=client.ip_address if client else None,
            user_agent=client.user_agent if client else None, session_id=session_id,
        )  # fmt: skip
