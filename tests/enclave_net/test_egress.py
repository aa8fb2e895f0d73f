"""The enclave-side egress layer, in-process: routing, no DNS, TLS, timeouts, proxy answers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_net.address import UnixAddress, parse_address, parse_host_port
from enclave_net.egress import (
    EgressClient,
    EgressConfig,
    Response,
    Timeouts,
    connection_pool,
    parse_route,
)
from enclave_net.errors import (
    EgressConfigError,
    EgressConnectError,
    EgressTimeout,
    NoRouteError,
    ProxyRefusedError,
    TLSVerificationError,
)
from enclave_net.proxy_config import Pin, ProxyConfig, ProxyRoute
from tests.enclave_net._support import CertAuthority, HttpsExchange, ProxyThread, stop_accepting

URL = "https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT"


def fetch(config: EgressConfig, *urls: str) -> list[Response]:
    """GET each URL in turn on one client, from synchronous test code (the edge of asyncio)."""

    async def main() -> list[Response]:
        async with EgressClient(config) as client:
            return [await client.get(url) for url in urls]

    return asyncio.run(main())


FAST = Timeouts(connect=2, read=2, write=2, pool=2)


@pytest.fixture
def route_proxy(binance: HttpsExchange, sockdir: Path) -> Iterator[UnixAddress]:
    listen = UnixAddress(str(sockdir / "r.sock"))
    proxy = ProxyThread(
        ProxyConfig(
            routes=(ProxyRoute(listen, parse_host_port(f"api.binance.com:{binance.port}")),),
            pins=dict([("api.binance.com", Pin("127.0.0.1"))]),
            allow_private=True,
        )
    )
    yield listen
    proxy.close()


@pytest.fixture
def connect_proxy(
    binance: HttpsExchange, sockdir: Path
) -> Iterator[tuple[UnixAddress, ProxyThread]]:
    listen = UnixAddress(str(sockdir / "c.sock"))
    proxy = ProxyThread(
        ProxyConfig(
            connect=listen,
            allow=frozenset(
                {
                    parse_host_port("api.binance.com:443"),
                    parse_host_port("metadata.internal:80"),
                    parse_host_port("down.example:443"),
                }
            ),
            pins={
                "api.binance.com:443": Pin("127.0.0.1", binance.port),
                "metadata.internal": Pin("169.254.169.254"),
                "down.example:443": Pin("127.0.0.1", 9),
            },  # discard port: nothing listens
            allow_private=True,
        )
    )
    yield listen, proxy
    proxy.close()


@pytest.fixture
def no_dns(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise OSError("DNS is forbidden in the enclave (test guard)")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, name, refuse)
    return calls


def test_no_dns_route(no_dns: list[Any], route_proxy: UnixAddress, pki: CertAuthority) -> None:
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )
    (response,) = fetch(config, URL)
    assert response.status == 200
    assert response.json()["symbol"] == "BTCUSDT"
    assert response.header("x-mbx-used-weight-1m") == "2"
    assert no_dns == []


def test_no_dns_async_concurrent(
    no_dns: list[Any], connect_proxy: tuple[UnixAddress, Any], pki: CertAuthority
) -> None:
    config = EgressConfig(
        connect=connect_proxy[0],
        allow=frozenset({parse_host_port("api.binance.com:443")}),
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )

    async def main() -> list[int]:
        async with EgressClient(config) as client:
            responses = await asyncio.gather(*(client.get(URL) for _ in range(8)))
        return [r.status for r in responses]

    assert asyncio.run(main()) == [200] * 8
    assert no_dns == []


def test_proxy_environment_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch, route_proxy: UnixAddress, pki: CertAuthority
) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )
    assert fetch(config, URL)[0].status == 200


def test_unrouted_host_never_creates_a_socket(
    monkeypatch: pytest.MonkeyPatch, pki: CertAuthority
) -> None:
    created: list[Any] = []
    real = socket.socket

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            created.append(args)
            super().__init__(*args, **kwargs)

    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): UnixAddress("/nonexistent")},
        ca_bundle=pki.ca_pem,
    )

    async def main() -> None:
        # Spy only once the event loop has its own self-pipe socket.
        monkeypatch.setattr(socket, "socket", Spy)
        async with EgressClient(config) as client:
            with pytest.raises(NoRouteError, match=r"evil\.example:443"):
                await client.get("https://evil.example/")
            with pytest.raises(NoRouteError, match=r"api\.binance\.com:8443"):
                await client.get("https://api.binance.com:8443/")

    asyncio.run(main())
    assert created == []


def test_tcp_nodelay_is_never_set(
    monkeypatch: pytest.MonkeyPatch, route_proxy: UnixAddress, pki: CertAuthority
) -> None:
    options: list[tuple[int, int, int]] = []
    original = socket.socket.setsockopt

    def spy(self: socket.socket, level: int, option: int, *rest: Any) -> None:
        options.append((self.family, level, option))
        original(self, level, option, *rest)

    monkeypatch.setattr(socket.socket, "setsockopt", spy)
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy}, ca_bundle=pki.ca_pem
    )

    async def main() -> int:
        # httpcore passes socket options through; on vsock TCP options fail with ENOPROTOOPT.
        async with connection_pool(config) as pool:
            return (await pool.request("GET", URL)).status

    assert asyncio.run(main()) == 200
    # The in-process proxy's TCP upstream may set it; the enclave's stream (AF_UNIX here,
    # AF_VSOCK in production) must not.
    assert (socket.AF_UNIX, socket.IPPROTO_TCP, socket.TCP_NODELAY) not in options
    assert any(family == socket.AF_INET for family, _, _ in options)  # the spy did see calls


def test_certifi_is_the_default_trust(route_proxy: UnixAddress) -> None:
    # Without the test CA the local server's certificate must not verify.
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy}, timeouts=FAST
    )
    with pytest.raises(TLSVerificationError, match="CA in the bundle"):
        fetch(config, URL)


def test_expired_certificate_points_at_the_clock(pki: CertAuthority, sockdir: Path) -> None:
    server = HttpsExchange("api.binance.com", *pki.issue("api.binance.com", expired=True))
    listen = UnixAddress(str(sockdir / "x.sock"))
    proxy = ProxyThread(
        ProxyConfig(
            routes=(ProxyRoute(listen, parse_host_port(f"api.binance.com:{server.port}")),),
            pins={"api.binance.com": Pin("127.0.0.1")},
            allow_private=True,
        )
    )
    try:
        config = EgressConfig(
            routes={parse_host_port("api.binance.com:443"): listen},
            ca_bundle=pki.ca_pem,
            timeouts=FAST,
        )
        with pytest.raises(TLSVerificationError) as info:
            fetch(config, URL)
        assert info.value.verify_code == 10
        assert "clock" in str(info.value)
    finally:
        proxy.close()
        server.close()


def test_connect_refusals_are_surfaced(
    connect_proxy: tuple[UnixAddress, ProxyThread], pki: CertAuthority
) -> None:
    listen, proxy = connect_proxy
    config = EgressConfig(
        connect=listen,
        allow=frozenset(
            {
                parse_host_port(h)
                for h in ("metadata.internal:80", "down.example:443", "api.kraken.com:443")
            }
        ),
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )
    with pytest.raises(ProxyRefusedError, match="metadata service") as info:
        fetch(config, "https://metadata.internal:80/latest/meta-data/")
    assert info.value.status == 403
    with pytest.raises(ProxyRefusedError, match="not on the allow list") as info:
        fetch(config, "https://api.kraken.com/0/public/Ticker")
    assert info.value.status == 403
    with pytest.raises(ProxyRefusedError, match="unreachable") as info:
        fetch(config, "https://down.example/")
    assert info.value.status == 502
    assert proxy.proxy.counters.get("status_403") == 2


def _silent_listener(
    path: Path, *, accept_and_hold: bool
) -> tuple[socket.socket, list[Any], list[threading.Thread]]:
    """A listener that never answers; close it with `stop_accepting(server, threads)`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    held: list[Any] = []
    threads: list[threading.Thread] = []
    if accept_and_hold:

        def run() -> None:
            while True:
                try:
                    held.append(server.accept()[0])
                except OSError:
                    return

        threads.append(threading.Thread(target=run, daemon=True))
        threads[0].start()
    return server, held, threads


