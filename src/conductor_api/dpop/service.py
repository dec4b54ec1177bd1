"""DPoP for the HTTP layer: one proof per request checked, bound to a key, spent once."""

from __future__ import annotations

from conductor_api.auth.principal import PostgresPrincipalLoader, PrincipalLoader
from conductor_api.config import Settings
from conductor_api.dpop.replay import (
    PostgresReplayCache,
    ReplayCache,
    SqliteReplayCache,
    sqlite_cache_path,
)
from conductor_api.errors import InvalidDPoPProof, UseDPoPNonce
from conductor_api.security.dpop import DPoPError, Nonces, Proof, ProofVerifier, WrongKey


class DPoP:
    """Checks the proofs of one application: the verifier, the nonces and the replay cache."""

    def __init__(self, settings: Settings, replay: ReplayCache) -> None:
        self.require_nonce = settings.dpop_require_nonce
        self.required = settings.require_dpop
        self.max_skew = settings.dpop_max_skew_seconds
        # Every instance sharing the secrets hands out and accepts the same nonces.
        self.nonces = Nonces(settings.refresh_secret.encode())
        self.verifier = ProofVerifier(settings.dpop_max_skew_seconds, self.nonces)
        self.replay = replay

    @classmethod
    def for_database(cls, settings: Settings, principals: PrincipalLoader) -> DPoP:
        """The service with the replay cache that suits the configured database."""
        timeout = settings.database_timeout_seconds
        replay: ReplayCache
        if isinstance(principals, PostgresPrincipalLoader):
            replay = PostgresReplayCache(principals.pool, timeout)
        else:
            replay = SqliteReplayCache(sqlite_cache_path(settings.sqlite_path), timeout)
        return cls(settings, replay)

    async def check(
        self,
        proofs: list[str],
        *,
        method: str,
        url: str,
        now: float,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> Proof:
        """The one proof of a request, verified (by the key `jkt` when given) and spent:
        a replayed one is refused. Every failure is a `DPoPError`."""
        if not proofs:
            raise DPoPError("a DPoP proof is required (the DPoP header)")
        if len(proofs) != 1:
            raise DPoPError("exactly one DPoP header is allowed")
        proof = self.verifier.verify(
            proofs[0], method=method, url=url, now=now, access_token=access_token,
            require_nonce=self.require_nonce,
        )  # fmt: skip
        if jkt is not None and proof.jkt != jkt:
            raise WrongKey()
        # Spent last: a proof refused for anything else is not remembered.
        if not await self.replay.first_use(proof.replay_key(), proof.iat + self.max_skew, now):
            raise DPoPError("this proof was already used (jti)")
        return proof

    def error(self, error: DPoPError, now: float, *, resource: bool) -> InvalidDPoPProof:
        """The answer to a failed proof: `use_dpop_nonce` with a fresh nonce, or
        `invalid_dpop_proof` (400 at the token endpoints, 401 with a challenge elsewhere)."""
        if error.nonce:
            return UseDPoPNonce(self.nonces.current(now), resource=resource)
        return InvalidDPoPProof(f"Invalid DPoP proof: {error.reason}", resource=resource)

    async def close(self) -> None:
        """Release the replay cache's connection."""
        await self.replay.close()
