"""HTTPS from inside the enclave, over vsock, with no DNS and TLS ending in the enclave.

An httpcore network backend turns the `(host, port)` of each URL into a stream to the parent:
either a per-host route (one parent port per upstream, the model of AWS's
vsock-proxy) or an HTTP CONNECT tunnel through one parent port. httpcore then runs TLS over that
stream with SNI and certificate checks taken from the URL's host, so the parent only ever sees
ciphertext and can at worst make requests fail (httpcore docs, "Custom network backends").

One implementation, async: a synchronous caller runs its exchange with `asyncio.run` at its
edge (as `enclave-net fetch` and the doctor do).

Invariants:
- A host that is not routed is refused here, before any socket is created.
- No name is ever resolved: every parent address is vsock, a Unix path or an IP literal.
- TCP_NODELAY and caller socket options are never applied (vsock refuses TCP_NODELAY: ENOPROTOOPT).
- httpcore never reads HTTP(S)_PROXY, so inherited proxy variables cannot reroute traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
import types
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
import h11

# httpcore2: httpcore 1.0's maintained continuation, the same API (docs/dependencies.md).
import httpcore2 as httpcore

from enclave_net.address import (
    Address,
    HostPort,
    TcpAddress,
    is_ip_literal,
    new_socket,
    parse_address,
    parse_host_port,
)
from enclave_net.errors import (
    AddressError,
    EgressConfigError,
    EgressConnectError,
    EgressError,
    EgressProtocolError,
    EgressTimeout,
    NoRouteError,
    ProxyRefusedError,
    TLSVerificationError,
)

__all__ = [
    "EgressBackend",
    "EgressClient",
    "EgressConfig",
    "Response",
    "Timeouts",
    "connection_pool",
    "forbid_dns",
    "make_ssl_context",
    "parse_route",
]

# vsock-proxy relays with a pool of --num_workers threads (default 4) and queues the rest, so
# keep each pool below it (aws-nitro-enclaves-cli vsock_proxy/src/main.rs and proxy.rs).
DEFAULT_MAX_CONNECTIONS = 4
# vsock-proxy has no idle timeout (its select loop has none); close idle keep-alive connections
# ourselves.
DEFAULT_KEEPALIVE_EXPIRY = 15.0
# A CONNECT response head is a status line and a few headers; 16 KiB is h11's own default bound.
_CONNECT_RESPONSE_MAX = 16 * 1024
# Price endpoints answer in well under 100 KiB; a bigger body is a misroute or an attack.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
_READ_CHUNK = 64 * 1024
# Seconds to wait for an orderly close before aborting the stream.
_CLOSE_TIMEOUT = 1.0
# OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) the doctor explains differently.
X509_V_ERR_CERT_NOT_YET_VALID = 9
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_HOSTNAME_MISMATCH = 62


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds for each phase; httpcore's names (connect covers the CONNECT and TLS handshakes)."""

    connect: float = 5.0
    read: float = 10.0
    write: float = 10.0
    pool: float = 5.0

    def as_extension(self) -> dict[str, float]:
        return {"connect": self.connect, "read": self.read, "write": self.write, "pool": self.pool}


@dataclass(frozen=True, slots=True)
class _Hop:
    """Where the bytes for one origin go: a parent address, and a CONNECT target if tunnelled."""

    address: Address
    tunnel: HostPort | None


