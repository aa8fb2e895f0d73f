"""What a feed's price means: USD is dollars (USDT quotes converted at an aggregated rate, within
a depeg bound), and a price needs a quorum of distinct sources, else a signed refusal."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import coincurve
import pytest

from oracle_example.aggregate import (
    Aggregate,
    AggregationFailure,
    Quote,
    aggregate_feed,
    message_for,
)
from oracle_example.config import FeedConfig, Market, OracleConfig
from oracle_example.errors import ConfigError, SourceBlocked, SourceUnreachable
from oracle_example.eth import address_of, keccak256
from oracle_example.report import OracleError, OracleErrorCode, Outcome, SignedReport, feed_id
from tests.oracle_example.oracle_fixtures import RECORDED_AT

CONFIG = OracleConfig()
NOW = RECORDED_AT
KEY = coincurve.PrivateKey(keccak256(b"market truth test key"))


def q(source: str, price: str, feed: str = "BTC/USD") -> Quote:
    return Quote(
        source=source,
        feed=feed,
        instrument="X",
        price=Decimal(price),
        source_time=NOW - timedelta(seconds=1),
        received_at=NOW,
    )


def usdt_rate(price: str) -> Decimal:
    """The USDT/USD rate as the enclave gets it: aggregated from the USD markets for USDT."""
    result = aggregate_feed(
        CONFIG,
        "USDT/USD",
        [q("coinbase", price, "USDT/USD"), q("kraken", price, "USDT/USD")],
        now=NOW,
    )
    assert isinstance(result, Aggregate), result
    return Decimal(result.price).scaleb(-result.decimals)


# The depeg case: USD markets at 100,000; USDT trades at 0.995 $, so USDT markets show
# 100,000 / 0.995 = 100,502.51 USDT. Averaging the quotes as if USDT were USD signs 100,251.26.
USD_AT = "100000"
USDT_AT = "100502.51"


def btc_round(rates: dict[str, Decimal] | None) -> Aggregate | AggregationFailure:
    quotes = [q("coinbase", USD_AT), q("kraken", USD_AT), q("binance", USDT_AT), q("okx", USDT_AT)]
    return aggregate_feed(CONFIG, "BTC/USD", quotes, now=NOW, rates=rates)


def test_usdt_quotes_are_converted_at_the_aggregated_rate() -> None:
    rate = usdt_rate("0.995")
    assert rate == Decimal("0.995")
    result = btc_round({"USDT": rate})
    assert isinstance(result, Aggregate) and result.num_sources == 4
    # 100502.51 * 0.995 = 99999.99745: the median of {99999.99745 x2, 100000 x2}
    assert result.price == (9999999745000 + 10000000000000) // 2
    assert Decimal(result.price).scaleb(-8) == Decimal("99999.998725")
    assert result.price != 10025125500000  # the unconverted mean of the middle two
    lines = {o.source: o for o in result.outcomes}
    assert lines["binance"].price == Decimal("99999.99745")
    assert lines["binance"].detail == "100502.51 USDT at USDT/USD 0.99500000"
    assert lines["coinbase"].price == Decimal(USD_AT) and lines["coinbase"].detail == ""


def test_a_usdt_market_never_reaches_a_usd_price_without_the_rate() -> None:
    result = btc_round(None)
    # Without this round's USDT/USD rate the two USDT markets are not used at all, and two USD
    # markets are below the quorum of 3: a refusal, not a price built from USDT quotes.
    assert isinstance(result, AggregationFailure)
    assert result.code == OracleErrorCode.TOO_FEW_SOURCES
    lines = {o.source: o for o in result.outcomes}
    for source in ("binance", "okx"):
        assert lines[source].outcome == Outcome.FAILED
        assert "no USDT/USD rate" in lines[source].detail


def test_a_usd_feed_cannot_list_a_usdt_market_without_a_conversion() -> None:
    markets = (
        Market(source="coinbase", instrument="BTC-USD", quote="USD"),
        Market(source="binance", instrument="BTCUSDT", quote="USDT"),
    )
    with pytest.raises(ConfigError, match="convert_quotes"):
        FeedConfig(symbol="BTC/USD", markets=markets)
    # declaring the conversion needs the rate feed in the same config
    feed = FeedConfig(symbol="BTC/USD", markets=markets, convert_quotes=("USDT",))
    with pytest.raises(ConfigError, match="no USDT/USD feed"):
        OracleConfig(feeds=(feed,), min_sources=2)


def test_a_converted_quote_is_as_old_as_its_rate() -> None:
    # The rate was observed 40 s ago (older than maxSourceAge, 30 s): the USDT quotes, fresh
    # themselves, are stale once converted with it; the signed observationsTimestamp would
    # otherwise claim a freshness the price does not have.
    rate_time = NOW - timedelta(seconds=40)
    result = btc_round_at({"USDT": Decimal("0.995")}, {"USDT": rate_time})
    lines = {o.source: o for o in result.outcomes}
    assert lines["binance"].outcome == Outcome.STALE
    assert lines["binance"].source_time == rate_time
    # 20 s old: used, and the report's observationsTimestamp is the rate's time
    rate_time = NOW - timedelta(seconds=20)
    result = btc_round_at({"USDT": Decimal("0.995")}, {"USDT": rate_time})
    assert isinstance(result, Aggregate) and result.num_sources == 4
    message, _ = message_for(result, round_id=1, config=CONFIG)
    assert not isinstance(message, OracleError)
    assert message.observations_timestamp == int(rate_time.timestamp())


def btc_round_at(
    rates: dict[str, Decimal], rate_times: dict[str, datetime]
) -> Aggregate | AggregationFailure:
    quotes = [q("coinbase", USD_AT), q("kraken", USD_AT), q("binance", USDT_AT), q("okx", USDT_AT)]
    return aggregate_feed(CONFIG, "BTC/USD", quotes, now=NOW, rates=rates, rate_times=rate_times)


def test_a_usdt_feed_is_named_so_and_signs_its_own_feed_id() -> None:
    feed = FeedConfig(
        symbol="BTC/USDT",
        markets=(
            Market(source="binance", instrument="BTCUSDT", quote="USDT"),
            Market(source="okx", instrument="BTC-USDT", quote="USDT"),
            Market(source="kraken", instrument="XBTUSDT", quote="USDT"),
        ),
    )
    config = OracleConfig(feeds=(feed,))
    quotes = [q("binance", USDT_AT, "BTC/USDT"), q("okx", USDT_AT, "BTC/USDT")]
    quotes.append(q("kraken", "100502.50", "BTC/USDT"))
    result = aggregate_feed(config, "BTC/USDT", quotes, now=NOW)
    assert isinstance(result, Aggregate) and Decimal(result.price).scaleb(-8) == Decimal(USDT_AT)
    message, _ = message_for(result, round_id=1, config=config)
    assert message.feed_id == feed_id("BTC/USDT") != feed_id("BTC/USD")


def test_a_depegged_rate_is_a_signed_error() -> None:
    rate = usdt_rate("0.985")  # 150 bps off, over the default 100
    result = btc_round({"USDT": rate})
    assert isinstance(result, AggregationFailure)
    assert result.code == OracleErrorCode.QUOTE_DEPEG
    assert "USDT/USD 0.98500000" in result.detail
    message, detail = message_for(result, round_id=7, config=CONFIG)
    (signed,) = SignedReport.sign(
        message, feed="BTC/USD", key=KEY, domains=CONFIG.domains, detail=detail
    )
    assert isinstance(signed.message, OracleError)
    assert signed.message.code == OracleErrorCode.QUOTE_DEPEG
    assert signed.recover() == address_of(KEY.public_key.format(compressed=False))


# --- quorum ---------------------------------------------------------------------------------------


def test_the_default_quorum_is_three_and_is_in_the_config_hash() -> None:
    assert CONFIG.min_sources == 3
    assert CONFIG.quorum(CONFIG.feed("BTC/USD")) == 3
    assert CONFIG.to_json()["minSources"] == 3
    assert OracleConfig(min_sources=2).config_hash != CONFIG.config_hash


def test_two_of_four_sources_answering_gives_a_signed_error_not_a_price() -> None:
    rate = usdt_rate("1")
    failures = [
        SourceBlocked("451", source="binance", status=451),
        SourceUnreachable("connection reset", source="okx"),
    ]
    quotes = [q("coinbase", USD_AT), q("kraken", "100010")]
    result = aggregate_feed(
        CONFIG, "BTC/USD", quotes, now=NOW, failures=failures, rates={"USDT": rate}
    )
    assert isinstance(result, AggregationFailure)
    assert result.code == OracleErrorCode.TOO_FEW_SOURCES
    message, detail = message_for(result, round_id=9, config=CONFIG)
    (signed,) = SignedReport.sign(
        message,
        feed="BTC/USD",
        key=KEY,
        domains=CONFIG.domains,
        sources=result.outcomes,
        detail=detail,
    )
    assert isinstance(signed.message, OracleError)
    assert (signed.message.num_sources, signed.message.min_sources) == (2, 3)
    assert signed.message.config_hash == CONFIG.config_hash
    assert signed.recover() == address_of(KEY.public_key.format(compressed=False))
    # the same round with a third source answering is a price carrying the quorum it met
    priced = aggregate_feed(
        CONFIG,
        "BTC/USD",
        [*quotes, q("okx", USD_AT)],
        now=NOW,
        failures=failures[:1],
        rates={"USDT": rate},
    )
    assert isinstance(priced, Aggregate) and priced.num_sources == 3
    price, _ = message_for(priced, round_id=10, config=CONFIG)
    assert not isinstance(price, OracleError)
    assert (price.num_sources, price.min_sources) == (3, 3)


def test_a_feed_may_declare_its_own_quorum_and_signs_it() -> None:
    usdt = CONFIG.feed("USDT/USD")
    assert usdt.min_sources == 2 and CONFIG.quorum(usdt) == 2
    result = aggregate_feed(
        CONFIG, "USDT/USD", [q("coinbase", "1", "USDT/USD"), q("kraken", "1", "USDT/USD")], now=NOW
    )
    assert isinstance(result, Aggregate)
    message, _ = message_for(result, round_id=1, config=CONFIG)
    assert not isinstance(message, OracleError) and message.min_sources == 2
    with pytest.raises(ConfigError, match="min_sources"):
        FeedConfig(symbol="USDT/USD", markets=usdt.markets, min_sources=3)
