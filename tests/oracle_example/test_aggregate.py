"""Aggregation: median, outlier rejection in bps, minimum sources, staleness, dispersion."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oracle_example.aggregate import (
    BPS,
    Aggregate,
    AggregationFailure,
    Quote,
    aggregate,
    aggregate_feed,
    clock_failure,
    dispersion_bps,
    median,
    message_for,
    scale_price,
    should_publish,
)
from oracle_example.config import FeedConfig, Market, OracleConfig
from oracle_example.errors import (
    AggregationError,
    SourceBlocked,
    SourceRateLimited,
    SourceUnreachable,
)
from oracle_example.eth import keccak256
from oracle_example.exchanges import build_sources
from oracle_example.report import (
    OracleError,
    OracleErrorCode,
    Outcome,
    PriceReport,
    SourceOutcome,
    sources_hash,
)
from tests.oracle_example.oracle_fixtures import RECORDED_AT, parse, recorded_ok

CONFIG = OracleConfig()
SOURCES = build_sources(CONFIG)
NOW = RECORDED_AT


def fixture_quotes(feed: str) -> list[Quote]:
    return [parse(r, SOURCES[r.source]) for r in recorded_ok(feed)]


def quote(source: str, price: str | Decimal, *, age: float = 1.0, feed: str = "BTC/USD") -> Quote:
    return Quote(
        source=source,
        feed=feed,
        instrument="X",
        price=Decimal(price),
        source_time=NOW - timedelta(seconds=age),
        received_at=NOW,
    )


def wide_feed(n: int, decimals: int = 8) -> FeedConfig:
    return FeedConfig(
        symbol="BTC/USD",
        decimals=decimals,
        markets=tuple(Market(source=f"s{i}", instrument="X", quote="USD") for i in range(n)),
    )


def run(
    feed: FeedConfig, quotes: list[Quote], **overrides: object
) -> Aggregate | AggregationFailure:
    args: dict[str, object] = dict(
        now=NOW,
        min_sources=2,
        max_deviation_bps=100,
        max_dispersion_bps=150,
        max_age=timedelta(seconds=30),
        max_ahead=timedelta(seconds=5),
    )
    args.update(overrides)
    return aggregate(feed, quotes, **args)  # type: ignore[arg-type]


# --- the recorded round -----------------------------------------------------------------------


def recorded_rate() -> Decimal:
    result = aggregate_feed(CONFIG, "USDT/USD", fixture_quotes("USDT/USD"), now=NOW)
    assert isinstance(result, Aggregate) and result.num_sources == 2
    return Decimal(result.price).scaleb(-result.decimals)


def test_recorded_btc_round() -> None:
    rate = recorded_rate()
    assert rate == (Decimal("0.99995") + Decimal("0.9999")) / 2
    result = aggregate_feed(
        CONFIG, "BTC/USD", fixture_quotes("BTC/USD"), now=NOW, rates={"USDT": rate}
    )
    assert isinstance(result, Aggregate)
    # Binance and OKX quote USDT: converted at the rate; Coinbase and Kraken quote USD.
    usd = {
        "binance": Decimal("96512.34") * rate,
        "coinbase": Decimal("96515.00"),
        "kraken": Decimal("96510.10"),
        "okx": Decimal("96508.3") * rate,
    }
    scaled = sorted(scale_price(p, 8) for p in usd.values())
    assert result.price == median(scaled) == 9650760078725
    assert result.num_sources == 4 and result.decimals == 8
    assert result.dispersion_bps == dispersion_bps(scaled, result.price) == 2
    assert result.sources_hash == keccak256(
        b"".join(keccak256(s.encode()) for s in ("binance", "coinbase", "kraken", "okx"))
    )
    assert [o.outcome for o in result.outcomes] == [Outcome.USED] * 4
    assert [o.source for o in result.outcomes] == ["binance", "coinbase", "kraken", "okx"]
    assert [o.price for o in result.outcomes] == [usd[s] for s in sorted(usd)]


def test_recorded_eth_round() -> None:
    rate = recorded_rate()
    result = aggregate_feed(
        CONFIG, "ETH/USD", fixture_quotes("ETH/USD"), now=NOW, rates={"USDT": rate}
    )
    assert isinstance(result, Aggregate)
    assert result.num_sources == 4
    # 3611.98 and 3612.47 USDT converted at 0.999925 = 3611.709 and 3612.199; then 3612.60 and
    # 3612.9 USD: the mean of the middle two.
    middle = median([scale_price(Decimal("3612.47") * rate, 8), 361260000000])
    assert result.price == middle


def test_stale_and_future_quotes_are_dropped_by_source_time() -> None:
    feed = wide_feed(4)
    quotes = [
        quote("s0", "100"),
        quote("s1", "100.1"),
        quote("s2", "100", age=31),
        quote("s3", "100", age=-6),
    ]
    result = run(feed, quotes)
    assert isinstance(result, Aggregate) and result.num_sources == 2
    outcomes = {o.source: o.outcome for o in result.outcomes}
    assert outcomes == {
        "s0": Outcome.USED,
        "s1": Outcome.USED,
        "s2": Outcome.STALE,
        "s3": Outcome.FUTURE,
    }


def test_outlier_is_dropped_and_recorded() -> None:
    feed = wide_feed(4)
    result = run(
        feed, [quote("s0", "100"), quote("s1", "100.2"), quote("s2", "99.9"), quote("s3", "103")]
    )
    assert isinstance(result, Aggregate)
    assert result.num_sources == 3 and result.price == 10000000000
    (out,) = [o for o in result.outcomes if o.outcome == Outcome.OUTLIER]
    assert out.source == "s3" and "bps" in out.detail


def test_too_few_sources_gives_the_error_report_type() -> None:
    feed = wide_feed(4)
    result = run(
        feed,
        [quote("s0", "100"), quote("s1", "100", age=60)],
        failures=[SourceUnreachable("timeout", source="s2")],
    )
    assert isinstance(result, AggregationFailure)
    assert result.code == OracleErrorCode.TOO_FEW_SOURCES
    assert "1 usable source(s), 2 required" in result.detail
    assert {o.source: o.outcome for o in result.outcomes} == {
        "s0": Outcome.USED,
        "s1": Outcome.STALE,
        "s2": Outcome.FAILED,
        "s3": Outcome.MISSING,
    }
    message, detail = message_for(result, round_id=7, config=CONFIG)
    assert isinstance(message, OracleError)
    assert message.code == 1 and detail == result.detail
    assert message.detail_hash == keccak256(result.detail.encode())
    assert message.timestamp == int(NOW.timestamp())
    assert (message.num_sources, message.min_sources) == (1, CONFIG.min_sources)
    assert message.config_hash == CONFIG.config_hash


def test_all_blocked_or_rate_limited() -> None:
    feed = wide_feed(2)
    result = run(
        feed,
        [],
        failures=[
            SourceBlocked("HTTP 451", source="s0"),
            SourceRateLimited(
                "HTTP 429", source="s1", status=429, retry_after=timedelta(seconds=9)
            ),
        ],
    )
    assert isinstance(result, AggregationFailure)
    assert result.code == OracleErrorCode.ALL_SOURCES_BLOCKED


def test_dispersion_too_high() -> None:
    feed = wide_feed(3)
    # All within 100 bps of the first median (100), spread 190 bps.
    result = run(feed, [quote("s0", "99.1"), quote("s1", "100"), quote("s2", "100.8")])
    assert isinstance(result, AggregationFailure) and result.code == OracleErrorCode.DISPERSION
    message, _ = message_for(result, round_id=1, config=CONFIG)
    assert isinstance(message, OracleError) and message.code == 2


def test_price_report_from_an_aggregate() -> None:
    result = aggregate_feed(
        CONFIG, "BTC/USD", fixture_quotes("BTC/USD"), now=NOW, rates={"USDT": recorded_rate()}
    )
    assert isinstance(result, Aggregate)
    message, detail = message_for(result, round_id=3, config=CONFIG)
    assert isinstance(message, PriceReport) and detail is None
    assert message.price == result.price and message.num_sources == 4
    assert message.feed_id == keccak256(b"BTC/USD")
    # Times on the wire: the oldest used observation, the enclave time less the tolerated skew,
    # and the enclave time plus the report TTL.
    oldest = min(o.source_time for o in result.outcomes if o.source_time is not None)
    assert message.observations_timestamp == int(oldest.timestamp())
    assert message.timestamp == int(NOW.timestamp())
    assert message.valid_from == message.timestamp - 2
    assert message.expires_at == message.timestamp + 120
    assert (message.round_id, message.min_sources) == (3, CONFIG.min_sources)


def test_inconsistent_inputs_are_programming_errors() -> None:
    feed = wide_feed(2)
    with pytest.raises(AggregationError, match="not a market"):
        run(feed, [quote("zz", "1")])
    with pytest.raises(AggregationError, match="two results"):
        run(feed, [quote("s0", "1"), quote("s0", "2")])
    with pytest.raises(AggregationError, match="quote for ETH/USD"):
        run(feed, [quote("s0", "1", feed="ETH/USD")])
    with pytest.raises(AggregationError):
        scale_price(1.5, 8)  # type: ignore[arg-type]


def test_scale_price_rounds_half_even_exactly() -> None:
    assert scale_price(Decimal("1.000000005"), 8) == 100000000
    assert scale_price(Decimal("1.000000015"), 8) == 100000002
    assert scale_price(Decimal("96512.34000000"), 8) == 9651234000000
    assert scale_price(Decimal("0.123456789012345678901234567890"), 30) == (
        123456789012345678901234567890
    )


def test_median_and_dispersion_basics() -> None:
    assert median([3, 1, 2]) == 2
    assert median([1, 2]) == 2  # 1.5 -> 2 (even)
    assert median([1, 4]) == 2  # 2.5 -> 2 (even)
    assert median([3, 4]) == 4  # 3.5 -> 4
    assert dispersion_bps([100, 100], 100) == 0
    assert dispersion_bps([100, 101], 100) == 100
    assert dispersion_bps([1000, 1001], 1000) == 10
    assert dispersion_bps([10000, 10001], 10000) == 1  # 0.x rounds up, never down
    with pytest.raises(AggregationError):
        median([])
    assert sources_hash(["b", "a"]) == sources_hash(["a", "b"])
    with pytest.raises(AggregationError):
        sources_hash(["a", "a"])


def test_source_outcome_json_round_trip() -> None:
    line = SourceOutcome(
        source="okx", outcome=Outcome.USED, price=Decimal("96508.3"), source_time=NOW, detail=""
    )
    assert SourceOutcome.from_json(line.to_json()) == line
    assert line.to_json()["price"] == "96508.3"
    assert line.to_json()["outcome"] == "used"


# --- properties -----------------------------------------------------------------------------

ints = st.integers(min_value=1, max_value=10**30)


@given(st.lists(ints, min_size=1, max_size=15))
def test_median_within_min_max_and_order_free(values: list[int]) -> None:
    m = median(values)
    assert min(values) <= m <= max(values)
    assert median(list(reversed(values))) == m
    if len(values) % 2:
        assert m in values


prices = st.decimals(
    min_value=Decimal("0.0001"),
    max_value=Decimal("1000000"),
    places=6,
    allow_nan=False,
    allow_infinity=False,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(prices, min_size=1, max_size=9),
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=1, max_value=9),
)
def test_aggregate_properties(values: list[Decimal], max_dev: int, min_sources: int) -> None:
    feed = wide_feed(len(values))
    quotes = [quote(f"s{i}", p) for i, p in enumerate(values)]
    result = run(
        feed, quotes, min_sources=min_sources, max_deviation_bps=max_dev, max_dispersion_bps=BPS
    )
    scaled = [scale_price(p, 8) for p in values]
    if isinstance(result, AggregationFailure):
        n_used = sum(o.outcome == Outcome.USED for o in result.outcomes)
        assert result.code == OracleErrorCode.TOO_FEW_SOURCES and n_used < min_sources
        return
    used = [
        scale_price(o.price, 8)  # type: ignore[arg-type]
        for o in result.outcomes
        if o.outcome == Outcome.USED
    ]
    assert result.num_sources == len(used) >= min_sources
    assert min(scaled) <= result.price <= max(scaled)
    assert min(used) <= result.price <= max(used)
    first = median(scaled)
    # Everything kept is inside the band around the first median; everything dropped outside.
    for o in result.outcomes:
        p = scale_price(o.price, 8)  # type: ignore[arg-type]
        inside = abs(p - first) * BPS <= max_dev * first
        assert inside == (o.outcome == Outcome.USED)
    assert result.dispersion_bps == dispersion_bps(used, result.price)


@settings(max_examples=150, deadline=None)
@given(
    base=st.integers(min_value=10**6, max_value=10**14),
    offsets=st.lists(st.integers(min_value=-50, max_value=50), min_size=3, max_size=8),
    factor=st.sampled_from([Decimal("0.5"), Decimal("0.9"), Decimal("1.1"), Decimal("3")]),
)
def test_one_far_outlier_is_always_rejected(base: int, offsets: list[int], factor: Decimal) -> None:
    # Honest sources within ±50 bps of `base`; one source off by >= 10 %.
    honest = [Decimal(base + base * o // BPS).scaleb(-8) for o in offsets]
    bad = (Decimal(base) * factor).scaleb(-8)
    feed = wide_feed(len(honest) + 1)
    quotes = [quote(f"s{i}", p) for i, p in enumerate(honest)]
    quotes.append(quote(f"s{len(honest)}", bad))
    result = run(feed, quotes, min_sources=3)
    assert isinstance(result, Aggregate)
    assert {o.source for o in result.outcomes if o.outcome == Outcome.OUTLIER} == {
        f"s{len(honest)}"
    }
    assert result.num_sources == len(honest)


@given(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=4))
def test_fewer_than_minimum_is_always_an_error_report(min_sources: int, n: int) -> None:
    assume(n < min_sources)
    feed = wide_feed(4)
    result = run(feed, [quote(f"s{i}", "100") for i in range(n)], min_sources=min_sources)
    assert isinstance(result, AggregationFailure)
    assert result.code in (OracleErrorCode.TOO_FEW_SOURCES,)
    message, detail = message_for(result, round_id=1, config=CONFIG)
    assert isinstance(message, OracleError) and detail is not None


def test_clock_skew_beyond_the_bound_is_a_signed_error() -> None:
    skew = CONFIG.max_clock_skew
    assert clock_failure("BTC/USD", now=NOW, attested_at=NOW - skew, max_skew=skew) is None
    late = clock_failure(
        "BTC/USD", now=NOW, attested_at=NOW - skew - timedelta(milliseconds=1), max_skew=skew
    )
    early = clock_failure("BTC/USD", now=NOW, attested_at=NOW + timedelta(seconds=3), max_skew=skew)
    for failure in (late, early):
        assert failure is not None and failure.code == OracleErrorCode.CLOCK_UNTRUSTED
        message, detail = message_for(failure, round_id=1, config=CONFIG)
        assert isinstance(message, OracleError) and message.code == 3 and detail


def test_publish_on_deviation_or_heartbeat() -> None:
    def publish(last: int | None, price: int, elapsed: int) -> bool:
        return should_publish(
            last_price=last,
            last_timestamp=None if last is None else 0,
            price=price,
            timestamp=elapsed,
            deviation_bps=50,
            heartbeat=timedelta(seconds=60),
        )

    assert publish(None, 1, 0)
    assert not publish(10000, 10049, 59)
    assert publish(10000, 10050, 59)
    assert publish(10000, 9950, 1)
    assert publish(10000, 10000, 60)
