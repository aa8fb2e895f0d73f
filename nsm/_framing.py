"""Framing on the emulator's Unix socket, shared by the Python transport, the emulator server
and the LD_PRELOAD shim (nsm/shim/nsm_preload.c).

Each message, in both directions, is a 4-byte big-endian length followed by that many bytes of
CBOR: exactly the bytes the ioctl would carry. One connection carries any number of
request/answer pairs, strictly in turn.
"""

from __future__ import annotations

import socket
import struct

from nsm.errors import TransportError

__all__ = ["MAX_FRAME", "read_frame", "write_frame"]

#: Largest frame either side accepts: bounds memory on a hostile peer. Real messages are at
#: most 0x3000 bytes (NSM_RESPONSE_MAX_SIZE, Linux include/uapi/linux/nsm.h).
MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")


def write_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) > MAX_FRAME:
        raise TransportError(f"frame of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
    try:
        sock.sendall(_HEADER.pack(len(payload)) + payload)
    except OSError as exc:
        raise TransportError(f"emulator socket write failed: {exc}") from exc


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        try:
            chunk = sock.recv(n - len(chunks))
        except OSError as exc:
            raise TransportError(f"emulator socket read failed: {exc}") from exc
        if not chunk:
            raise TransportError("emulator closed the connection mid-message")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> bytes | None:
    """Read one frame; None on a clean end of stream between frames."""
    try:
        first = sock.recv(_HEADER.size)
    except OSError as exc:
        raise TransportError(f"emulator socket read failed: {exc}") from exc
    if not first:
        return None
    header = first + _read_exact(sock, _HEADER.size - len(first))
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise TransportError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return _read_exact(sock, length)
