"""Quotes, and reports as the enclave signs them, for the enclave, contract and relay tests.

The path is the enclave's own (`aggregate_feed` -> `message_for` -> `SignedReport.sign`, what
`Oracle._publish` runs); `changes` replaces fields of the message before signing, so a rejection
test has a good signature over exactly the rule it breaks.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import coincurve

from oracle_example.aggregate import Quote, aggregate_feed, message_for
from oracle_example.config import OracleConfig
from oracle_example.eth import Eip712Domain
from oracle_example.report import PriceReport, SignedReport

DEFAULT_PRICES = ("100000.5", "100001.5", "99999.5", "100000")
# Round ids far above 1 and only ever increasing across a test session, as after a real boot.
_ROUNDS = itertools.count(1 << 40)


def quotes(
    symbol: str, observed: datetime, prices: tuple[str, ...] = DEFAULT_PRICES
) -> list[Quote]:
    """One quote per source of the default config, all observed at `observed`."""
    return [
        Quote(
            source=s,
            feed=symbol,
            instrument="X",
            price=Decimal(p),
            source_time=observed,
            received_at=observed,
        )
        for s, p in zip(("binance", "coinbase", "kraken", "okx"), prices, strict=False)
    ]


def sign_report(
    *,
    config: OracleConfig,
    key: coincurve.PrivateKey,
    domain: Eip712Domain,
    now: int,
    symbol: str = "BTC/USD",
    prices: tuple[str, ...] = DEFAULT_PRICES,
    age: int = 5,
    **changes: Any,
) -> SignedReport:
    """One report for `symbol` signed under `domain`, `age` s after its observations."""
    observed = datetime.fromtimestamp(now - age, UTC)
    at = datetime.fromtimestamp(now, UTC)
    # USDT quotes at par: the tests here are about the chain, not the conversion
    rates = {"USDT": Decimal(1)}
    result = aggregate_feed(config, symbol, quotes(symbol, observed, prices), now=at, rates=rates)
    message, _ = message_for(result, round_id=next(_ROUNDS), config=config)
    assert isinstance(message, PriceReport), result
    message = dataclasses.replace(message, **changes)
    domains = config.domains if domain in config.domains else (domain,)
    reports = SignedReport.sign(
        message, feed=symbol, key=key, domains=domains, sources=result.outcomes
    )
    return next(r for r in reports if r.domain == domain)
