"""The parent-side egress proxy: fixed routes (vsock-proxy semantics) and HTTP CONNECT.

Route mode: one listener per upstream; every stream accepted there is relayed to that one
`host:port`, resolved here on the parent (re-resolved after `resolve_ttl` and after any connect
failure). CONNECT mode: one listener; the client names `host:port`, which must be on the allow
list. Both modes refuse upstream addresses that are link-local (169.254.169.254, the instance
metadata service, above all), multicast or unspecified, and, unless `allow_private`, private,
loopback and other non-global ones; an IPv6 form that embeds an IPv4 address (mapped, NAT64,
6to4, Teredo...) is judged by that address. IP literals pass only if listed literally.

The enclave never trusts this process: TLS ends in the enclave, so all this proxy can do wrong
is fail. It must therefore fail loudly and precisely (400/403/502/503 with a logged reason) and
never hang or fall over: every phase has a timeout, concurrency is capped, buffers are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h11

from enclave_net.address import (
    Address,
    HostPort,
    UnixAddress,
    bind_socket,
    is_ip_literal,
    parse_host_port,
)
from enclave_net.errors import AddressError, ProxyConfigError
from enclave_net.jsonlog import log_event
from enclave_net.proxy_config import Limits, Pin, ProxyConfig, ProxyRoute, address_refusal

__all__ = ["EgressProxy"]

logger = logging.getLogger("enclave_net.proxy")


def _log(level: int, event: str, **fields: Any) -> None:
    log_event(logger, level, event, **fields)


# close(): rounds of "yield, cancel what registered"; one is normal, more means a burst of
# connections raced the shutdown.
_SHUTDOWN_ROUNDS = 5


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _http_error(status: int, reason: str) -> bytes:
    body = (reason + "\n").encode()
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _Resolver:
    """Parent-side name resolution with pins, a TTL cache and invalidation on failure."""

    def __init__(self, pins: Mapping[str, Pin], ttl: float) -> None:
        self._pins = pins
        self._ttl = ttl
        self._cache: dict[HostPort, tuple[float, list[tuple[str, int]]]] = {}

    def invalidate(self, target: HostPort) -> None:
        self._cache.pop(target, None)

    async def resolve(self, target: HostPort) -> tuple[list[tuple[str, int]], bool]:
        """(addresses, from_cache)."""
        pin = self._pins.get(str(target)) or self._pins.get(target.host)
        if pin is not None:
            return [(pin.ip, pin.port or target.port)], False
        if is_ip_literal(target.host):
            return [(target.host, target.port)], False
        cached = self._cache.get(target)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1], True
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _Reject(502, f"cannot resolve {target.host} on the parent: {exc}") from exc
        addresses = list(dict.fromkeys((str(i[4][0]), int(i[4][1])) for i in infos))
        self._cache[target] = (now + self._ttl, addresses)
        return addresses, False


class EgressProxy:
    """`await proxy.start()`, then `await proxy.close()`; or `await proxy.serve_forever()`."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.active = 0
        self.counters: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._resolver = _Resolver(config.pins, config.limits.resolve_ttl)
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening: list[Address] = []

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def start(self) -> None:
        limits = self.config.limits
        for route in self.config.routes:
            await self._listen(route.listen, route)
            _log(
                logging.INFO,
                "listening",
                mode="route",
                listen=str(route.listen),
                upstream=str(route.upstream),
            )
        if self.config.connect is not None:
            await self._listen(self.config.connect, None)
            _log(
                logging.INFO,
                "listening",
                mode="connect",
                listen=str(self.config.connect),
                allow=sorted(str(a) for a in self.config.allow),
            )
        del limits

    async def _listen(self, address: Address, route: ProxyRoute | None) -> None:
        try:
            sock = bind_socket(address, backlog=self.config.limits.backlog)
        except OSError as exc:
            raise ProxyConfigError(f"cannot listen on {address}: {exc.strerror}") from exc
        sock.setblocking(False)
        self._listening.append(address)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                await self._client(reader, writer, route)
            finally:
                if task is not None:
                    self._tasks.discard(task)

        server = await asyncio.start_server(
            handler,
            sock=sock,
            limit=self.config.limits.buffer_bytes,
            backlog=self.config.limits.backlog,
        )
        self._servers.append(server)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*(s.serve_forever() for s in self._servers))
        finally:
            await self.close()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        # A connection accepted just before close() has a handler task that has not run (and
        # registered) yet: yield until no new ones appear, so that every one is cancelled.
        for _ in range(_SHUTDOWN_ROUNDS):
            await asyncio.sleep(0)
            tasks = [t for t in self._tasks if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Transports close their sockets in a call_soon callback: let those run before the
        # caller stops the loop.
        await asyncio.sleep(0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for address in self._listening:
            if isinstance(address, UnixAddress):
                with contextlib.suppress(OSError):
                    Path(address.path).unlink()
        self._listening.clear()

    async def _client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: ProxyRoute | None
    ) -> None:
        conn = next(self._ids)
        mode = "route" if route else "connect"
        limits = self.config.limits
        if self.active >= limits.max_connections:
            self._count("over_capacity")
            _log(
                logging.WARNING,
                "refused",
                conn=conn,
                mode=mode,
                status=503,
                reason=f"{self.active} connections open, cap is {limits.max_connections}",
            )
            try:
                if route is None:
                    await _answer_and_close(reader, writer, 503, "too many tunnels; retry later")
            finally:
                await _close(writer)
            return
        self.active += 1
        self._count("accepted")
        upstream_writer: asyncio.StreamWriter | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(limits.total_timeout):
                if route is not None:
                    target, early = route.upstream, b""
                else:
                    target, early = await self._read_connect(reader, conn)
                up_reader, upstream_writer = await self._open_upstream(target, conn, mode)
                if route is None:
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if early:
                    upstream_writer.write(early)
                _log(
                    logging.INFO,
                    "tunnel_open",
                    conn=conn,
                    mode=mode,
                    target=str(target),
                    upstream=str(upstream_writer.get_extra_info("peername")),
                )
                sent, received, why = await self._relay(reader, writer, up_reader, upstream_writer)
                _log(
                    logging.INFO,
                    "tunnel_closed",
                    conn=conn,
                    target=str(target),
                    why=why,
                    bytes_out=sent,
                    bytes_in=received,
                    seconds=round(time.monotonic() - started, 3),
                )
        except _Reject as exc:
            self._count(f"status_{exc.status}")
            _log(
                logging.WARNING,
                "refused",
                conn=conn,
                mode=mode,
                status=exc.status,
                reason=exc.reason,
            )
            if route is None:
                await _answer_and_close(reader, writer, exc.status, exc.reason)
        except TimeoutError:
            self._count("total_timeout")
            _log(logging.WARNING, "tunnel_closed", conn=conn, why="total_timeout")
        except (OSError, asyncio.IncompleteReadError) as exc:
            _log(logging.INFO, "tunnel_closed", conn=conn, why=f"io error: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one client take the proxy down
            self._count("internal_error")
            _log(logging.ERROR, "internal_error", conn=conn, error=repr(exc))
        finally:
            self.active -= 1
            await _close(writer, upstream_writer)

    async def _read_connect(
        self, reader: asyncio.StreamReader, conn: int
    ) -> tuple[HostPort, bytes]:
        limits = self.config.limits
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        deadline = time.monotonic() + limits.head_timeout
        request: h11.Request | None = None
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reject(400, f"malformed request: {exc}") from exc
            if event is h11.NEED_DATA:
                remaining = deadline - time.monotonic()
                try:
                    data = await asyncio.wait_for(reader.read(limits.max_head_bytes), remaining)
                except TimeoutError:
                    raise _Reject(
                        408, f"request head not complete after {limits.head_timeout:g}s"
                    ) from None
                if not data:
                    raise _Reject(400, "client closed before a complete request")
                parser.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                if event.method != b"CONNECT":
                    raise _Reject(
                        400,
                        f"method {event.method.decode()} not supported; this "
                        "proxy only tunnels CONNECT",
                    )
            elif event is h11.PAUSED:
                # h11 pauses after a CONNECT's end of message: the rest of the stream is tunnel.
                break
            elif isinstance(event, h11.EndOfMessage | h11.Data):
                continue
            elif isinstance(event, h11.ConnectionClosed):
                raise _Reject(400, "client closed before a complete request")
        assert request is not None
        authority = request.target.decode("ascii", "replace")
        try:
            target = parse_host_port(authority)
        except AddressError as exc:
            raise _Reject(400, f"CONNECT target must be HOST:PORT: {exc}") from exc
        if target not in self.config.allow:
            kind = "IP literal" if is_ip_literal(target.host) else "host"
            raise _Reject(403, f"{kind} {target} is not on the allow list")
        early, _ = parser.trailing_data
        return target, bytes(early)

    async def _open_upstream(
        self, target: HostPort, conn: int, mode: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        limits = self.config.limits
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(limits.connect_timeout):
                    addresses, cached = await self._resolver.resolve(target)
            except TimeoutError:
                raise _Reject(502, f"resolving {target.host} on the parent timed out") from None
            allowed = []
            refusals = []
            for ip, port in addresses:
                why = address_refusal(ip, allow_private=self.config.allow_private)
                if why is None:
                    allowed.append((ip, port))
                else:
                    refusals.append(why)
            if not allowed:
                raise _Reject(
                    403, f"{target} resolves only to refused addresses: " + "; ".join(refusals)
                )
            errors = []
            for ip, port in allowed:
                try:
                    async with asyncio.timeout(limits.connect_timeout):
                        return await asyncio.open_connection(ip, port, limit=limits.buffer_bytes)
                except TimeoutError:
                    errors.append(f"{ip}:{port} timed out")
                except OSError as exc:
                    errors.append(f"{ip}:{port} {exc.strerror or exc}")
            self._resolver.invalidate(target)
            if not cached or attempt == 2:
                raise _Reject(502, f"upstream {target} unreachable: " + "; ".join(errors))
            _log(
                logging.INFO, "re_resolve", conn=conn, mode=mode, target=str(target), errors=errors
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> tuple[int, int, str]:
        """Relay bytes both ways until both sides end, one fails, or the tunnel goes idle.

        The head (if any) is parsed; from here on the streams are only in the way: each chunk
        would be copied into a StreamReader buffer, copied out again, and cost two task wake-ups.
        Instead both transports are handed to `_Side` protocols that write what they receive
        straight into the other transport, with flow control (the far side's write buffer over
        `buffer_bytes` pauses reading on the near side), so memory per direction stays bounded
        by `buffer_bytes` plus one transport read.
        """
        limits = self.config.limits
        # Nothing may sit paused in a write buffer when the protocols change hands: a paused
        # transport would never tell the new protocol to pause its peer.
        await client_writer.drain()
        await up_writer.drain()
        tunnel = _Tunnel(asyncio.get_running_loop())
        sides = (
            _Side.attach(tunnel, 0, client_writer.transport, up_writer.transport, limits),
            _Side.attach(tunnel, 1, up_writer.transport, client_writer.transport, limits),
        )
        # Bytes the streams had already taken in (a ClientHello sent before the upstream
        # connect finished, say) go first; then each transport reads for its new protocol.
        for side, reader in zip(sides, (client_reader, up_reader), strict=True):
            side.start(*_take_buffered(reader))
        check = min(max(limits.idle_timeout / 4, 0.05), 5.0)
        why = "closed"
        try:
            while not tunnel.done.done():
                await asyncio.wait([tunnel.done], timeout=check)
                if not tunnel.done.done() and time.monotonic() - tunnel.last > limits.idle_timeout:
                    why = "idle_timeout"
                    self._count("idle_timeout")
                    break
        finally:
            for side in sides:
                side.detach()
        if tunnel.error is not None:
            why = f"io error: {tunnel.error}"
        return tunnel.totals[0], tunnel.totals[1], why


def _take_buffered(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What `reader` holds but nobody has read yet, and whether it had seen EOF; empties it.

    StreamReader has no public way to ask this without waiting; its buffer is a bytearray and
    its EOF a bool in CPython 3.11 through 3.13. Checked, so a change fails loudly in tests.
    """
    state = vars(reader)
    buffer, eof = state["_buffer"], state["_eof"]
    if not isinstance(buffer, bytearray) or not isinstance(eof, bool):
        raise RuntimeError("unexpected asyncio.StreamReader internals")
    data = bytes(buffer)
    buffer.clear()
    return data, eof


class _Tunnel:
    """Shared state of one tunnel's two directions."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.last = time.monotonic()
        self.totals = [0, 0]  # bytes client -> upstream, upstream -> client
        self.ended = [False, False]  # EOF seen on the reading side of direction i
        self.error: BaseException | None = None

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Side(asyncio.Protocol):
    """The protocol of one transport during the tunnel: what it reads goes to `peer`."""

    def __init__(
        self,
        tunnel: _Tunnel,
        index: int,
        own: asyncio.WriteTransport,
        peer: asyncio.WriteTransport,
        previous: asyncio.BaseProtocol,
    ) -> None:
        self.tunnel = tunnel
        self.index = index
        self.own = own
        self.peer = peer
        self.previous = previous
        self.attached = True

    @classmethod
    def attach(
        cls,
        tunnel: _Tunnel,
        index: int,
        own: asyncio.WriteTransport,
        peer: asyncio.WriteTransport,
        limits: Limits,
    ) -> _Side:
        if not isinstance(own, asyncio.Transport):  # a socket transport: reads and writes
            raise TypeError(f"cannot relay over {type(own).__name__}")
        side = cls(tunnel, index, own, peer, own.get_protocol())
        own.set_write_buffer_limits(high=limits.buffer_bytes)
        own.set_protocol(side)
        return side

    def start(self, early: bytes, eof: bool) -> None:
        if early:
            self.data_received(early)
        if eof:
            self.eof_received()
            return
        own = self.own
        assert isinstance(own, asyncio.Transport)
        if not own.is_reading() and not own.is_closing():
            own.resume_reading()  # the StreamReader had paused it at its limit

    def detach(self) -> None:
        # Closing happens in EgressProxy._client; from here on nothing is forwarded.
        self.attached = False

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.last = time.monotonic()
        tunnel.totals[self.index] += len(data)
        if self.attached:
            self.peer.write(data)

    def eof_received(self) -> bool:
        tunnel = self.tunnel
        if not tunnel.ended[self.index]:
            tunnel.ended[self.index] = True
            if self.attached and self.peer.can_write_eof() and not self.peer.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    self.peer.write_eof()  # half-close: the other direction may go on
            if all(tunnel.ended):
                tunnel.finish()
        return True  # keep the transport open for the other direction

    def pause_writing(self) -> None:
        # Our transport's write buffer is over buffer_bytes: stop reading what fills it.
        peer = self.peer
        assert isinstance(peer, asyncio.ReadTransport)
        peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        assert isinstance(peer, asyncio.ReadTransport)
        if not self.tunnel.ended[1 - self.index] and not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.tunnel
        if exc is not None and tunnel.error is None:
            tunnel.error = exc
        tunnel.finish()
        # The StreamWriter's wait_closed() waits on its own protocol: tell it too.
        self.previous.connection_lost(exc)


# After an error answer, unread request bytes would make close() send a reset that can destroy
# the answer in flight; read (and drop) a bounded amount for a bounded time first.
_LINGER_BYTES = 64 * 1024
_LINGER_SECONDS = 0.5
# An orderly close waits this long for the peer before the transport is simply dropped.
_CLOSE_SECONDS = 1.0


async def _answer_and_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, reason: str
) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(_http_error(status, reason))
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_SECONDS):
            drained = 0
            while drained < _LINGER_BYTES and (chunk := await reader.read(_LINGER_BYTES)):
                drained += len(chunk)


async def _close(*writers: asyncio.StreamWriter | None) -> None:
    # Close every transport before the first await: a cancellation (shutdown) arriving in
    # wait_closed() must not leave the other socket open.
    open_writers = [w for w in writers if w is not None]
    for writer in open_writers:
        writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_CLOSE_SECONDS):
            for writer in open_writers:
                await writer.wait_closed()
