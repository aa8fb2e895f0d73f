from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enclave_net.address import UnixAddress
from tests.enclave_net._support import (
    CertAuthority,
    Enclave,
    HttpsExchange,
    ProxyProcess,
    namespaces_unavailable,
    route_to,
    short_tempdir,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def binance(pki: CertAuthority) -> Iterator[HttpsExchange]:
    server = HttpsExchange("api.binance.com", *pki.issue("api.binance.com"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def kraken(pki: CertAuthority) -> Iterator[HttpsExchange]:
    server = HttpsExchange("api.kraken.com", *pki.issue("api.kraken.com"))
    yield server
    server.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(*args: str) -> ProxyProcess:
        proc = ProxyProcess(args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def netns_reason() -> str | None:
    return namespaces_unavailable()


@pytest.fixture
def enclave(netns_reason: str | None) -> Iterator[Enclave]:
    if netns_reason is not None:
        pytest.skip(netns_reason)
    ns = Enclave()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def binance_route(binance: HttpsExchange, sockdir: Path) -> Iterator[UnixAddress]:
    listen = UnixAddress(str(sockdir / "b.sock"))
    proxy = route_to("api.binance.com", binance, listen)
    yield listen
    proxy.close()


@pytest.fixture
def kraken_route(kraken: HttpsExchange, sockdir: Path) -> Iterator[UnixAddress]:
    """A parent port wired to the Kraken stand-in (what a misrouted Binance port reaches)."""
    listen = UnixAddress(str(sockdir / "k.sock"))
    proxy = route_to("api.kraken.com", kraken, listen)
    yield listen
    proxy.close()
