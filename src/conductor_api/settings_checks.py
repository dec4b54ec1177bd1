"""Checks on setting values that are more than a bound: key entropy, proxy lists, and
what an error message may show of a value."""

from __future__ import annotations

import ipaddress
from typing import TypeVar

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# One IP version's networks (`collapse_addresses` takes no mix).
_Network = TypeVar("_Network", ipaddress.IPv4Network, ipaddress.IPv6Network)

# A random key of 32 characters or more has more distinct characters than this (32 hex
# digits fall below 8 about once in 10^7 keys); a typed placeholder has fewer.
MIN_SECRET_DISTINCT = 8


def weak_secret(secret: str) -> str | None:
    """Why `secret` is too predictable to sign tokens with, or None."""
    distinct = len(set(secret))
    if distinct < MIN_SECRET_DISTINCT:
        return f"has only {distinct} distinct characters (at least {MIN_SECRET_DISTINCT})"
    if secret in (secret + secret)[1:-1]:
        return "is one shorter string repeated"
    commonest = max(secret.count(ch) for ch in set(secret))
    if commonest * 2 > len(secret):
        return "is more than half one repeated character"
    return None


def _by_version(
    networks: list[IPNetwork],
) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    """The IPv4 networks, and the IPv6 ones."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return v4, v6


def _covered(networks: list[_Network]) -> int:
    """How many addresses the networks of one IP version cover together (overlaps once)."""
    return sum(n.num_addresses for n in ipaddress.collapse_addresses(networks))


def trusts_everyone(networks: list[IPNetwork]) -> bool:
    """Whether the networks together cover all of IPv4 or all of IPv6 (0.0.0.0/0, ::/0,
    or pieces such as 0.0.0.0/1 with 128.0.0.0/1, or every IPv4-mapped IPv6 address)."""
    v4, v6 = _by_version(networks)
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    return _covered(v4) >= 2**32 or _covered(v6) >= 2**128 or any(mapped.subnet_of(n) for n in v6)


# The most public addresses TRUSTED_PROXIES may cover: a /8 of IPv4, a /32 of IPv6 (what
# one provider's proxies fill at most). More trusts ordinary clients to name themselves.
MAX_PUBLIC_PROXIES = {4: 2**24, 6: 2**96}


def trusts_public_clients(networks: list[IPNetwork]) -> bool:
    """Whether the networks that are not private (RFC 1918, ULA, loopback, ...) together
    cover more than a /8 of IPv4 or a /32 of IPv6 (2000::/3, 0.0.0.0/1, ...)."""
    v4, v6 = _by_version([n for n in networks if not n.is_private])
    return _covered(v4) > MAX_PUBLIC_PROXIES[4] or _covered(v6) > MAX_PUBLIC_PROXIES[6]


# Setting names whose values are never shown in an error message: every secret setting
# (JWT_SECRET_KEY, JWT_REFRESH_SECRET_KEY, KEY_ENCRYPTION_KEY) has one of them in its name.
SECRET_NAMES = ("SECRET", "KEY")


# Query parameters of a URL whose values are never shown (`?password=`, `?sslpassword=`,
# `?passfile=` and the like).
SECRET_PARAMETERS = ("PASS", "SECRET", "KEY", "TOKEN")


def redact(value: object) -> str:
    """A setting's value as an error may show it: the password of a URL's userinfo, and the
    value of any query parameter that may hold one, are replaced by `***`
    (DATABASE_URL=postgresql://user:***@host/db?password=***)."""
    text = str(value)
    if "://" not in text:
        return repr(text)
    scheme, rest = text.split("://", 1)
    rest, question, query = rest.partition("?")
    if question:
        parameters = [p.partition("=") for p in query.split("&")]
        query = "&".join(
            f"{name}{eq}***" if eq and any(s in name.upper() for s in SECRET_PARAMETERS) else
            f"{name}{eq}{val}"
            for name, eq, val in parameters
        )  # fmt: skip
    userinfo, sep, host = rest.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return repr(f"{scheme}://{userinfo}{sep}{host}{question}{query}")
