"""The parent's gateway: the enclave API on TCP, by forwarding bytes and nothing else.

Every TCP connection accepted on `listen` is relayed to the enclave's API address (vsock in
production, a Unix socket in tests and the demo). The gateway never parses, caches or rewrites:
reports are signed and documents are attested inside the enclave, so all the parent can do is
delay or drop them, never forge them. It still bounds what a client can hold: a connection cap,
a connect timeout to the enclave, an idle timeout and a total lifetime per connection.

The enclave is dialled only once the client has sent its first bytes (within `head_timeout`):
an idle connection costs a gateway socket, never a connection to the enclave. When the gateway
answers itself (over capacity, enclave unreachable, enclave gone without an answer) it first
reads the request head, and afterwards drains the client's input before closing: a close with
unread input makes the kernel send a reset, which can destroy the answer before it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from enclave_net.address import Address, TcpAddress, UnixAddress, bind_socket, connect_socket

__all__ = ["Gateway", "GatewayLimits", "finish_answer"]

log = logging.getLogger("enclave_net.gateway")

#: Sent with every 503: the gateway's are short-lived conditions (capacity, an enclave restart).
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True, kw_only=True)
class GatewayLimits:
    max_connections: int = 256
    head_timeout: float = 5.0  # the first bytes of a request; the enclave is dialled only then
    connect_timeout: float = 5.0  # to the enclave over vsock
    idle_timeout: float = 30.0  # no byte either way
    total_timeout: float = 120.0  # an API exchange is one request and one response
    buffer_bytes: int = 64 * 1024
    linger: float = 1.0  # after the gateway's own answer: drain the client's input this long
    backlog: int = 512


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
        sock = bind_socket(self.listen, backlog=self.limits.backlog)
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
                await self._read_head(reader, b"")
                await self._answer(reader, writer, 503, "gateway over capacity")
                return
            self.active += 1
            try:
                await self._serve(reader, writer)
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        try:
            first = await asyncio.wait_for(reader.read(limits.buffer_bytes), limits.head_timeout)
        except TimeoutError:
            return  # no request: nothing to answer, and the enclave never saw it
        if not first:
            return
        try:
            sock = await asyncio.to_thread(
                connect_socket, self.enclave, timeout=limits.connect_timeout
            )
        except OSError as exc:
            log.warning("enclave unreachable at %s: %s", self.enclave, exc)
            reason = f"enclave unreachable: {exc.strerror or exc}"
            await self._read_head(reader, first)
            await self._answer(reader, writer, 503, reason)
            return
        sock.setblocking(False)
        up_reader, up_writer = await asyncio.open_connection(sock=sock, limit=limits.buffer_bytes)
        answered = 0

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, moved: int) -> int:
            while True:
                data = await asyncio.wait_for(src.read(limits.buffer_bytes), limits.idle_timeout)
                if not data:
                    # Nothing moved this way (the enclave's answer): the gateway answers instead.
                    if moved and dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return moved
                dst.write(data)
                moved += len(data)
                await dst.drain()

        try:
            up_writer.write(first)
            async with asyncio.timeout(limits.total_timeout):
                # The API answers one request per connection and then closes: done when the
                # enclave's side ends (the client's half-close must not cut the answer).
                upstream = asyncio.create_task(pump(reader, up_writer, len(first)))
                try:
                    answered = await pump(up_reader, writer, 0)
                finally:
                    upstream.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await upstream
        except TimeoutError:
            raise  # idle or over its lifetime: cut, as an unanswered request is
        except (ConnectionError, OSError) as exc:  # (TimeoutError is an OSError too)
            if writer.transport.is_closing():
                raise  # the client is gone
            log.warning("enclave connection failed before its answer: %s", exc)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
        if answered == 0 and not writer.transport.is_closing():
            # The request went to the enclave already: answer at once.
            await self._answer(reader, writer, 502, "the enclave closed without an answer")

    async def _read_head(self, reader: asyncio.StreamReader, seen: bytes) -> None:
        """Read (and drop) the rest of the request head before the gateway answers itself;
        `seen` is what was read of it already. Bounded in bytes and time."""
        limits = self.limits
        done, tail, read = b"\r\n\r\n" in seen, seen[-3:], len(seen)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limits.head_timeout):
                while not done and read < limits.buffer_bytes:
                    chunk = await reader.read(limits.buffer_bytes)
                    if not chunk:
                        return
                    done = b"\r\n\r\n" in tail + chunk
                    tail, read = (tail + chunk)[-3:], read + len(chunk)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str
    ) -> None:
        writer.write(_error_response(status, reason))
        await writer.drain()
        await finish_answer(reader, writer, linger=self.limits.linger)


async def finish_answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, linger: float
) -> None:
    """After a complete answer on a one-request connection: half-close, then read and drop what
    the client still sends until it closes (at most `linger` seconds), so that closing leaves
    no unread input behind (which would reset the connection and could destroy the answer)."""
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(linger):
            while await reader.read(64 * 1024):
                pass


def _error_response(status: int, reason: str) -> bytes:
    code = "gateway.unavailable" if status == 503 else "gateway.bad_gateway"
    data = json.dumps({"error": {"code": code, "message": reason}}).encode()
    retry = f"Retry-After: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else ""
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{retry}Connection: close\r\n\r\n"
    ).encode() + data
