"""Settings, read from the environment and `.env`, validated before anything starts."""

from __future__ import annotations

import base64
import binascii
import difflib
import fcntl
import io
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from conductor_api.settings_checks import (
    SECRET_NAMES,
    redact,
    trusts_everyone,
    trusts_public_clients,
    weak_secret,
)
from conductor_api.storage import make_private_dir

DEFAULT_DATA_DIR = Path("./data")
SECRETS_FILE_NAME = "secrets.json"
MIN_SECRET_BYTES = 32
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


ANDROID_ORIGIN_PREFIX = "android:apk-key-hash:"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}")
_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
# 32 bytes in unpadded base64url: 42 characters, then one whose low 2 bits are 0.
_APK_KEY_HASH = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}")


class ConfigError(Exception):
    """A setting that cannot be used; the message is one line naming the variable."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def hash_threads_per_worker(workers: int) -> int:
    """PASSWORD_HASH_CONCURRENCY's default for each of `workers` workers: the machine's
    cores shared among them, at least one each. Argon2id keeps a core busy for a whole
    hash: more hashing threads than cores add no verifies per second, only a 19 MiB buffer
    each and turns taken on the cores (two workers of two threads each on two cores spent
    about a sixth more CPU a verify than the threads of one: bench/RESULTS.md)."""
    return max(1, (os.cpu_count() or 1) // workers)


# How a whole-number setting is written: digits, perhaps a sign, perhaps spaces around.
_DIGITS = re.compile(r"\s*[+-]?[0-9]+\s*")


class Settings(BaseSettings):
    """Every setting of the contract's configuration table, plus a few operational ones."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    jwt_secret_key: SecretStr | None = None
    jwt_refresh_secret_key: SecretStr | None = None
    # The names of the secrets taken from the data directory's secrets file (generated there
    # on a first start) rather than set: see `_resolve_secrets`.
    _generated: frozenset[str] = PrivateAttr(default=frozenset())
    # EdDSA and ES256 sign with the database's key set; the HS* modes with JWT_SECRET_KEY.
    jwt_algorithm: Literal["EdDSA", "ES256", "HS256", "HS384", "HS512"] = "EdDSA"
    jwt_issuer: str = Field(default="conductor-api", min_length=1, max_length=256)
    jwt_audience: str = Field(default="conductor-android", min_length=1, max_length=256)

    android_api_host: str = "127.0.0.1"
    android_api_port: int = Field(default=8000, ge=1, le=65535)
    conductor_data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Upper bounds: past them a setting no longer protects anything (a day-long access
    # token outlives any revocation worth making; a minute of grace is already generous).
    access_token_expire_minutes: int = Field(default=30, ge=1, le=1440)
    refresh_token_expire_days: int = Field(default=7, ge=1, le=365)
    session_max_days: int = Field(default=90, ge=1, le=3650)
    refresh_reuse_grace_seconds: int = Field(default=10, ge=0, le=60)
    min_password_length: int = Field(default=15, ge=8, le=1024)
    # Failure limits go high for load tests and fuzzing; past a million they mean "off".
    max_failed_login_attempts: int = Field(default=5, ge=1, le=1_000_000)
    lockout_minutes: int = Field(default=15, ge=1, le=1440)
    max_failed_logins_per_ip: int = Field(default=50, ge=1, le=1_000_000)
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    allow_registration: bool = False
    # How long a device token (answered by every sign-in) stays valid.
    device_token_days: int = Field(default=180, ge=1, le=3650)
    # Registrations (each an Argon2id hash) from one address within LOCKOUT_MINUTES.
    max_registrations_per_ip: int = Field(default=10, ge=1, le=1_000_000)
    # Passkey challenges (sign-in ones need no token; registration ones count too), each a
    # stored row, from one address within LOCKOUT_MINUTES.
    max_passkey_challenges_per_ip: int = Field(default=100, ge=1, le=1_000_000)

    # DPoP (RFC 9449): how far a proof's iat may be from the server's clock, server nonces,
    # and whether every sign-in and refresh must be bound to a key.
    dpop_max_skew_seconds: int = Field(default=60, ge=1, le=600)
    dpop_require_nonce: bool = False
    require_dpop: bool = False

    # Operational settings beyond the contract's table (documented in .env.example).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    password_hash_concurrency: int = Field(
        default_factory=lambda: hash_threads_per_worker(1), ge=1, le=256
    )
    database_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # A request's line, headers and body arrive within this of its first byte (a connection's
    # first request: of the connection), or the connection is closed (serving/protocol.py).
    request_timeout_seconds: float = Field(default=30.0, ge=1, le=600)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Retention (see conductor_api.retention): how long history is kept, how often serve prunes.
    event_retention_days: int = Field(default=90, ge=1, le=36500)
    session_retention_days: int = Field(default=30, ge=1, le=36500)
    prune_interval_seconds: int = Field(default=3600, ge=0, le=7 * 86400)
    prune_batch_size: int = Field(default=500, ge=10, le=10000)

    # Signing keys (EdDSA/ES256): the key set in the database and its rotation.
    key_encryption_key: SecretStr | None = None
    key_publish_seconds: int = Field(default=300, ge=0, le=7 * 86400)
    key_rotation_days: int = Field(default=30, ge=0, le=3650)
    # How often each worker re-reads the key set (and rotates/retires when due).
    key_refresh_seconds: float = Field(default=30.0, ge=0.1, le=60)

    # Metrics (contract section "Metrics"): off unless METRICS_PORT is set.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # Passkeys (contract section "Passkeys"): off unless WEBAUTHN_RP_ID is set.
    webauthn_rp_id: str | None = None
    webauthn_rp_name: str = Field(default="Conductor", min_length=1, max_length=64)
    webauthn_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webauthn_challenge_seconds: int = Field(default=300, ge=30, le=3600)
    android_package_name: str | None = None
    android_cert_fingerprints: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin == "*":
                raise ValueError("'*' is refused: credentials are allowed, so list exact origins")
            parts = urlsplit(origin)
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
            ):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return [origin.rstrip("/") for origin in origins]

    @field_validator("webauthn_rp_id", "android_package_name", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("conductor_data_dir", mode="before")
    @classmethod
    def _empty_is_the_default(cls, value: object) -> object:
        # Blank (a template's `CONDUCTOR_DATA_DIR=`) would be the working directory.
        return DEFAULT_DATA_DIR if isinstance(value, str) and not value.strip() else value

    @field_validator("webauthn_rp_id")
    @classmethod
    def _check_rp_id(cls, value: str | None) -> str | None:
        if value is not None and value != value.lower() and _DOMAIN.fullmatch(value.lower()):
            raise ValueError(f"write the domain in lower case ({value.lower()})")
        # An IPv4 address matches the pattern; no top-level domain is all digits.
        if value is not None and (not _DOMAIN.fullmatch(value) or value.rsplit(".")[-1].isdigit()):
            raise ValueError("not a domain like example.com (no scheme, port, path or IP address)")
        # A bare top-level domain is a public suffix: no browser or Credential Manager
        # accepts it, so passkeys would never work (localhost stays, for development).
        if value is not None and "." not in value and value != "localhost":
            raise ValueError("a top-level domain alone; give the site's domain, like example.com")
        return value

    @field_validator("webauthn_origins", "android_cert_fingerprints", mode="before")
    @classmethod
    def _parse_lists(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webauthn_origins")
    @classmethod
    def _check_webauthn_origins(cls, origins: list[str]) -> list[str]:
        checked: list[str] = []
        for origin in origins:
            if origin.startswith(ANDROID_ORIGIN_PREFIX):
                # Exactly as Credential Manager spells it (unpadded base64url; origins are
                # compared as strings): another spelling of the hash would never match.
                if not _APK_KEY_HASH.fullmatch(origin.removeprefix(ANDROID_ORIGIN_PREFIX)):
                    raise ValueError(
                        "an Android origin is android:apk-key-hash: and the base64url "
                        "SHA-256 of the app's signing certificate"
                    )
                checked.append(origin)
                continue
            parts = urlsplit(origin)
            if (
                parts.scheme != "https"
                or not parts.hostname
                or parts.username is not None
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
            ):
                raise ValueError(
                    "each must be an origin like https://example.com or "
                    "android:apk-key-hash:<base64url SHA-256>"
                )
            # As a browser serializes it (origins are compared as strings): the host in
            # lower case, no default port, no trailing slash.
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            port = "" if parts.port in (None, 443) else f":{parts.port}"
            checked.append(f"https://{host}{port}")
        return checked

    @field_validator("android_package_name")
    @classmethod
    def _check_package(cls, value: str | None) -> str | None:
        if value is not None and not _PACKAGE.fullmatch(value):
            raise ValueError("not an Android package name like com.example.conductor")
        return value

    @field_validator("android_cert_fingerprints")
    @classmethod
    def _check_fingerprints(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _FINGERPRINT.fullmatch(value):
                raise ValueError("each must be a SHA-256 fingerprint, 32 colon-separated hex bytes")
        return [v.upper() for v in values]

    @model_validator(mode="after")
    def _check_webauthn(self) -> Settings:
        # Checked with passkeys off too: a half-set pair would otherwise surface only on the
        # day passkeys are turned on.
        if (self.android_package_name is None) != (not self.android_cert_fingerprints):
            raise ValueError(
                "ANDROID_CERT_FINGERPRINTS: set both ANDROID_PACKAGE_NAME and "
                "ANDROID_CERT_FINGERPRINTS, or neither"
            )
        if self.webauthn_rp_id is None:
            # Passkey settings without the RP ID would do nothing, without a word.
            for name in ("webauthn_origins", "webauthn_rp_name", "webauthn_challenge_seconds"):
                if name in self.model_fields_set and getattr(self, name):
                    raise ValueError(
                        f"{name.upper()}: set WEBAUTHN_RP_ID too (passkeys are off without it)"
                    )
            return self
        rp_id = self.webauthn_rp_id
        if not self.webauthn_origins:
            raise ValueError("WEBAUTHN_ORIGINS: required when WEBAUTHN_RP_ID is set")
        for origin in self.webauthn_origins:
            host = urlsplit(origin).hostname if origin.startswith("https://") else None
            if host is not None and host != rp_id and not host.endswith("." + rp_id):
                raise ValueError(
                    f"WEBAUTHN_ORIGINS: {origin} is not on WEBAUTHN_RP_ID {rp_id} "
                    "or one of its subdomains"
                )
        return self

    @property
    def generated_jwt_secrets(self) -> dict[str, str]:
        """The JWT secrets this process took from the data directory's secrets file
        (generated there on a first start), by setting name; none that were set."""
        values = {
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_REFRESH_SECRET_KEY": self.jwt_refresh_secret_key,
        }
        return {
            name: value.get_secret_value()
            for name, value in values.items()
            if name in self._generated and value is not None
        }

    @property
    def passkeys_on(self) -> bool:
        """Whether passkeys are on (WEBAUTHN_RP_ID is set)."""
        return self.webauthn_rp_id is not None

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: object) -> object:
        parts = _split_csv(value)
        if isinstance(parts, list):
            try:
                return [_unmapped(ipaddress.ip_network(str(p), strict=False)) for p in parts]
            except ValueError as e:
                raise ValueError(f"not an address or network: {e}") from None
        return parts

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, networks: list[IPNetwork]) -> list[IPNetwork]:
        if trusts_everyone(networks):
            raise ValueError(
                "trusts every address, so any client could choose its own address "
                "(X-Forwarded-For) and escape the per-address limit; list your proxies"
            )
        if trusts_public_clients(networks):
            raise ValueError(
                "trusts more than a /8 of public IPv4 addresses or a /32 of IPv6, so ordinary "
                "clients could choose their own address (X-Forwarded-For) and escape the "
                "per-address limit; list your proxies"
            )
        return networks

    @field_validator("jwt_issuer", "jwt_audience")
    @classmethod
    def _check_claim(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("jwt_secret_key", "jwt_refresh_secret_key")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        secret = value.get_secret_value()
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
        weakness = weak_secret(secret)
        if weakness is not None:
            raise ValueError(
                f"{weakness}; use a random value, e.g. from "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return value

    @field_validator("key_encryption_key")
    @classmethod
    def _check_kek(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(decode_kek(value.get_secret_value()) or b"") < MIN_SECRET_BYTES:
            raise ValueError(
                f"KEY_ENCRYPTION_KEY: must be at least {MIN_SECRET_BYTES} random bytes in base64url"
            )
        weakness = weak_secret(value.get_secret_value())
        if weakness is not None:
            raise ValueError(
                f"{weakness}; use a random value, e.g. from "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in _DRIVERS:
            raise ValueError("unknown scheme; use sqlite:///path or postgresql://user@host/db")
        try:
            parsed = make_url(value)
            port = parsed.port  # a port that is not a number fails here, not at the first query
        except (ArgumentError, ValueError):
            raise ValueError(
                "not a valid URL; use postgresql://user:password@host:5432/db"
            ) from None
        if scheme.startswith("sqlite"):
            # The file is opened by path in more than one place: parameters would name another.
            if parsed.query:
                raise ValueError("a SQLite URL takes no parameters; use sqlite:///path")
            if not parsed.database or parsed.database.startswith((":memory:", "file:")):
                raise ValueError("needs the path of a file; use sqlite:///path")
            return value
        if port is not None and not 0 < port < 65536:
            raise ValueError("the port must be 1 to 65535")
        if "@" in (parsed.host or ""):
            # `postgresql://app:p@ss@db/x`: the host would be `ss@db`, unknown to any DNS.
            raise ValueError("an @ in the user or password must be written %40")
        if not parsed.database:
            # asyncpg would take the user's name for it: the schema would go wherever that is.
            raise ValueError("needs a database name; use postgresql://user@host:5432/db")
        unknown = sorted(set(parsed.query) - _POSTGRES_PARAMETERS)
        if unknown:
            # Every parameter is passed to asyncpg.connect(): an unknown one fails there.
            raise ValueError(
                f"unknown parameter {unknown[0]!r}; the driver (asyncpg) takes "
                f"{', '.join(sorted(_POSTGRES_PARAMETERS))} (ssl=require, not sslmode)"
            )
        ssl = parsed.query.get("ssl")
        if ssl is not None and ssl not in _SSL_MODES:
            raise ValueError(f"ssl must be one of {', '.join(_SSL_MODES)}")
        return value

    @field_validator("android_api_host", "metrics_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return listen_host(value)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers_in_digits(cls, value: object, info: ValidationInfo) -> object:
        # Pydantic alone also reads Python's `1_000` and a float's `8000.0` as whole numbers.
        field = cls.model_fields.get(info.field_name or "")
        whole = field is not None and int in (field.annotation, *get_args(field.annotation))
        if whole and isinstance(value, str) and value.strip() and not _DIGITS.fullmatch(value):
            raise ValueError("must be a whole number, in digits")
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_metrics_port(self) -> Settings:
        if self.metrics_port is None and "metrics_host" in self.model_fields_set:
            raise ValueError("METRICS_HOST: set METRICS_PORT too (metrics are off without it)")
        if self.metrics_port is not None and self.metrics_port == self.android_api_port:
            raise ValueError("METRICS_PORT: must differ from ANDROID_API_PORT (the API's port)")
        return self

    @model_validator(mode="after")
    def _check_key_publishing(self) -> Settings:
        # A key published for less than the re-read interval may sign on one instance while
        # another still serves a set without it (JWKS max-age would be 0): only 0, "sign at
        # once", says so openly.
        if 0 < self.key_publish_seconds < self.key_refresh_seconds:
            raise ValueError(
                "KEY_PUBLISH_SECONDS: must be 0 or at least KEY_REFRESH_SECONDS "
                f"({self.key_refresh_seconds:g}), or a verifier may meet a key not yet published"
            )
        return self

    @model_validator(mode="after")
    def _check_secrets_differ(self) -> Settings:
        a, b = self.jwt_secret_key, self.jwt_refresh_secret_key
        if a is not None and b is not None and a.get_secret_value() == b.get_secret_value():
            raise ValueError("JWT_REFRESH_SECRET_KEY: must differ from JWT_SECRET_KEY")
        return self

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The async driver URL for `DATABASE_URL`, or the SQLite file in the data directory."""
        if self.database_url is None:
            path = (self.conductor_data_dir / "conductor.db").resolve()
            return f"sqlite+aiosqlite:///{path}"
        scheme, rest = self.database_url.split("://", 1)
        return f"{_DRIVERS[scheme.lower()]}://{rest}"

    @property
    def sqlite_path(self) -> str:
        """The SQLite database file (only meaningful when `is_sqlite`)."""
        return self.sqlalchemy_url.split(":///", 1)[1]

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (the embedded default)."""
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def access_secret(self) -> str:
        """The access-token key; resolved by `load_settings`."""
        assert self.jwt_secret_key is not None, "load_settings() resolves the secrets"
        return self.jwt_secret_key.get_secret_value()

    @property
    def asymmetric(self) -> bool:
        """Whether access tokens are signed with the database's key set (EdDSA, ES256)."""
        return self.jwt_algorithm in ("EdDSA", "ES256")

    @property
    def kek(self) -> bytes:
        """The key-encryption key's bytes; resolved by `load_settings`."""
        assert self.key_encryption_key is not None, "load_settings() resolves the secrets"
        raw = decode_kek(self.key_encryption_key.get_secret_value())
        assert raw is not None
        return raw

    @property
    def refresh_secret(self) -> str:
        """The refresh-token key; resolved by `load_settings`."""
        assert self.jwt_refresh_secret_key is not None, "load_settings() resolves the secrets"
        return self.jwt_refresh_secret_key.get_secret_value()


# Query parameters of a PostgreSQL URL that asyncpg.connect() takes as text.
_POSTGRES_PARAMETERS = frozenset({"ssl", "host", "passfile", "target_session_attrs"})
# What asyncpg takes for `ssl` in a URL (libpq's sslmode values).
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network as the IPv4 network it maps: client addresses are read
    that way (`auth.client`), so ::ffff:10.0.0.1 in TRUSTED_PROXIES still matches its proxy.
    The whole mapped range stays as it is, for the check that refuses trusting everyone."""
    if not isinstance(network, ipaddress.IPv6Network) or network.prefixlen <= 96:
        return network
    if not network.subnet_of(_IPV4_MAPPED):
        return network
    mapped = network.network_address.ipv4_mapped
    assert mapped is not None
    return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")


# A host name as RFC 1123 allows: dot-separated labels of letters, digits and hyphens.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def listen_host(value: str) -> str:
    """An address to listen on (ANDROID_API_HOST, METRICS_HOST, `serve --host`): an IP
    address (an IPv6 one with or without brackets) or a host name; raises ValueError."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(host) or not host.strip("0123456789."):
        raise ValueError("not an IP address or a host name (e.g. 127.0.0.1, 0.0.0.0 or ::)")
    return host


def decode_kek(value: str) -> bytes | None:
    """The bytes of a base64url key-encryption key (padding optional), or None (also for
    a character outside the alphabet, which the decoder would drop without a word)."""
    if not _BASE64URL.fullmatch(value):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return None


def _first_error(error: ValidationError) -> str:
    err = error.errors()[0]
    loc = "".join(str(p) for p in err["loc"][:1]).upper()
    message = str(err["msg"]).removeprefix("Value error, ")
    if ":" in message and message.split(":", 1)[0].isupper():
        return message
    value = err.get("input")
    hidden = any(name in loc for name in SECRET_NAMES) or isinstance(value, dict)
    shown = "" if hidden else f" (got {redact(value)})"
    return f"{loc or 'settings'}: {message}{shown}"


def _resolve_secrets(settings: Settings) -> Settings:
    """Fill unset secrets from the data directory's secrets file, creating it once."""
    jwt_set = settings.jwt_secret_key is not None and settings.jwt_refresh_secret_key is not None
    if jwt_set and settings.key_encryption_key is not None:
        return settings
    if (settings.jwt_secret_key is None) != (settings.jwt_refresh_secret_key is None):
        missing = "JWT_SECRET_KEY" if settings.jwt_secret_key is None else "JWT_REFRESH_SECRET_KEY"
        raise ConfigError(f"{missing}: set both JWT secrets, or neither to have them generated")
    stored = load_or_create_secrets(settings.conductor_data_dir)
    update: dict[str, SecretStr] = {}
    if not jwt_set:
        update["jwt_secret_key"] = SecretStr(stored["jwt_secret_key"])
        update["jwt_refresh_secret_key"] = SecretStr(stored["jwt_refresh_secret_key"])
    if settings.key_encryption_key is None:
        update["key_encryption_key"] = SecretStr(stored[KEK_NAME])
    resolved = settings.model_copy(update=update)
    resolved._generated = frozenset(name.upper() for name in update)
    return resolved


KEK_NAME = "key_encryption_key"


def _new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """Read the generated secrets, or create them with owner-only permissions."""
    path = data_dir / SECRETS_FILE_NAME
    if path.exists():
        # Read first: a data directory that holds them may be read-only (PostgreSQL keeps
        # everything else, and a container or ProtectSystem=strict may mount it so).
        stored = _read_secrets(path)
        if KEK_NAME in stored:
            return stored
    try:
        make_private_dir(data_dir)
    except OSError as e:
        raise ConfigError(f"CONDUCTOR_DATA_DIR: cannot create {data_dir}: {e.strerror}") from None
    fresh = {
        "jwt_secret_key": secrets.token_urlsafe(48),
        "jwt_refresh_secret_key": secrets.token_urlsafe(48),
        KEK_NAME: _new_kek(),
    }
    try:
        # Linked into place whole: of processes starting at once exactly one link succeeds,
        # and none ever reads a file half written.
        draft = _write_draft(path, fresh)
        try:
            os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"CONDUCTOR_DATA_DIR: cannot write {path}: {e.strerror}") from None
    else:
        return fresh
    stored = _read_secrets(path)
    if KEK_NAME not in stored:
        stored = _add_kek(path)
    return stored


def adopt_generated_secrets(data_dir: Path, values: dict[str, str]) -> None:
    """Replace generated JWT secrets in the data directory's secrets file by `values` (by
    setting name), the database's: what every later start and every worker then reads."""
    lowered = {name.lower(): value for name, value in values.items()}
    _rewrite_secrets(data_dir / SECRETS_FILE_NAME, lambda stored: {**stored, **lowered})


def _write_draft(path: Path, values: dict[str, str]) -> Path:
    """`values` written whole and synced, owner-only, to a new file of this process's own
    beside `path`, to be linked or renamed into place; none is left if writing fails."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
    return draft


def _read_secrets(path: Path) -> dict[str, str]:
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            raise ValueError("not an object")
        keys = ("jwt_secret_key", "jwt_refresh_secret_key")
        if any(len(str(stored.get(k, ""))) < MIN_SECRET_BYTES for k in keys):
            raise ValueError("a key is missing or short")
        if stored[keys[0]] == stored[keys[1]]:
            # As for the settings: one key for both would let a refresh token pass as an
            # access token's signature material, and the other way round.
            raise ValueError("jwt_refresh_secret_key equals jwt_secret_key")
        if KEK_NAME in stored and len(decode_kek(str(stored[KEK_NAME])) or b"") < 32:
            raise ValueError(f"{KEK_NAME} is not 32 bytes of base64url")
    except (OSError, ValueError) as e:
        raise ConfigError(f"CONDUCTOR_DATA_DIR: unreadable secrets file {path}: {e}") from None
    return {k: str(v) for k, v in stored.items()}


def _add_kek(path: Path) -> dict[str, str]:
    """Add a key-encryption key to a secrets file written before signing keys existed (of
    processes starting together, the first adds it and the others read it)."""
    return _rewrite_secrets(
        path, lambda stored: stored if KEK_NAME in stored else {**stored, KEK_NAME: _new_kek()}
    )


def _rewrite_secrets(
    path: Path, change: Callable[[dict[str, str]], dict[str, str]]
) -> dict[str, str]:
    """The secrets file as `change` makes it of what it holds, written back when that differs.

    Under an exclusive lock on a file beside it, so that processes changing it together each
    read what the one before wrote; the file is replaced atomically, never left half written."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stored = _read_secrets(path)
            wanted = change(stored)
            if wanted != stored:
                os.replace(_write_draft(path, wanted), path)
            return wanted
    except OSError as e:
        raise ConfigError(f"CONDUCTOR_DATA_DIR: cannot write {path}: {e.strerror}") from None


def _near_miss(name: str) -> str | None:
    """The setting `name` was most likely meant as, when it is none itself but one letter or
    two away from one (`LOKOUT_MINUTES`); None for a name of its own (another program's)."""
    names = [field.upper() for field in Settings.model_fields]
    if name.upper() in names:
        return None
    close = difflib.get_close_matches(name.upper(), names, n=1, cutoff=0.85)
    return close[0] if close else None


def check_env_file(path: Path = Path(".env")) -> None:
    """A `.env` line that is not `NAME=value` (or a comment) is a setting error, not a
    warning the settings go on without: one line naming its number, never its text (it may
    hold a secret). python-dotenv's own parser, the one the settings are read with. So is a
    name a letter or two from a setting's: the setting it misspells would silently keep its
    default (a `.env` may hold other programs' names, which are left alone)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f".env: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f".env: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    for binding in parse_stream(io.StringIO(text)):
        # The parser counts from the end of the binding before, blank lines included.
        string = binding.original.string
        line = binding.original.line + string[: len(string) - len(string.lstrip())].count("\n")
        # A name alone (no `=`) parses without an error, as a name with no value, which
        # the settings would then ignore: refused as well.
        if binding.error or (binding.key is not None and binding.value is None):
            raise ConfigError(f".env: line {line} is not NAME=value; fix or remove it")
        if binding.key is not None and (meant := _near_miss(binding.key)) is not None:
            raise ConfigError(
                f".env: line {line}: {binding.key[:64]} is no setting; did you mean {meant}?"
            )


def load_settings(**overrides: object) -> Settings:
    """Build and validate settings; raise `ConfigError` with one line on any bad value."""
    check_env_file()  # also the .env that is not UTF-8: the environment is text already
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        raise ConfigError(_first_error(e)) from None
    return _resolve_secrets(settings)


def config_error(error: ValidationError) -> ConfigError:
    """The one-line `ConfigError` for settings that failed validation."""
    return ConfigError(_first_error(error))
