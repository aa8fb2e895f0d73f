"""Bring `lo` up from inside the enclave, without the `ip` binary.

Nothing in the enclave's init configures networking (aws-nitro-enclaves-sdk-bootstrap init.c), so
`lo` starts DOWN and 127.0.0.1 is unreachable (ENETUNREACH) until someone sets IFF_UP; the kernel
then adds 127.0.0.1/8 by itself (linux net/ipv4/devinet.c, NETDEV_UP). Egress over vsock does not
need it; local services (health endpoint, forwarders) do.

`fcntl.ioctl` on an AF_INET datagram socket is the documented interface for these two requests
(man 7 netdevice); the "no fcntl" rule is about /dev/nsm in `nsm/`, which goes through cffi.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from enclave_net.errors import InterfaceError

__all__ = ["IFF_LOOPBACK", "IFF_RUNNING", "IFF_UP", "bring_up", "interface_flags"]

# linux/sockios.h
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
# linux/if.h
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
# struct ifreq: char ifr_name[IFNAMSIZ=16]; then a union whose first member we use is
# short ifr_flags; the union is 24 bytes on 64-bit Linux, so the struct is 40 bytes.
_IFREQ = struct.Struct("16sH22x")


def _ifreq(name: str, flags: int) -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < 16:
        raise InterfaceError(f"interface name {name!r} must be 1..15 bytes (IFNAMSIZ)")
    return _IFREQ.pack(encoded, flags)


def interface_flags(name: str = "lo") -> int:
    """The interface's flags (SIOCGIFFLAGS); `flags & IFF_UP` tells whether it is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            result = fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(name, 0))
        except OSError as exc:
            raise InterfaceError(f"SIOCGIFFLAGS {name}: {exc.strerror}") from exc
    flags: int = _IFREQ.unpack(result)[1]
    return flags


def bring_up(name: str = "lo") -> int:
    """Set IFF_UP on `name` if it is not set yet (needs CAP_NET_ADMIN); return the new flags."""
    flags = interface_flags(name)
    if flags & IFF_UP:
        return flags
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(name, flags | IFF_UP))
        except OSError as exc:
            raise InterfaceError(
                f"SIOCSIFFLAGS {name} up: {exc.strerror} (needs root / CAP_NET_ADMIN)"
            ) from exc
    return interface_flags(name)
