"""How a client reaches a module: one request's bytes in, the answer's bytes out.

`DeviceTransport` (nsm/device.py) is the `/dev/nsm` ioctl; `UnixTransport` below is the
emulator's Unix socket. Both carry exactly the CBOR bytes the ioctl would carry.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import Protocol

from nsm import _framing
from nsm.errors import ArgumentError, TransportError

__all__ = ["REQUEST_MAX", "RESPONSE_MAX", "Transport", "UnixTransport", "emulator_address"]

#: NSM_REQUEST_MAX_SIZE in include/uapi/linux/nsm.h: the kernel refuses more with EMSGSIZE.
REQUEST_MAX = 0x1000
#: NSM_RESPONSE_MAX_SIZE: the buffer the device always gets (drivers/misc/nsm.c).
RESPONSE_MAX = 0x3000

#: Environment variable that selects the emulator explicitly: `NSM_EMULATOR=unix:PATH`.
EMULATOR_ENV = "NSM_EMULATOR"


class Transport(Protocol):
    def exchange(self, request: bytes) -> bytes:
        """Send one encoded request; return the encoded answer."""
        ...

    def close(self) -> None: ...


def check_request_size(request: bytes) -> None:
    if not request:
        # An empty request is a virtio error on QEMU's device (hw/virtio/virtio-nsm.c).
        raise ArgumentError("an NSM request cannot be empty")
    if len(request) > REQUEST_MAX:
        raise ArgumentError(
            f"the encoded request is {len(request)} bytes; the NSM accepts at most {REQUEST_MAX}"
        )


def emulator_address(value: str) -> str:
    """Parse `unix:PATH` (the only emulator address form) into PATH."""
    scheme, sep, path = value.partition(":")
    if scheme != "unix" or not sep or not path:
        raise ArgumentError(f"emulator address {value!r} is not of the form unix:PATH")
    return path


class UnixTransport:
    """The emulator over a Unix socket; one connection, one request at a time."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self._path = os.fspath(path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = os.getpid()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"cannot reach the NSM emulator at {self._path}: {exc.strerror or exc}. "
                "Is `nsm emulator serve --socket PATH` running?"
            ) from exc
        return sock

    def exchange(self, request: bytes) -> bytes:
        check_request_size(request)
        if self._pid != os.getpid():
            # After fork the parent's connection is not ours to share, and its lock may have
            # been copied while held by another thread: start afresh with our own of both.
            self._lock = threading.Lock()
            if self._sock is not None:
                # Closing our copy of the descriptor leaves the parent's connection open.
                self._sock.close()
                self._sock = None
            self._pid = os.getpid()
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            try:
                _framing.write_frame(self._sock, request)
                answer = _framing.read_frame(self._sock)
            except TransportError:
                self._drop()
                raise
            if answer is None:
                self._drop()
                raise TransportError("the NSM emulator closed the connection")
            return answer

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> UnixTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
