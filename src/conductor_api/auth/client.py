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
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # A dual-stack socket or proxy shows an IPv4 client as ::ffff:a.b.c.d: the client
        # (and TRUSTED_PROXIES) know it as IPv4. A zone (`%eth0`) names an interface of the
        # host that saw the address, not part of it (and may be any length).
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(host.partition("%")[0])
    return address


def _peer_trusted(request: Request, trusted: list[IPNetwork]) -> bool:
    peer_ip = _parse(request.client.host) if request.client else None
    return peer_ip is not None and any(peer_ip in net for net in trusted)


def _last(request: Request, name: str) -> str | None:
    values = ",".join(request.headers.getlist(name)).split(",")
    value = values[-1].strip()
    return value or None


def request_url(request: Request, trusted: list[IPNetwork]) -> str:
    """The URL as the client used it, without query (what a DPoP proof's `htu` names).

    Scheme and host are the connection's (the Host header) unless the peer is one of
    TRUSTED_PROXIES: only then are `X-Forwarded-Proto` and `X-Forwarded-Host` believed, and
    of each the last value, the one the proxy nearest to this server wrote (a proxy that
    appends to a client's own header leaves the client's value in front). The path is the
    raw one the client sent, so that its percent-encoding is compared as written."""
    scheme = request.scope.get("scheme", "http")
    host = request.headers.get("host", "")
    if trusted and _peer_trusted(request, trusted):
        proto = _last(request, "x-forwarded-proto")
        if proto is not None and proto.lower() in ("http", "https"):
            scheme = proto.lower()
        host = _last(request, "x-forwarded-host") or host
    if not host:
        server = request.scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else request.scope.get("path", "/")
    return f"{scheme}://{host}{path.partition('?')[0]}"


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
    return ClientInfo(
        ip_address=client_address(request, trusted),
        user_agent=_text(request.headers.get("user-agent", ""))[:USER_AGENT_MAX],
    )


def _text(header: str) -> str:
    """A header value as text: ASGI servers hand over its bytes as Latin-1, and a client
    that sends anything else sends UTF-8 (a user agent naming the phone's model); bytes
    that are not UTF-8 stay as Latin-1 read them."""
    if header.isascii():
        return header
    raw = header.encode("latin-1", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return header
