"""The oracle's tests run on the networking fixtures (a test PKI, exchange stand-ins, network
namespaces): one definition, in tests/enclave_net/conftest.py."""

from __future__ import annotations

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
