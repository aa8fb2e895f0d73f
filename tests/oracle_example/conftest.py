from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oracle_example.chain import Anvil
from tests.oracle_example._support import (
    CertAuthority,
    Enclave,
    HttpsExchange,
    ProxyProcess,
    namespaces_unavailable,
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


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One local EVM for the session: anvil from the pinned npm package, on 127.0.0.1."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: `make test` installs Debian's nodejs and npm")
    chain = Anvil()
    yield chain
    chain.close()
