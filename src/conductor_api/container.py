"""The services one application instance shares, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from conductor_api.auth.principal import (
    PostgresPrincipalLoader,
    PrincipalLoader,
    make_principal_loader,
)
from conductor_api.auth.second_step import SecondStep
from conductor_api.auth.service import SignInService
from conductor_api.clock import Clock
from conductor_api.config import Settings
from conductor_api.db import Autocommit, make_engine, make_session_factory
from conductor_api.dpop.service import DPoP
from conductor_api.keys.manager import KeyManager
from conductor_api.metrics.service import Metrics
from conductor_api.mfa.service import SecondFactor
from conductor_api.passkeys.service import PasskeyService
from conductor_api.retention.pruner import Pruner
from conductor_api.retention.task import PeriodicPruner
from conductor_api.security.passwords import PasswordHasher
from conductor_api.security.tokens import TokenService
from conductor_api.sessions.rotation import Rotations, make_rotations
from conductor_api.sqlite_wal import WalCheckpointer


@dataclass
class Container:
    """Settings, clock, database, hasher, tokens, the principal loader and metrics of one app."""

    settings: Settings
    clock: Clock
    engine: AsyncEngine
    autocommit: Autocommit
    rotations: Rotations
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    tokens: TokenService
    principals: PrincipalLoader
    signin: SignInService
    mfa: SecondFactor
    passkeys: PasskeyService
    second_step: SecondStep
    pruner: PeriodicPruner | None
    # None in the HS* modes, which sign with JWT_SECRET_KEY.
    keys: KeyManager | None
    metrics: Metrics
    dpop: DPoP
    checkpointer: WalCheckpointer | None

    @classmethod
    async def start(cls, settings: Settings, clock: Clock) -> Container:
        """Build every service; the dummy hash is computed here, once."""
        # On SQLite the WAL is checkpointed by a thread of its own, not on the event loop.
        checkpointer = WalCheckpointer(settings.sqlite_path) if settings.is_sqlite else None
        engine = make_engine(settings, autocheckpoint=checkpointer is None)
        sessionmaker = make_session_factory(engine)
        # On PostgreSQL the loader's pool serves the statements that need no ORM.
        principals = make_principal_loader(settings)
        pool = principals.pool if isinstance(principals, PostgresPrincipalLoader) else None
        autocommit = Autocommit(settings, engine, pool, autocheckpoint=checkpointer is None)
        metrics = Metrics()
        hasher = PasswordHasher(settings.password_hash_concurrency, metrics)
        await hasher.start()
        keys = KeyManager(settings, clock, sessionmaker) if settings.asymmetric else None
        if keys is not None:
            try:
                await keys.start()
            except BaseException:
                await engine.dispose()
                hasher.close()
                raise
        tokens = TokenService(
            access_secret=settings.access_secret,
            refresh_secret=settings.refresh_secret,
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=timedelta(minutes=settings.access_token_expire_minutes),
            keyring=keys.ring if keys is not None else None,
        )
        pruner = None
        if settings.prune_interval_seconds > 0:
            # On SQLite an engine of its own, off the event loop (`make_engine`).
            own = make_engine(settings, inline=False) if settings.is_sqlite else None
            pruner = PeriodicPruner(
                Pruner(settings, own or engine, clock.now), settings.prune_interval_seconds, own
            )
            pruner.start()
        mfa = SecondFactor(settings.kek)
        passkeys = PasskeyService(settings, clock, sessionmaker)
        signin = SignInService(
            settings, clock, sessionmaker, autocommit, hasher, tokens, mfa, passkeys
        )
        if checkpointer is not None:
            checkpointer.start()
        return cls(
            settings=settings,
            clock=clock,
            engine=engine,
            autocommit=autocommit,
            rotations=make_rotations(settings, autocommit, pool),
            sessionmaker=sessionmaker,
            hasher=hasher,
            tokens=tokens,
            principals=principals,
            signin=signin,
            mfa=mfa,
            passkeys=passkeys,
            second_step=SecondStep(signin),
            pruner=pruner,
            keys=keys,
            metrics=metrics,
            dpop=DPoP.for_database(settings, principals),
            checkpointer=checkpointer,
        )

    async def close(self) -> None:
        """Stop the pruner and the key re-reads, release connections and threads."""
        if self.pruner is not None:
            await self.pruner.stop()
        if self.keys is not None:
            await self.keys.close()
        await self.dpop.close()
        await self.principals.close()
        await self.autocommit.dispose()
        await self.engine.dispose()
        if self.checkpointer is not None:
            await self.checkpointer.close()
        self.hasher.close()
