"""A parent-side stream service: accept on one address, answer each connection in turn, in a
thread. The credentials endpoint and the sealed-blob store are both this shape."""

from __future__ import annotations

import contextlib
import socket
import threading
from abc import ABC, abstractmethod
from typing import Self

from enclave_net.address import Address, bind_socket

__all__ = ["StreamService"]

#: Seconds a peer gets to send its request and read the answer.
PEER_TIMEOUT = 5.0


class StreamService(ABC):
    """Subclasses implement `handle(conn)`; connections are served one at a time (the answers
    are tiny, and serialising them keeps the store's read-then-write atomic)."""

    name = "stream-service"

    def __init__(self, address: Address) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    def handle(self, conn: socket.socket) -> None:
        """Answer one connection (read the request, write the answer)."""

    def start(self) -> Self:
        self._sock = bind_socket(self.address, backlog=16)
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            # shutdown wakes the accept() in the serving thread; close alone may not.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=PEER_TIMEOUT)

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(PEER_TIMEOUT)
                self.handle(conn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address})"
