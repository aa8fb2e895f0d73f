"""`nitro-oracle doctor`: enclave_net's doctor with the oracle's exchange probes.

Each exchange's time endpoint must answer its documented JSON, its clock is the doctor's
reference, and its own ticker must be fresh (docs/troubleshooting.md). The generic checks are
tested in tests/enclave_net/test_doctor.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave_net.address import HostPort, UnixAddress
from enclave_net.doctor import check_egress
from enclave_net.egress import EgressConfig
from oracle_example._cli import main
from oracle_example.config import OracleConfig
from oracle_example.probes import oracle_probes
from tests.enclave_net._support import (
    CertAuthority,
    HttpsExchange,
    doctor_via,
    route_to,
)


def test_one_probe_per_configured_source_with_its_time_endpoint() -> None:
    probes = {p.host: p for p in oracle_probes(OracleConfig())}
    assert {host: p.path for host, p in probes.items()} == {
        "api.binance.com": "/api/v3/time",
        "api.exchange.coinbase.com": "/time",
        "api.kraken.com": "/0/public/Time",
        "www.okx.com": "/api/v5/public/time",
    }
    # each source's freshness check asks for the first feed it prices (USDT/USD comes first,
    # as every rate precedes the feeds it converts; Binance and OKX have no USD market for it)
    assert {host: p.feed for host, p in probes.items()} == {
        "api.binance.com": "BTC/USD",
        "api.exchange.coinbase.com": "USDT/USD",
        "api.kraken.com": "USDT/USD",
        "www.okx.com": "BTC/USD",
    }


# --- An HTTP 200 that is not the exchange's JSON -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/portal", "the body is an HTML page"),  # a captive portal / proxy error page
        ("/api/v5/public/time", 'expected {"code": "0"'),  # JSON, but another API's shape
    ],
)
def test_http_200_with_the_wrong_body_is_a_schema_mismatch(
    path: str,
    words: str,
    binance_route: UnixAddress,
    pki: CertAuthority,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, found = doctor_via(
        main,
        capsys,
        binance_route,
        pki,
        "--probe",
        f"https://api.binance.com{path}",
    )
    finding = found["http api.binance.com"]
    assert finding["status"] == "fail"
    assert "-> 200 but not the documented JSON (schema mismatch)" in finding["message"]
    assert words in finding["message"]
    assert "captive portal" in finding["remedy"]
    assert code == 1


def test_ticker_in_the_wrong_shape_is_a_schema_mismatch(
    kraken_route: UnixAddress, pki: CertAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    # The health probe (a custom path, any JSON) passes; the oracle's own Kraken ticker request
    # then gets a Binance-like body: the freshness check names the shape, not a price.
    code, found = doctor_via(
        main,
        capsys,
        kraken_route,
        pki,
        "--probe",
        "https://api.kraken.com/custom-health",
        upstream="api.kraken.com:443",
    )
    assert found["http api.kraken.com"]["status"] == "ok"
    finding = found["freshness api.kraken.com"]
    assert finding["status"] == "fail"
    assert "not kraken's ticker JSON (schema mismatch)" in finding["message"]
    assert code == 1


# --- The clock against serverTime, and each source's own timestamp ----------------------------


@pytest.fixture
def binance_at(pki: CertAuthority, sockdir: Path) -> Iterator[Callable[..., UnixAddress]]:
    """A Binance stand-in whose clock or data is off, behind its own route."""
    made: list[Any] = []

    def make(*, clock_offset: float = 0.0, data_age: float = 0.0) -> UnixAddress:
        server = HttpsExchange("api.binance.com", *pki.issue("api.binance.com"))
        server.clock_offset, server.data_age = clock_offset, data_age
        listen = UnixAddress(str(sockdir / f"b{len(made)}.sock"))
        made.extend([route_to("api.binance.com", server, listen), server])
        return listen

    yield make
    for thing in made:
        thing.close()


@pytest.mark.parametrize(
    ("offset", "verdict", "words"),
    [
        (-10.0, "warn", "s ahead of api.binance.com serverTime (round trip"),
        (120.0, "fail", "s behind api.binance.com serverTime (round trip"),
    ],
)
def test_clock_is_compared_with_binance_server_time(
    offset: float,
    verdict: str,
    words: str,
    binance_at: Callable[..., UnixAddress],
    pki: CertAuthority,
    capsys: pytest.CaptureFixture[str],
) -> None:
    route = binance_at(clock_offset=offset)
    code, found = doctor_via(main, capsys, route, pki)
    assert found["clock"]["status"] == verdict
    assert words in found["clock"]["message"]
    assert ("over the 30s budget" if verdict == "fail" else "over 2s") in found["clock"]["message"]
    assert found["clock"]["remedy"]
    assert code == (1 if verdict == "fail" else 0)


def test_stale_source_is_named_with_its_age(
    binance_at: Callable[..., UnixAddress], pki: CertAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    route = binance_at(data_age=120.0)
    code, found = doctor_via(main, capsys, route, pki)
    finding = found["freshness api.binance.com"]
    assert finding["status"] == "fail"
    assert "last price is 120." in finding["message"]
    assert "over the 30s freshness budget" in finding["message"]
    assert found["clock"]["status"] == "ok"  # the network and the clock are fine
    assert code == 1
    code, found = doctor_via(
        main,
        capsys,
        route,
        pki,
        "--max-source-age",
        "300",
    )
    assert found["freshness api.binance.com"]["status"] == "ok"


def test_the_doctor_judges_time_by_the_clock_it_is_given(
    binance_route: UnixAddress, pki: CertAuthority
) -> None:
    # The same healthy server and route; only the doctor's clock moves. Freshness and the clock
    # check both read it, so a clock two minutes fast fails both, naming the skew.
    config = EgressConfig(
        routes={HostPort("api.binance.com", 443): binance_route}, ca_bundle=pki.ca_pem
    )
    probes = {HostPort(p.host, 443): p for p in oracle_probes(OracleConfig())}

    def findings(shift: timedelta) -> dict[str, Any]:
        found = asyncio.run(
            check_egress(config, probes, clock=lambda: datetime.now(UTC) + shift, concurrency=1)
        )
        return {f.check: f for f in found}

    honest = findings(timedelta(0))
    assert honest["clock"].status == "ok" and honest["freshness api.binance.com"].status == "ok"
    fast = findings(timedelta(minutes=2))
    assert fast["clock"].status == "fail"
    assert "ahead of api.binance.com serverTime" in fast["clock"].message
    assert fast["freshness api.binance.com"].status == "fail"
