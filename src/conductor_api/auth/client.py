"""The client's address: the socket peer, or X-Forwarded-For only behind a trusted proxy."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request

from conductor_api.config import IPNetwork
from conductor_api.values import ClientInfo

USER_AGENT_MAX = 512


def _without_port(value: str) -> str | None:
    """`1.2.3.4:5678` -> `1.2.3.4`, `[2001:db8::1]:443` -> `2001:db8::1` (proxies may send
    hops with ports); a bare address is returned as it is; None when malformed."""
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and _is_port(port[1:]))):
            return None
        return host
    if value.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        host, _, port = value.partition(":")
        return host if _is_port(port) else None
    return value


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = _without_port(value.strip())
    if host is None:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def client_address(request: Request, trusted: list[IPNetwork]) -> str:
    """Walk X-Forwarded-For from the right while each hop is a trusted proxy; the first
    untrusted hop is the client. Without a trusted peer the header is ignored entirely."""
    peer = request.client.host if request.client else "0.0.0.0"  # noqa: S104
    peer_ip = _parse(peer)
    if peer_ip is None or not trusted or not any(peer_ip in net for net in trusted):
        return str(peer_ip) if peer_ip else peer[:45]
    hops = [h for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    address = peer_ip
    for hop in reversed(hops):
        hop_ip = _parse(hop)
        if hop_ip is None:
            break
        address = hop_ip
        if not any(hop_ip in net for net in trusted):
            break
    return str(address)


def client_info(request: Request, trusted: list[IPNetwork]) -> ClientInfo:
    """Address and user agent of the caller, truncated to what the database keeps."""
    agent = request.headers.get("user-agent", "")[:USER_AGENT_MAX]
    return ClientInfo(ip_address=client_address(request, trusted), user_agent=agent)
