"""The oracle's tests run on the networking fixtures (a test PKI, exchange stand-ins, network
namespaces): one definition, in tests/enclave_net/conftest.py. The chain fixture is the oracle's."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from oracle_example.chain import Anvil
from tests.enclave_net.conftest import (
    binance,
    binance_route,
    enclave,
    kraken,
    kraken_route,
    netns_reason,
    pki,
    sockdir,
    start_proxy,
)

__all__ = [
    "anvil",
    "binance",
    "binance_route",
    "enclave",
    "kraken",
    "kraken_route",
    "netns_reason",
    "pki",
    "sockdir",
    "start_proxy",
]


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One local EVM for the session: anvil from the pinned npm package, on 127.0.0.1."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: `make test` installs Debian's nodejs and npm")
    chain = Anvil()
    yield chain
    chain.close()
