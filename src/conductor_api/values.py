"""Value types that every domain uses; this module imports no domain, so arrows point one way."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass


def limit_key(address: str) -> str:
    """The key of the per-address limits: the address, or for IPv6 its /64. One IPv6
    client (a home line, a cloud machine) is given a whole /64 and may send from any of its
    2^64 addresses; a /64 is one subscriber, as an IPv4 address is."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    except ValueError:
        return address


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is calling: the client address (after trusted proxies) and user agent."""

    ip_address: str
    user_agent: str

    @property
    def limit_key(self) -> str:
        """`limit_key` of the address."""
        return limit_key(self.ip_address)


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What login and refresh return."""

    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int
    session_id: uuid.UUID
    # A refresh answered inside the reuse grace window (the same child again), not rotated.
    grace: bool = False
    # Sign-ins only (never a refresh): the device token for the next sign-in.
    device_token: str | None = None
    # Bound to a DPoP key (RFC 9449): `token_type` is "DPoP".
    bound: bool = False
