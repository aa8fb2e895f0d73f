"""The parent's gateway: the enclave API on TCP, by forwarding bytes and nothing else.

Every TCP connection accepted on `listen` is relayed to the enclave's API address (vsock in
production, a Unix socket in tests and the demo). The gateway never parses, caches or rewrites:
reports are signed and documents are attested inside the enclave, so all the parent can do is
delay or drop them, never forge them. It still bounds what a client can hold: a connection cap,
a connect timeout to the enclave, an idle timeout and a total lifetime per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from enclave_net.address import Address, TcpAddress, UnixAddress, bind_socket, connect_socket

__all__ = ["Gateway", "GatewayLimits"]

log = logging.getLogger("enclave_net.gateway")


@dataclass(frozen=True, kw_only=True)
class GatewayLimits:
    max_connections: int = 256
    connect_timeout: float = 5.0  # to the enclave over vsock
    idle_timeout: float = 30.0  # no byte either way
    total_timeout: float = 120.0  # an API exchange is one request and one response
    buffer_bytes: int = 64 * 1024


class Gateway:
    """`await gw.start()`; `gw.bound` is the listening address (port 0 resolved); `close()`."""

    def __init__(
        self, *, listen: Address, enclave: Address, limits: GatewayLimits = GatewayLimits()
    ) -> None:
        self.listen = listen
        self.enclave = enclave
        self.limits = limits
        self.active = 0
        self.served = 0
        self.bound: Address = listen
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = bind_socket(self.listen, backlog=128)
        sock.setblocking(False)
        if isinstance(self.listen, TcpAddress):
            host, port = sock.getsockname()[:2]
            self.bound = TcpAddress(host, port)
        self._server = await asyncio.start_server(
            self._handle, sock=sock, limit=self.limits.buffer_bytes
        )
        log.info("gateway listening on %s, forwarding to %s", self.bound, self.enclave)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if isinstance(self.listen, UnixAddress):
            with contextlib.suppress(OSError):
                Path(self.listen.path).unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self.active >= self.limits.max_connections:
                writer.write(_unavailable("gateway over capacity"))
                await writer.drain()
                return
            self.active += 1
            try:
                await self._relay(reader, writer)
            finally:
                self.active -= 1
                self.served += 1
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        try:
            sock = await asyncio.to_thread(
                connect_socket, self.enclave, timeout=limits.connect_timeout
            )
        except OSError as exc:
            log.warning("enclave unreachable at %s: %s", self.enclave, exc)
            writer.write(_unavailable(f"enclave unreachable: {exc.strerror or exc}"))
            await writer.drain()
            return
        sock.setblocking(False)
        up_reader, up_writer = await asyncio.open_connection(sock=sock, limit=limits.buffer_bytes)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                data = await asyncio.wait_for(src.read(limits.buffer_bytes), limits.idle_timeout)
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        try:
            async with asyncio.timeout(limits.total_timeout):
                # The API answers one request per connection and then closes: done when the
                # enclave's side ends (the client's half-close must not cut the answer).
                upstream = asyncio.create_task(pump(reader, up_writer))
                try:
                    await pump(up_reader, writer)
                finally:
                    upstream.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await upstream
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


def _unavailable(reason: str) -> bytes:
    data = json.dumps({"error": {"code": "gateway.unavailable", "message": reason}}).encode()
    return (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