@dataclass(frozen=True, kw_only=True)
class EgressConfig:
    """The enclave's egress policy. It belongs in the measured image: PCR0 covers it.

    `routes` maps an upstream `host:port` to the parent address that is wired to exactly that
    upstream. `connect` is one parent address speaking HTTP CONNECT; `allow` lists the upstreams
    that may go through it. A host in neither is refused in the enclave.
    """

    routes: Mapping[HostPort, Address] = field(default_factory=dict)
    connect: Address | None = None
    allow: frozenset[HostPort] = frozenset()
    ca_bundle: Path | None = None
    timeouts: Timeouts = Timeouts()
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY
    max_body: int = DEFAULT_MAX_BODY

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", types.MappingProxyType(dict(self.routes)))
        object.__setattr__(self, "allow", frozenset(self.allow))
        if not self.routes and self.connect is None:
            raise EgressConfigError("no egress at all: give routes, or a CONNECT address")
        if self.allow and self.connect is None:
            raise EgressConfigError("an allow list needs a CONNECT address to go through")
        for upstream in (*self.routes, *self.allow):
            if is_ip_literal(upstream.host):
                # A certificate names a host; an IP literal makes SNI and the policy meaningless.
                raise EgressConfigError(f"{upstream}: route host names, not IP literals")
        if self.max_connections < 1:
            raise EgressConfigError("max_connections must be at least 1")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise EgressConfigError(f"CA bundle {self.ca_bundle} does not exist")

    @classmethod
    def from_strings(
        cls,
        *,
        routes: Iterable[str] = (),
        connect: str | None = None,
        allow: Iterable[str] = (),
        **options: Any,
    ) -> EgressConfig:
        """Build from the command-line forms `HOST:PORT=ADDR`, `ADDR` and `HOST:PORT`."""
        return cls(
            routes=dict(parse_route(r) for r in routes),
            connect=parse_address(connect) if connect is not None else None,
            allow=frozenset(parse_host_port(a) for a in allow),
            **options,
        )

    def hop(self, host: str, port: int) -> _Hop:
        upstream = HostPort(host.lower(), port)
        address = self.routes.get(upstream)
        if address is not None:
            return _Hop(address, None)
        if self.connect is not None and upstream in self.allow:
            return _Hop(self.connect, upstream)
        raise NoRouteError(
            f"no egress route for {upstream}: not in the enclave's route table or CONNECT allow "
            "list; refused before any byte left the enclave"
        )


def parse_route(text: str) -> tuple[HostPort, Address]:
    """`api.binance.com:443=vsock:3:8443` -> (HostPort, Address)."""
    upstream, sep, address = text.partition("=")
    if not sep:
        raise AddressError(f"{text!r}: expected HOST:PORT=ADDRESS")
    return parse_host_port(upstream), parse_address(address)


@contextlib.contextmanager
def forbid_dns() -> Iterator[list[str]]:
    """Make every name lookup in this process fail while active; yields the names attempted.

    The enclave has no resolver, so any lookup is a bug that would only show up as EAI_AGAIN in
    production. Under this guard it shows up at once, with the name.
    Process-wide: use it around enclave-mode code, not in a process that also runs a parent proxy.
    """
    attempts: list[str] = []
    saved = {name: getattr(socket, name) for name in _DNS_FUNCTIONS}

    def refuse(host: Any = None, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, f"DNS lookup of {host!r} in the enclave")

    for name in _DNS_FUNCTIONS:
        setattr(socket, name, refuse)
    try:
        yield attempts
    finally:
        for name, function in saved.items():
            setattr(socket, name, function)


_DNS_FUNCTIONS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex")


def make_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """Verification on, hostname checks on, TLS 1.2+; certifi unless a bundle is given."""
    context = ssl.create_default_context(cafile=str(ca_bundle or certifi.where()))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


# --- errors ---------------------------------------------------------------------------------


def _connect_error(address: Address, upstream: str, exc: OSError) -> EgressError:
    if isinstance(exc, TimeoutError):
        return EgressTimeout(f"connect to parent {address} (for {upstream}) timed out")
    if isinstance(exc, ConnectionRefusedError | FileNotFoundError | ConnectionResetError):
        return EgressConnectError(
            f"no listener on parent {address} (for {upstream}): {exc.strerror}; the parent "
            "proxy is not running, the port is wrong, or vsock-proxy exited on its allowlist "
            "check (journalctl -u <unit>)"
        )
    return EgressConnectError(f"connect to parent {address} (for {upstream}): {exc}")


def _tls_error(exc: BaseException, hostname: str) -> EgressError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message
        if code == X509_V_ERR_HOSTNAME_MISMATCH:
            hint = "the parent port is routed to a different host"
        elif code in (X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID):
            hint = "is the enclave clock wrong?"
        else:
            hint = "the chain does not lead to a CA in the bundle"
        return TLSVerificationError(
            f"TLS certificate for {hostname} rejected: {detail} ({hint})", verify_code=code
        )
    if isinstance(exc, TimeoutError):
        return EgressTimeout(
            f"TLS handshake with {hostname} timed out: probably queued behind busy proxy "
            "workers, or the upstream never answered"
        )
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError) or (
        isinstance(exc, ssl.SSLError) and "EOF" in str(exc)
    ):
        return EgressConnectError(
            f"parent accepted but closed during the TLS handshake with {hostname}: its upstream "
            "connect failed or its worker died"
        )
    return EgressConnectError(f"TLS handshake with {hostname} failed: {exc}")


