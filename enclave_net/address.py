"""One address syntax for every socket: `vsock:CID:PORT`, `unix:PATH`, `tcp:HOST:PORT`.

Production uses vsock (the parent is CID 3); tests and the demo use Unix sockets in its place,
because vsock loopback (CID 1, VMADDR_CID_LOCAL since Linux 5.6) needs the `vsock_loopback`
module that CI machines rarely have. `tcp:` exists for the parent's upstream side and for
benchmarks.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from enclave_net.errors import AddressError

__all__ = [
    "PARENT_CID",
    "Address",
    "HostPort",
    "TcpAddress",
    "UnixAddress",
    "VsockAddress",
    "bind_socket",
    "connect_socket",
    "is_ip_literal",
    "new_socket",
    "parse_address",
    "parse_host_port",
    "sockaddr",
]

# The parent instance is always CID 3 on Nitro (docs.aws.amazon.com/enclaves/latest/user/
# enclave-networking.html); Firecracker uses 2 for its host, hence configurable.
PARENT_CID = 3
# CIDs and ports are 32-bit on vsock (struct sockaddr_vm in linux/vm_sockets.h).
_U32_MAX = 2**32 - 1
_TCP_PORT_MAX = 65_535
# sun_path is 108 bytes on Linux, including the terminating NUL (man 7 unix).
_UNIX_PATH_MAX = 107
# RFC 1035 §2.3.4: 253 characters for a name, 63 for a label; RFC 1123 §2.1 allows a leading digit.
_HOSTNAME_MAX = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class VsockAddress:
    cid: int
    port: int

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"tcp:{_format_host(self.host)}:{self.port}"


Address = VsockAddress | UnixAddress | TcpAddress


@dataclass(frozen=True, slots=True, order=True)
class HostPort:
    """An upstream `host:port`; the host is a lower-case DNS name or an IP literal."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{_format_host(self.host)}:{self.port}"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _parse_int(text: str, *, what: str, low: int, high: int, original: str) -> int:
    # int() accepts "+1", " 1" and "1_000"; an address must be plain digits.
    if not text.isascii() or not text.isdigit():
        raise AddressError(f"{original!r}: {what} must be a decimal number, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise AddressError(f"{original!r}: {what} {value} is outside {low}..{high}")
    return value


def _parse_host(text: str, *, original: str) -> str:
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise AddressError(f"{original!r}: {inner!r} is not an IPv6 address") from None
    if is_ip_literal(text):
        if ":" in text:
            raise AddressError(f"{original!r}: write IPv6 literals in brackets, [{text}]")
        return str(ipaddress.ip_address(text))
    host = text.lower().rstrip(".") if text.endswith(".") and len(text) > 1 else text.lower()
    if not host or len(host) > _HOSTNAME_MAX or not all(_LABEL.match(p) for p in host.split(".")):
        raise AddressError(f"{original!r}: {text!r} is not a valid host name or IP address")
    return host


def _split_host_port(text: str, *, original: str) -> tuple[str, str]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise AddressError(f"{original!r}: expected [IPV6]:PORT")
        return text[: end + 1], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise AddressError(f"{original!r}: expected HOST:PORT")
    return host, port


def parse_host_port(text: str) -> HostPort:
    """Parse `host:port` (IPv6 as `[addr]:port`) into a normalised `HostPort`."""
    host, port = _split_host_port(text, original=text)
    return HostPort(
        _parse_host(host, original=text),
        _parse_int(port, what="port", low=1, high=_TCP_PORT_MAX, original=text),
    )


def parse_address(text: str) -> Address:
    """Parse `vsock:CID:PORT`, `unix:PATH` or `tcp:HOST:PORT`; raise `AddressError` otherwise."""
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise AddressError(f"{text!r}: expected vsock:CID:PORT, unix:PATH or tcp:HOST:PORT")
    if scheme == "vsock":
        cid, sep, port = rest.partition(":")
        if not sep:
            raise AddressError(f"{text!r}: expected vsock:CID:PORT")
        return VsockAddress(
            _parse_int(cid, what="CID", low=0, high=_U32_MAX, original=text),
            _parse_int(port, what="port", low=0, high=_U32_MAX, original=text),
        )
    if scheme == "unix":
        if not rest:
            raise AddressError(f"{text!r}: empty Unix socket path")
        if "\0" in rest:
            raise AddressError(f"{text!r}: NUL byte in Unix socket path")
        if len(os.fsencode(rest)) > _UNIX_PATH_MAX:
            raise AddressError(f"{text!r}: Unix socket path longer than {_UNIX_PATH_MAX} bytes")
        return UnixAddress(rest)
    if scheme == "tcp":
        host, port = _split_host_port(rest, original=text)
        return TcpAddress(
            _parse_host(host, original=text),
            _parse_int(port, what="port", low=0, high=_TCP_PORT_MAX, original=text),
        )
    raise AddressError(f"{text!r}: unknown scheme {scheme!r}; use vsock:, unix: or tcp:")


def sockaddr(
    address: Address,
) -> tuple[socket.AddressFamily, str | tuple[str, int] | tuple[int, int]]:
    """The socket family and the address tuple to `connect`/`bind` with.

    A `tcp:` host must be an IP literal: turning a name into an address is DNS, which the enclave
    never does and the parent does explicitly (proxy.Resolver), never by accident here.
    """
    if isinstance(address, VsockAddress):
        return socket.AF_VSOCK, (address.cid, address.port)
    if isinstance(address, UnixAddress):
        return socket.AF_UNIX, address.path
    if not is_ip_literal(address.host):
        raise AddressError(f"{address}: tcp addresses must be IP literals here (no DNS lookups)")
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    return family, (address.host, address.port)


def new_socket(address: Address) -> tuple[socket.socket, str | tuple[str, int] | tuple[int, int]]:
    family, target = sockaddr(address)
    return socket.socket(family, socket.SOCK_STREAM), target


def connect_socket(address: Address, *, timeout: float | None) -> socket.socket:
    """A connected stream socket. OSError is left to the caller, which knows what it meant."""
    sock, target = new_socket(address)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_listener_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def bind_socket(address: Address, *, backlog: int) -> socket.socket:
    """A listening stream socket; a stale Unix socket file left by a dead process is replaced."""
    sock, target = new_socket(address)
    try:
        if isinstance(address, UnixAddress):
            path = Path(address.path)
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    if _unix_listener_alive(address.path):
                        raise OSError(errno.EADDRINUSE, "another process listens here", path)
                    path.unlink()
            except FileNotFoundError:
                pass
        elif isinstance(address, TcpAddress):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
