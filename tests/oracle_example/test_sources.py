"""Exchange adapters on their recorded shapes, on malformed bodies, and on 451/429/418."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle_example.aggregate import Quote
from oracle_example.config import OracleConfig, SourceConfig
from oracle_example.errors import (
    SourceBlocked,
    SourceError,
    SourceHttpError,
    SourceMalformed,
    SourceRateLimited,
    SourceUnreachable,
)
from oracle_example.exchanges import ADAPTERS, Binance, Coinbase, Kraken, Okx, build_sources
from oracle_example.sources import (
    BREAKER_THRESHOLD,
    DEFAULT_BAN_BACKOFF,
    DEFAULT_RATE_LIMIT_BACKOFF,
    MAX_BODY_BYTES,
    MAX_RETRY_AFTER,
    Source,
    SourceState,
    parse_retry_after,
)
from tests.oracle_example.oracle_fixtures import RECORDED_AT, parse, recorded, recorded_ok

SOURCES = build_sources(OracleConfig())
FEEDS = ("USDT/USD", "BTC/USD", "ETH/USD")

# What each fixture must parse to: (price string, source time).
EXPECTED: dict[str, tuple[str, int | datetime]] = {
    "binance_btcusdt_ticker24hr_mini.json": ("96512.34000000", 1764170999123),
    "binance_ethusdt_ticker24hr_mini.json": ("3612.47000000", 1764170999456),
    "coinbase_btc-usd_ticker.json": ("96515.00", datetime(2025, 11, 26, 15, 29, 59, 512345)),
    "coinbase_eth-usd_ticker.json": ("3612.9", datetime(2025, 11, 26, 15, 29, 58, 900000)),
    "coinbase_usdt-usd_ticker.json": ("0.99995", datetime(2025, 11, 26, 15, 29, 59, 101234)),
    # Kraken: the last trade's own time (not the Date header, 15:29:59, of the same answer)
    "kraken_xbtusd_trades.json": ("96510.10000", datetime(2025, 11, 26, 15, 29, 59, 123400)),
    "kraken_ethusd_trades.json": ("3612.60000", datetime(2025, 11, 26, 15, 29, 58, 876500)),
    "kraken_usdtusd_trades.json": ("0.99990000", datetime(2025, 11, 26, 15, 29, 57, 500000)),
    "okx_btc-usdt_ticker.json": ("96508.3", 1764170999876),
    "okx_eth-usdt_ticker.json": ("3611.98", 1764170999654),
}


def _time(value: int | datetime) -> datetime:
    if isinstance(value, int):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    return value.replace(tzinfo=UTC)


@pytest.mark.parametrize("rec", [r for f in FEEDS for r in recorded_ok(f)], ids=lambda r: r.file)
def test_fixture_parses_to_exact_decimal_and_source_time(rec):  # type: ignore[no-untyped-def]
    source = SOURCES[rec.source]
    # The request the adapter builds is exactly the one the fixture answers.
    req = source.request(rec.feed)
    assert (req.host, req.path) == (rec.host, rec.path)
    assert req.url == f"https://{rec.host}{rec.path}"
    assert dict(req.headers)["user-agent"]
    quote = parse(rec, source)
    price, when = EXPECTED[rec.file]
    assert quote.price == Decimal(price)
    assert str(quote.price) == price  # no re-rounding: the exchange's own digits
    assert quote.source_time == _time(when)
    assert quote.received_at == RECORDED_AT
    assert (quote.source, quote.feed) == (rec.source, rec.feed)


def test_every_market_of_the_default_feeds_has_a_fixture() -> None:
    config = OracleConfig()
    assert {f.symbol for f in config.feeds} == set(FEEDS)
    for feed in config.feeds:
        assert {r.source for r in recorded_ok(feed.symbol)} == {m.source for m in feed.markets}
    assert {m.source for f in config.feeds for m in f.markets} == set(ADAPTERS)


def _walk(value: object) -> list[object]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [value] + [
            x for f in dataclasses.fields(value) for x in _walk(getattr(value, f.name))
        ]
    return [value]


def test_decimal_only_no_float_anywhere_in_parsed_quotes() -> None:
    quotes = [parse(r, SOURCES[r.source]) for f in FEEDS for r in recorded_ok(f)]
    assert len(quotes) == 10
    for quote in quotes:
        assert type(quote.price) is Decimal
        assert not any(isinstance(v, float) for v in _walk(quote))


def test_a_json_number_price_is_refused_not_floated() -> None:
    # Every exchange sends prices as strings; a bare number means the shape changed.
    body = json.dumps(
        {"symbol": "BTCUSDT", "lastPrice": 96512.34, "closeTime": 1764170999123}
    ).encode()
    with pytest.raises(SourceMalformed, match="decimal string"):
        SOURCES["binance"].parse("BTC/USD", status=200, headers={}, body=body, now=RECORDED_AT)


def test_quote_refuses_a_float_price() -> None:
    with pytest.raises(SourceMalformed):
        Quote(
            source="x",
            feed="BTC/USD",
            instrument="X",
            price=1.5,  # type: ignore[arg-type]
            source_time=RECORDED_AT,
            received_at=RECORDED_AT,
        )


# --- 451 / 429 / 418 ---------------------------------------------------------------------------


def _by_file(name: str):  # type: ignore[no-untyped-def]
    (rec,) = [r for r in recorded() if r.file == name]
    return rec


def test_451_blocks_and_disables_the_source_with_a_clear_log_line(caplog) -> None:  # type: ignore[no-untyped-def]
    rec = _by_file("binance_451_restricted.json")
    with pytest.raises(SourceBlocked) as info:
        parse(rec, SOURCES["binance"])
    assert info.value.code == "source.blocked" and info.value.status == 451
    assert "restricted location" in str(info.value)
    state = SourceState(source="binance")
    with caplog.at_level(logging.ERROR, logger="oracle_example.sources"):
        state = state.failed(info.value, now=RECORDED_AT)
    assert state.disabled is not None
    assert not state.ready(RECORDED_AT + timedelta(days=365))
    (line,) = [r for r in caplog.records if r.name == "oracle_example.sources"]
    assert line.levelno == logging.ERROR
    assert "binance DISABLED" in line.getMessage() and "451" in line.getMessage()
    # Success elsewhere never re-enables a source that was blocked this session.
    assert not state.succeeded().ready(RECORDED_AT)


def test_429_honours_retry_after_seconds() -> None:
    rec = _by_file("binance_429_rate_limit.json")
    with pytest.raises(SourceRateLimited) as info:
        parse(rec, SOURCES["binance"])
    assert info.value.status == 429 and info.value.retry_after == timedelta(seconds=37)
    state = SourceState(source="binance").failed(info.value, now=RECORDED_AT)
    assert not state.ready(RECORDED_AT + timedelta(seconds=36))
    assert state.ready(RECORDED_AT + timedelta(seconds=37))
    # Then a success clears the backoff.
    assert state.succeeded().not_before is None and state.succeeded().failures == 0


def test_418_ban_honours_retry_after() -> None:
    rec = _by_file("binance_418_ip_ban.json")
    with pytest.raises(SourceRateLimited) as info:
        parse(rec, SOURCES["binance"])
    assert info.value.status == 418 and info.value.retry_after == timedelta(seconds=120)


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, None, DEFAULT_RATE_LIMIT_BACKOFF),
        (418, None, DEFAULT_BAN_BACKOFF),
        (429, "garbage", DEFAULT_RATE_LIMIT_BACKOFF),
        (429, "0", timedelta(seconds=1)),  # never a tight loop
        (418, "999999999", MAX_RETRY_AFTER),  # clamped to Binance's longest ban
        (429, "Wed, 26 Nov 2025 15:32:00 GMT", timedelta(minutes=2)),  # HTTP-date form
    ],
)
def test_retry_after_forms(status: int, header: str | None, expected: timedelta) -> None:
    headers = {} if header is None else {"Retry-After": header}
    for source in SOURCES.values():
        with pytest.raises(SourceRateLimited) as info:
            source.parse("BTC/USD", status=status, headers=headers, body=b"", now=RECORDED_AT)
        assert info.value.retry_after == expected


def test_parse_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 26 Nov 2025 15:00:00 GMT", now=RECORDED_AT) == timedelta(0)
    assert parse_retry_after(None, now=RECORDED_AT) is None


def test_headers_as_httpcore_byte_pairs() -> None:
    with pytest.raises(SourceRateLimited) as info:
        SOURCES["okx"].parse(
            "BTC/USD", status=429, headers=[(b"Retry-After", b"5")], body=b"", now=RECORDED_AT
        )
    assert info.value.retry_after == timedelta(seconds=5)


@pytest.mark.parametrize(
    ("file", "error", "code"),
    [
        ("binance_400_invalid_symbol.json", SourceHttpError, "source.http"),
        ("coinbase_404_not_found.json", SourceHttpError, "source.http"),
        ("kraken_unknown_pair.json", SourceMalformed, "source.api_error"),
        ("kraken_rate_limit.json", SourceRateLimited, "source.rate_limited"),
        ("okx_instrument_missing.json", SourceMalformed, "source.api_error"),
        ("okx_429_rate_limit.json", SourceRateLimited, "source.rate_limited"),
    ],
)
def test_error_fixtures(file: str, error: type[SourceError], code: str) -> None:
    rec = _by_file(file)
    with pytest.raises(error) as info:
        parse(rec, SOURCES[rec.source])
    assert info.value.code == code and info.value.source == rec.source


def test_in_body_rate_limits_back_off_by_default() -> None:
    for name in ("kraken_rate_limit.json", "okx_429_rate_limit.json"):
        rec = _by_file(name)
        with pytest.raises(SourceRateLimited) as info:
            parse(rec, SOURCES[rec.source])
        assert info.value.retry_after == DEFAULT_RATE_LIMIT_BACKOFF


def test_okx_rate_limit_code_with_http_200() -> None:
    body = b'{"code":"50011","msg":"Too Many Requests","data":[]}'
    with pytest.raises(SourceRateLimited):
        SOURCES["okx"].parse("BTC/USD", status=200, headers={}, body=body, now=RECORDED_AT)


def test_binance_asks_for_trading_symbols_and_a_halted_one_is_not_priced() -> None:
    request = SOURCES["binance"].request("BTC/USD")
    assert request.url.endswith("symbol=BTCUSDT&type=MINI&symbolStatus=TRADING")
    # What Binance answers for a symbol whose status is not TRADING (error -1220): an error
    # for this source this round, never its last price.
    body = b'{"code":-1220,"msg":"The symbol is not trading."}'
    with pytest.raises(SourceHttpError) as info:
        SOURCES["binance"].parse("BTC/USD", status=400, headers={}, body=body, now=RECORDED_AT)
    assert info.value.status == 400 and "-1220" in str(info.value)


def test_5xx_is_an_http_error() -> None:
    with pytest.raises(SourceHttpError) as info:
        SOURCES["coinbase"].parse(
            "BTC/USD", status=503, headers={}, body=b"<html>", now=RECORDED_AT
        )
    assert info.value.status == 503


# --- malformed bodies ------------------------------------------------------------------------


def _mutate(file: str, path: list[object], value: object) -> bytes:
    doc = json.loads(_by_file(file).body)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(doc).encode()


_DELETE = object()
_BINANCE = "binance_btcusdt_ticker24hr_mini.json"
_COINBASE = "coinbase_btc-usd_ticker.json"
_KRAKEN = "kraken_xbtusd_trades.json"
_OKX = "okx_btc-usdt_ticker.json"

MALFORMED = [
    (_BINANCE, ["lastPrice"], _DELETE),
    (_BINANCE, ["lastPrice"], "-1.0"),
    (_BINANCE, ["lastPrice"], "0.00000000"),
    (_BINANCE, ["lastPrice"], "1e5"),
    (_BINANCE, ["lastPrice"], "NaN"),
    (_BINANCE, ["lastPrice"], " 96512.34"),
    (_BINANCE, ["symbol"], "ETHUSDT"),
    (_BINANCE, ["closeTime"], "1764170999123"),
    (_BINANCE, ["closeTime"], True),
    (_BINANCE, ["closeTime"], 1),
    (_COINBASE, ["time"], "2025-11-26 15:29:59"),
    (_COINBASE, ["time"], "2025-11-26T15:29:59+02:00"),
    (_COINBASE, ["time"], "2025-13-26T15:29:59Z"),
    (_COINBASE, ["price"], None),
    (_KRAKEN, ["result", "XXBTZUSD"], []),  # no trade
    (_KRAKEN, ["result", "XXBTZUSD", 0], ["96510.1", "1"]),  # no time
    (_KRAKEN, ["result", "XXBTZUSD", 0, 0], "Infinity"),
    (_KRAKEN, ["result", "XXBTZUSD", 0, 2], "1764170999.1234"),  # time as a string
    (_KRAKEN, ["result", "XXBTZUSD", 0, 2], 1e12),  # implausible time
    (_KRAKEN, ["result", "XETHZUSD"], [["1.0", "1", 1764170999.0]]),  # two pairs
    (_KRAKEN, ["error"], "none"),
    (_OKX, ["code"], 0),
    (_OKX, ["data"], []),
    (_OKX, ["data", 0, "instId"], "ETH-USDT"),
    (_OKX, ["data", 0, "ts"], 1764170999876),
    (_OKX, ["data", 0, "ts"], "01764170999876"),
    (_OKX, ["data", 0, "last"], "-96508.3"),
]


@pytest.mark.parametrize(("file", "path", "value"), MALFORMED)
def test_malformed_fields_are_refused(file: str, path: list[object], value: object) -> None:
    rec = _by_file(file)
    with pytest.raises(SourceMalformed):
        SOURCES[rec.source].parse(
            rec.feed,
            status=200,
            headers=rec.headers,
            body=_mutate(file, path, value),
            now=RECORDED_AT,
        )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"a": NaN}',
        b'{"symbol": "BTCUSDT", "symbol": "BTCUSDT"}',
        b"[" * 50_000,  # nesting deeper than the JSON decoder recurses
        b" " * (MAX_BODY_BYTES + 1),
    ],
)
def test_garbage_bodies(body: bytes) -> None:
    for source in SOURCES.values():
        with pytest.raises(SourceMalformed):
            source.parse("BTC/USD", status=200, headers={"date": "x"}, body=body, now=RECORDED_AT)


def test_kraken_source_time_is_the_last_trade_never_the_date_header() -> None:
    # A market with no trade for an hour answers with a fresh Date header: the quote must carry
    # the trade's time, so the staleness check sees an hour.
    rec = _by_file(_KRAKEN)
    hour_old = _mutate(_KRAKEN, ["result", "XXBTZUSD", 0, 2], 1764167399.0)
    for headers in ({}, rec.headers, {"date": "Wed, 26 Nov 2025 15:30:00 GMT"}):
        quote = SOURCES["kraken"].parse(
            "BTC/USD", status=200, headers=headers, body=hour_old, now=RECORDED_AT
        )
        assert quote.source_time == datetime(2025, 11, 26, 14, 29, 59, tzinfo=UTC)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.sampled_from(["96512.34", "0", "-1", "1764170999123", "BTCUSDT", "BTC-USDT"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "symbol",
                    "lastPrice",
                    "closeTime",
                    "price",
                    "time",
                    "error",
                    "result",
                    "c",
                    "code",
                    "data",
                    "instId",
                    "last",
                    "ts",
                    "msg",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    doc=_json_values,
    source_id=st.sampled_from(sorted(ADAPTERS)),
    status=st.sampled_from([200, 200, 200, 400, 403, 418, 429, 451, 500]),
)
def test_only_typed_errors_escape(doc: object, source_id: str, status: int) -> None:
    body = json.dumps(doc).encode()
    try:
        quote = SOURCES[source_id].parse(
            "BTC/USD",
            status=status,
            headers={"date": "Wed, 26 Nov 2025 15:29:59 GMT"},
            body=body,
            now=RECORDED_AT,
        )
    except SourceError:
        return
    assert type(quote.price) is Decimal and quote.price > 0


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), source_id=st.sampled_from(sorted(ADAPTERS)))
def test_random_bytes_only_typed_errors(body: bytes, source_id: str) -> None:
    with pytest.raises(SourceError):
        SOURCES[source_id].parse("BTC/USD", status=200, headers={}, body=body, now=RECORDED_AT)


# --- construction and scheduling -------------------------------------------------------------


def test_build_sources_binds_hosts_and_instruments() -> None:
    assert isinstance(SOURCES["binance"], Binance)
    assert isinstance(SOURCES["coinbase"], Coinbase)
    assert isinstance(SOURCES["kraken"], Kraken)
    assert isinstance(SOURCES["okx"], Okx)
    assert SOURCES["kraken"].instruments == {
        "USDT/USD": "USDTUSD",
        "BTC/USD": "XBTUSD",
        "ETH/USD": "ETHUSD",
    }
    for source in SOURCES.values():
        assert source.host == type(source).default_host


def test_unknown_feed_and_unknown_source() -> None:
    with pytest.raises(SourceError, match="no instrument"):
        SOURCES["okx"].request("SOL/USD")
    config = OracleConfig(
        sources=(*OracleConfig().sources, SourceConfig(id="bitstamp", host="www.bitstamp.net")),
    )
    with pytest.raises(SourceError, match="no adapter"):
        build_sources(config)


def test_circuit_breaker_backs_off_after_repeated_failures() -> None:
    state = SourceState(source="okx")
    now = RECORDED_AT
    error = SourceUnreachable("connect timed out", source="okx")
    for _ in range(BREAKER_THRESHOLD - 1):
        state = state.failed(error, now=now)
        assert state.ready(now)
    delays = []
    for _ in range(4):
        state = state.failed(error, now=now)
        assert state.not_before is not None and not state.ready(now)
        delays.append(state.not_before - now)
    assert delays == [timedelta(seconds=s) for s in (2, 4, 8, 16)]
    for _ in range(30):
        state = state.failed(error, now=now)
    assert state.not_before == now + timedelta(minutes=5)
    assert state.succeeded().ready(now)


def test_source_is_abstract() -> None:
    with pytest.raises(TypeError):
        Source(host="x.example")  # type: ignore[abstract]