# --- CONNECT, sans-I/O ----------------------------------------------------------------------


class _ConnectHandshake:
    """The client side of one HTTP CONNECT, with h11 doing the parsing and the bounds."""

    def __init__(self, target: HostPort, via: Address) -> None:
        self._target = target
        self._via = via
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_CONNECT_RESPONSE_MAX)
        self._status: h11.Response | None = None
        self._body = bytearray()

    def request_bytes(self) -> bytes:
        authority = str(self._target).encode()
        head = self._conn.send(
            h11.Request(method="CONNECT", target=authority, headers=[(b"Host", authority)])
        )
        return head + (self._conn.send(h11.EndOfMessage()) or b"")

    def feed(self, data: bytes) -> bool:
        """Feed bytes; True once the tunnel is open. Raises if the proxy refused or broke."""
        self._conn.receive_data(data)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise EgressProtocolError(f"CONNECT via {self._via}: bad response: {exc}") from exc
            if event is h11.NEED_DATA:
                if not data:
                    return self._refused(closed=True)
                return False
            if isinstance(event, h11.Response):
                if 200 <= event.status_code < 300:
                    leftover, _ = self._conn.trailing_data
                    if leftover:
                        # The server speaks first in no protocol we tunnel; bytes here mean a
                        # confused proxy, and would be lost to the TLS layer.
                        raise EgressProtocolError(f"CONNECT via {self._via}: data after 2xx")
                    return True
                self._status = event
            elif isinstance(event, h11.Data):
                if len(self._body) < 1024:
                    self._body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                return self._refused(closed=False)

    def _refused(self, *, closed: bool) -> bool:
        if self._status is None:
            if closed:
                raise EgressConnectError(
                    f"CONNECT {self._target} via {self._via}: the proxy closed without answering"
                )
            return False
        reason = self._body.decode("utf-8", "replace").strip()[:200] or self._status.reason.decode(
            "latin-1"
        )
        raise ProxyRefusedError(
            f"CONNECT {self._target} via {self._via}: proxy answered "
            f"{self._status.status_code}: {reason}",
            status=self._status.status_code,
        )


# --- the network backend -------------------------------------------------------------------


def _tune(sock: socket.socket, address: Address) -> None:
    # TCP_NODELAY fails with ENOPROTOOPT on vsock, and Unix sockets have no
    # Nagle; only a tcp: parent address (development, benchmarks) gets it, as httpcore would.
    if isinstance(address, TcpAddress):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._origin = origin

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(max_bytes), timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"read from {self._origin} timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(f"read from {self._origin}: {exc}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._writer.write(buffer)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"write to {self._origin} timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(f"write to {self._origin}: {exc}") from exc

    async def aclose(self) -> None:
        self._writer.close()
        # A TLS close_notify exchange with a silent peer must not hold the caller.
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()
        except (OSError, ssl.SSLError):
            pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        hostname = server_hostname or self._origin
        try:
            await asyncio.wait_for(
                self._writer.start_tls(ssl_context, server_hostname=hostname), timeout
            )
        except (OSError, ssl.SSLError) as exc:
            # A cancelled start_tls leaves an SSL shutdown pending towards a peer that may never
            # answer; abort the raw transport so nothing waits for it.
            self._writer.transport.abort()
            raise _tls_error(exc, hostname) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            transport = self._writer.transport
            return transport.is_closing() or self._reader.at_eof()
        if info in ("ssl_object", "socket"):
            return self._writer.get_extra_info(info)
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        return None


class EgressBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend: `(host, port)` -> parent stream by route or CONNECT. Never resolves.

    Async only (httpcore's async pool runs on anyio under asyncio); a synchronous caller wraps
    its whole exchange in `asyncio.run`, as `enclave-net fetch` and the doctor do."""

    def __init__(self, config: EgressConfig) -> None:
        self._config = config

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        hop = self._config.hop(host, port)
        origin = f"{host}:{port}"
        loop = asyncio.get_running_loop()
        sock, target = new_socket(hop.address)
        _tune(sock, hop.address)
        sock.setblocking(False)
        writer: asyncio.StreamWriter | None = None

        def discard() -> None:
            # Once a transport owns the socket, close through it (or asyncio warns).
            if writer is not None:
                writer.transport.abort()
            sock.close()

        try:
            async with asyncio.timeout(timeout):
                try:
                    await loop.sock_connect(sock, target)
                except OSError as exc:
                    raise _connect_error(hop.address, origin, exc) from exc
                reader, writer = await asyncio.open_connection(sock=sock, limit=_READ_CHUNK)
                if hop.tunnel is not None:
                    await self._tunnel(reader, writer, hop)
        except TimeoutError as exc:
            discard()
            raise EgressTimeout(
                f"connect to parent {hop.address} (for {origin}) timed out"
            ) from exc
        except BaseException:
            discard()
            raise
        return _Stream(reader, writer, host)

    @staticmethod
    async def _tunnel(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hop: _Hop
    ) -> None:
        assert hop.tunnel is not None
        handshake = _ConnectHandshake(hop.tunnel, hop.address)
        try:
            writer.write(handshake.request_bytes())
            await writer.drain()
            while not handshake.feed(await reader.read(_READ_CHUNK)):
                pass
        except OSError as exc:
            raise _connect_error(hop.address, str(hop.tunnel), exc) from exc

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise NoRouteError("egress goes through the route table; direct Unix sockets are refused")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# --- pools and a small client ---------------------------------------------------------------


def connection_pool(config: EgressConfig) -> httpcore.AsyncConnectionPool:
    """An httpcore pool whose every connection goes through the egress policy."""
    return httpcore.AsyncConnectionPool(
        ssl_context=make_ssl_context(config.ca_bundle),
        max_connections=config.max_connections,
        keepalive_expiry=config.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=EgressBackend(config),
    )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _https_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https":
        # Plain HTTP through the parent would let it read and forge the data.
        raise EgressConfigError(f"{url!r}: only https:// URLs leave the enclave")
    if not parts.hostname:
        raise EgressConfigError(f"{url!r}: no host")
    return url


def _translate(
    exc: httpcore.TimeoutException | httpcore.NetworkError | httpcore.ProtocolError, url: str
) -> EgressError:
    if isinstance(exc, httpcore.TimeoutException):
        return EgressTimeout(f"{url}: {type(exc).__name__}: {exc}")
    if isinstance(exc, httpcore.ProtocolError):
        return EgressProtocolError(f"{url}: {exc}")
    return EgressConnectError(f"{url}: {exc}")


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


def _request_headers(url: str, headers: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
    merged = {"User-Agent": "enclave-net", "Accept": "*/*", **(headers or {})}
    del url
    return [(k.encode(), v.encode()) for k, v in merged.items()]


class EgressClient:
    """`async with EgressClient(config) as c: await c.get(url)`; errors are `EgressError`s."""

    def __init__(self, config: EgressConfig) -> None:
        self._config = config
        self._pool = connection_pool(config)

    async def __aenter__(self) -> EgressClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
    ) -> Response:
        return await self.request("GET", url, headers=headers, timeouts=timeouts)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeouts: Timeouts | None = None,
    ) -> Response:
        _https_url(url)
        started = time.monotonic()
        extensions = {"timeout": (timeouts or self._config.timeouts).as_extension()}
        try:
            async with self._pool.stream(
                method,
                url,
                headers=_request_headers(url, headers),
                content=body,
                extensions=extensions,
            ) as r:
                data = await self._bounded(r.aiter_stream(), url)
                return Response(r.status, _headers(r.headers), data, time.monotonic() - started)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            raise _translate(exc, url) from exc

    async def _bounded(self, chunks: AsyncIterator[bytes], url: str) -> bytes:
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > self._config.max_body:
                raise EgressProtocolError(f"{url}: body larger than {self._config.max_body} bytes")
        return bytes(body)
