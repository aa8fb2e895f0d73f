"""An HTTPS server for loopback stand-ins (the KMS double, the oracle's replay exchange).

`ThreadingTLSServer` is `http.server.ThreadingHTTPServer` with TLS: the accept loop only wraps
the socket, and the handshake runs in the request's own thread with a timeout, so one client
that connects and never finishes its handshake cannot stall every other connection. A failed
handshake drops that connection (`on_handshake_error` hears why); `on_error` hears of
failures inside a request.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HANDSHAKE_TIMEOUT", "QuietHandler", "ThreadingTLSServer"]

#: A TLS handshake or request head that takes longer than this is a stuck client: drop it.
HANDSHAKE_TIMEOUT = 10.0


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) and no access log: the log would be the only place a request line,
    which may carry a secret, could leak."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingTLSServer(ThreadingHTTPServer):
    """`ThreadingTLSServer((host, port), Handler, context)`; serve with `serve_forever`."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        *,
        timeout: float = HANDSHAKE_TIMEOUT,
        on_error: Callable[[], None] | None = None,
        on_handshake_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.context = context
        self.socket_timeout = timeout
        self._on_error = on_error
        self._on_handshake_error = on_handshake_error
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # Headers and body go out in two writes; with Nagle on, the second waits for the
        # client's delayed ACK (40 ms), and every keep-alive latency would measure that.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The handshake runs in the request's thread (finish_request), not in the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.socket_timeout)
            request.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            if self._on_handshake_error is not None:
                self._on_handshake_error(exc)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # No traceback on stderr: a stand-in's caller decides what a failed request means.
        if self._on_error is not None:
            self._on_error()