def test_handshake_that_never_answers_times_out(sockdir: Path, pki: CertAuthority) -> None:
    path = sockdir / "silent.sock"
    server, held, threads = _silent_listener(path, accept_and_hold=True)
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): UnixAddress(str(path))},
        ca_bundle=pki.ca_pem,
        timeouts=Timeouts(connect=0.3, read=0.3, write=0.3, pool=0.3),
    )
    try:
        with pytest.raises(EgressTimeout, match="TLS handshake"):
            fetch(config, URL)
    finally:
        stop_accepting(server, threads)
        for conn in held:
            conn.close()


def test_accept_then_close_is_named(sockdir: Path, pki: CertAuthority) -> None:
    path = sockdir / "closer.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def close_each() -> None:
        conn, _ = server.accept()
        conn.recv(1)
        conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): UnixAddress(str(path))},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )
    try:
        with pytest.raises(EgressConnectError, match="closed during the TLS"):
            fetch(config, URL)
    finally:
        server.close()


def test_config_is_validated(pki: CertAuthority) -> None:
    with pytest.raises(EgressConfigError, match="no egress"):
        EgressConfig()
    with pytest.raises(EgressConfigError, match="IP literals"):
        EgressConfig.from_strings(routes=["1.2.3.4:443=vsock:3:8443"])
    with pytest.raises(EgressConfigError, match="CONNECT address"):
        EgressConfig.from_strings(routes=["a.example:443=vsock:3:1"], allow=["b.example:443"])
    with pytest.raises(EgressConfigError, match="https"):
        fetch(EgressConfig.from_strings(routes=["a.example:80=vsock:3:1"]), "http://a.example/")
    host, address = parse_route("API.Binance.com:443=vsock:3:8443")
    assert (str(host), address) == ("api.binance.com:443", parse_address("vsock:3:8443"))


