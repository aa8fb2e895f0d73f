"""The parent-side egress proxy's configuration: routes, the CONNECT allow list, name pins,
limits, the TOML file that holds them (see docs/deployment.md), and which upstream addresses
are never dialled.
"""

from __future__ import annotations

import ipaddress
import tomllib
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave_net.address import (
    Address,
    HostPort,
    is_ip_literal,
    parse_address,
    parse_host_port,
)
from enclave_net.errors import AddressError, ProxyConfigError

__all__ = [
    "METADATA_ADDRESSES",
    "Limits",
    "Pin",
    "ProxyConfig",
    "ProxyRoute",
    "address_refusal",
    "load_config",
    "parse_pin",
    "parse_route_spec",
]

# AWS instance metadata service, IPv4 and IPv6 (docs.aws.amazon.com/AWSEC2/latest/UserGuide/
# instancedata-data-retrieval.html). Reaching it from the enclave would hand out role credentials.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-proxy limits; every one of them exists because a misbehaving client could otherwise
    hold resources forever (vsock-proxy's select loop has no timeout, vsock_proxy/src/proxy.rs)."""

    max_connections: int = 1024  # open client connections, tunnels and handshakes together
    head_timeout: float = 10.0  # the CONNECT head must arrive within this (slowloris)
    max_head_bytes: int = 8 * 1024  # request line + headers; a CONNECT needs ~100 bytes
    connect_timeout: float = 10.0  # DNS + TCP connect to the upstream
    idle_timeout: float = 300.0  # no byte in either direction for this long: close
    total_timeout: float = 3600.0  # hard cap on a tunnel's life
    # The StreamReader bound while a CONNECT head is read; in the tunnel, the write-buffer
    # high-water mark per direction (reading pauses above it), so a direction holds at most this
    # plus one transport read (256 KiB).
    buffer_bytes: int = 64 * 1024
    # getaddrinfo returns no TTL; this is the re-resolution period instead (vsock-proxy uses the
    # record's TTL, aws-nitro-enclaves-cli PR #606). Failures re-resolve at once regardless.
    resolve_ttl: float = 60.0
    backlog: int = 512

    def __post_init__(self) -> None:
        for name in ("head_timeout", "connect_timeout", "idle_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ProxyConfigError(f"limits.{name} must be positive")
        for name in ("max_connections", "max_head_bytes", "buffer_bytes", "backlog"):
            if getattr(self, name) < 1:
                raise ProxyConfigError(f"limits.{name} must be at least 1")
        if self.resolve_ttl < 0:
            raise ProxyConfigError("limits.resolve_ttl must not be negative")


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    listen: Address
    upstream: HostPort


@dataclass(frozen=True, slots=True)
class Pin:
    """`--resolve HOST=IP` (or `HOST:PORT=IP:PORT`): answer for a name without DNS."""

    ip: str
    port: int | None = None


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    routes: tuple[ProxyRoute, ...] = ()
    connect: Address | None = None
    allow: frozenset[HostPort] = frozenset()
    pins: Mapping[str, Pin] = field(default_factory=dict)  # key: "host" or "host:port"
    allow_private: bool = False
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pins", types.MappingProxyType(dict(self.pins)))
        object.__setattr__(self, "allow", frozenset(self.allow))
        if not self.routes and self.connect is None:
            raise ProxyConfigError("nothing to serve: give --route and/or --connect")
        if self.allow and self.connect is None:
            raise ProxyConfigError("--allow needs a --connect listener")
        if self.connect is not None and not self.allow:
            raise ProxyConfigError("--connect without --allow would refuse everything")
        listens = [r.listen for r in self.routes] + ([self.connect] if self.connect else [])
        if len(set(listens)) != len(listens):
            raise ProxyConfigError("two listeners share one address")


def parse_pin(text: str) -> tuple[str, Pin]:
    name, sep, target = text.partition("=")
    if not sep:
        raise ProxyConfigError(f"--resolve {text!r}: expected HOST=IP or HOST:PORT=IP:PORT")
    try:
        if ":" in name and not name.startswith("["):
            key = str(parse_host_port(name))
            dest = parse_host_port(target)
            if not is_ip_literal(dest.host):
                raise ProxyConfigError(f"--resolve {text!r}: {dest.host} is not an IP address")
            return key, Pin(dest.host, dest.port)
        if not is_ip_literal(target):
            raise ProxyConfigError(f"--resolve {text!r}: {target!r} is not an IP address")
        return parse_host_port(f"{name}:1").host, Pin(str(ipaddress.ip_address(target)))
    except AddressError as exc:
        raise ProxyConfigError(f"--resolve {text!r}: {exc}") from exc


def parse_route_spec(text: str) -> ProxyRoute:
    # Host names cannot contain "=", Unix paths can: split on the last one.
    listen, sep, upstream = text.rpartition("=")
    if not sep:
        raise ProxyConfigError(f"--route {text!r}: expected LISTEN_ADDRESS=HOST:PORT")
    try:
        return ProxyRoute(parse_address(listen), parse_host_port(upstream))
    except AddressError as exc:
        raise ProxyConfigError(f"--route {text!r}: {exc}") from exc


def load_config(
    path: Path | None = None,
    *,
    routes: Iterable[str] = (),
    connect: str | None = None,
    allow: Iterable[str] = (),
    resolve: Iterable[str] = (),
    allow_private: bool | None = None,
) -> ProxyConfig:
    """Merge a TOML config file (see deploy/egress.toml) with command-line values."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProxyConfigError(f"config {path}: {exc}") from exc
    try:
        route_specs = [f"{r['listen']}={r['upstream']}" for r in data.get("route", [])]
        section = data.get("connect", {})
        connect = connect or section.get("listen")
        allow_list = [*section.get("allow", []), *allow]
        pins = [f"{k}={v}" for k, v in data.get("resolve", {}).items()]
        limits = Limits(**data.get("limits", {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProxyConfigError(f"config {path}: {exc!r}") from exc
    try:
        allowed = frozenset(parse_host_port(a) for a in allow_list)
        connect_address = parse_address(connect) if connect else None
    except AddressError as exc:
        raise ProxyConfigError(str(exc)) from exc
    return ProxyConfig(
        routes=tuple(parse_route_spec(r) for r in [*route_specs, *routes]),
        connect=connect_address,
        allow=allowed,
        pins=dict(parse_pin(p) for p in [*pins, *resolve]),
        allow_private=bool(data.get("allow_private", False))
        if allow_private is None
        else allow_private,
        limits=limits,
    )


# IPv6 forms that carry an IPv4 address which a translator, a relay or the host's own stack
# delivers to: dialling the IPv6 address reaches the IPv4 one, so the IPv4 one is judged.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 §2.5.5.1, deprecated
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291 §2.5.5.2
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 §2.1 (SIIT)
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1: /96 only
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: any RFC 6052 length
_6TO4 = ipaddress.IPv6Network("2002::/16")  # RFC 3056 §2
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380 §4


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address at RFC 6052 §2.2's position after a prefix of this length (bits 64-71,
    the "u" octet, never carry address bits)."""
    octets = [i for i in range(prefix_length // 8, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(ip.packed[i] for i in octets))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses this IPv6 address leads to, each with the name of its form."""
    if ip.is_unspecified or ip.is_loopback:  # :: and ::1 are IPv6's own, not IPv4-compatible
        return []
    for form, network in (
        ("IPv4-mapped", _IPV4_MAPPED),
        ("IPv4-translated", _IPV4_TRANSLATED),
        ("IPv4-compatible", _IPV4_COMPATIBLE),
        ("NAT64", _NAT64_WELL_KNOWN),
    ):
        if ip in network:
            return [(form, _rfc6052_ipv4(ip, 96))]
    if ip in _6TO4:
        return [("6to4", ipaddress.IPv4Address(ip.packed[2:6]))]
    if ip in _TEREDO:
        # RFC 4380 §4: the server's address in bits 32-63, the client's in the last 32 bits
        # with every bit inverted ("obfuscated").
        client = bytes(b ^ 0xFF for b in ip.packed[12:16])
        return [
            ("Teredo server", ipaddress.IPv4Address(ip.packed[4:8])),
            ("Teredo client", ipaddress.IPv4Address(client)),
        ]
    return []


def address_refusal(ip_text: str, *, allow_private: bool) -> str | None:
    """Why this upstream IP is refused, or None if it may be dialled.

    An IPv6 address that embeds an IPv4 one (IPv4-mapped, -compatible or -translated, NAT64,
    6to4, Teredo) is refused when the IPv4 address would be: these forms are routes to it."""
    ip = ipaddress.ip_address(ip_text)
    if isinstance(ip, ipaddress.IPv6Address):
        for form, inner in _embedded_ipv4(ip):
            why = _refusal(inner, allow_private=allow_private)
            if why is not None:
                return f"{ip} embeds {inner} ({form}): {why}"
        if ip in _NAT64_LOCAL:
            # A site's own translator (RFC 8215), not global. It puts the IPv4 address after a
            # /96, /64, /56 or /48, the site's choice: every position is judged. The bits after
            # the address are zero (RFC 6052 §2.2's suffix): 0.0.0.0 marks an unused position.
            if not allow_private:
                return (
                    f"{ip} is in the local-use NAT64 prefix {_NAT64_LOCAL}, not globally "
                    "routable (--allow-private permits it)"
                )
            for length in (96, 64, 56, 48):
                inner = _rfc6052_ipv4(ip, length)
                why = None if inner.is_unspecified else _refusal(inner, allow_private=True)
                if why is not None:
                    return f"{ip} embeds {inner} (NAT64 after /{length}): {why}"
    return _refusal(ip, allow_private=allow_private)


def _refusal(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool
) -> str | None:
    if ip in METADATA_ADDRESSES:
        return f"{ip} is the cloud instance metadata service"
    if ip.is_link_local:
        return f"{ip} is link-local"
    if ip.is_multicast:
        return f"{ip} is multicast"
    if ip.is_unspecified:
        return f"{ip} is unspecified"
    if allow_private:
        return None
    if ip.is_loopback:
        return f"{ip} is loopback (--allow-private permits it)"
    if ip.is_private:
        return f"{ip} is private (--allow-private permits it)"
    if not ip.is_global:
        return f"{ip} is not globally routable (--allow-private permits it)"
    return None