def test_ssl_context_is_strict() -> None:
    from enclave_net.egress import make_ssl_context

    context = make_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_async_route_and_misroute(
    route_proxy: UnixAddress, pki: CertAuthority, kraken: HttpsExchange, sockdir: Path
) -> None:
    wrong = UnixAddress(str(sockdir / "wrong.sock"))
    misroute = ProxyThread(
        ProxyConfig(
            routes=(ProxyRoute(wrong, parse_host_port(f"api.kraken.com:{kraken.port}")),),
            pins={"api.kraken.com": Pin("127.0.0.1")},
            allow_private=True,
        )
    )
    good = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )
    bad = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): wrong}, ca_bundle=pki.ca_pem, timeouts=FAST
    )

    async def main() -> None:
        async with EgressClient(good) as client:
            assert (await client.get(URL)).json()["host"] == "api.binance.com"
            with pytest.raises(NoRouteError):
                await client.get("https://api.kraken.com/")
        async with EgressClient(bad) as client:
            with pytest.raises(TLSVerificationError, match="different host") as info:
                await client.get(URL)
            assert info.value.verify_code == 62

    try:
        asyncio.run(main())
    finally:
        misroute.close()


def test_async_no_listener_and_timeout(sockdir: Path, pki: CertAuthority) -> None:
    path = sockdir / "silent.sock"
    server, held, threads = _silent_listener(path, accept_and_hold=True)
    silent = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): UnixAddress(str(path))},
        ca_bundle=pki.ca_pem,
        timeouts=Timeouts(connect=0.3, read=0.3, write=0.3, pool=0.3),
    )
    dead = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): UnixAddress(str(sockdir / "none.sock"))},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
    )

    async def main() -> None:
        async with EgressClient(silent) as client:
            with pytest.raises(EgressTimeout):
                await client.get(URL)
        async with EgressClient(dead) as client:
            with pytest.raises(EgressConnectError, match="no listener on parent"):
                await client.get(URL)

    try:
        asyncio.run(main())
    finally:
        stop_accepting(server, threads)
        for conn in held:
            conn.close()


def test_oversized_body_is_refused(route_proxy: UnixAddress, pki: CertAuthority) -> None:
    from enclave_net.errors import EgressProtocolError

    config = EgressConfig(
        routes={parse_host_port("api.binance.com:443"): route_proxy},
        ca_bundle=pki.ca_pem,
        timeouts=FAST,
        max_body=1000,
    )
    assert len(fetch(config, "https://api.binance.com/bytes?n=1000")[0].body) == 1000
    with pytest.raises(EgressProtocolError, match="larger than 1000"):
        fetch(config, "https://api.binance.com/bytes?n=1001")


def test_forbid_dns_guard_names_the_lookup() -> None:
    from enclave_net.egress import forbid_dns

    real = socket.getaddrinfo
    with forbid_dns() as attempts, pytest.raises(socket.gaierror, match="in the enclave"):
        socket.getaddrinfo("api.binance.com", 443)
    assert attempts == ["api.binance.com"]
    assert socket.getaddrinfo is real


def test_vsock_code_path_fails_with_a_named_error(pki: CertAuthority) -> None:
    # No vsock peer exists here (vsock loopback needs vsock_loopback); what we can check is
    # that the AF_VSOCK path is taken and that its failure is typed and names the address.
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        pytest.skip(f"AF_VSOCK sockets unavailable here: {exc.strerror}")
    config = EgressConfig.from_strings(
        routes=["api.binance.com:443=vsock:3:8443"],
        ca_bundle=pki.ca_pem,
        timeouts=Timeouts(connect=0.5, read=0.5, write=0.5, pool=0.5),
    )
    with pytest.raises((EgressConnectError, EgressTimeout), match="vsock:3:8443"):
        fetch(config, URL)
