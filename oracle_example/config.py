"""The oracle's runtime configuration, and its canonical hash (`configHash`).

PCR0/PCR2 measure only what is in the image; anything handed to the enclave at runtime must be
bound through `user_data`, or the host could change it unseen. So the whole configuration
(sources, feeds and the instrument each source quotes, thresholds, decimals, EIP-712 domains) is
hashed into `configHash`, which goes into `user_data` and every report.

Canonical form: the `to_json()` object serialised with sorted keys, no whitespace, ASCII only,
integers only (durations in milliseconds), bytes as lower-case 0x-hex; `configHash` is keccak256
of those bytes. JSON canonicalisation bit the predecessor, hence one writer here, a strict
reader, and a round-trip test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from oracle_example.errors import ConfigError, ReportFormatError
from oracle_example.eth import Eip712Domain, keccak256
from oracle_example.report import domains_hash, feed_id

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_DECIMALS",
    "Eip712Domain",
    "FeedConfig",
    "Market",
    "OracleConfig",
    "SourceConfig",
]

#: Bumped whenever the canonical form changes, so two versions never share a configHash.
CONFIG_VERSION = 1
#: RedStone's default (RedstoneConsumerBase), and one of Chainlink Data Streams' two (8 or 18).
DEFAULT_DECIMALS = 8
# uint8 on the wire; beyond 36 a scaled BTC price no longer fits comfortably in 128 bits, and no
# consumer uses more than 18 (Chainlink Data Streams: 8 or 18).
_MAX_DECIMALS = 36
_MAX_BPS = 10_000
_SYMBOL = re.compile(r"[A-Z0-9]{1,16}/[A-Z0-9]{1,16}")
_CURRENCY = re.compile(r"[A-Z0-9]{1,16}")
_SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_INSTRUMENT = re.compile(r"[A-Za-z0-9._:-]{1,32}")
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _ms(value: timedelta, name: str) -> int:
    ms, rest = divmod(value, timedelta(milliseconds=1))
    if rest or ms <= 0:
        raise ConfigError(f"{name} must be a positive whole number of milliseconds")
    return int(ms)


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """An exchange adapter (`sources.ADAPTERS` key) and the host it is reached at."""

    id: str
    host: str

    def __post_init__(self) -> None:
        if not _SOURCE_ID.fullmatch(self.id):
            raise ConfigError(f"source id must be lower-case [a-z0-9-], got {self.id!r}")
        if not _HOST.fullmatch(self.host):
            raise ConfigError(f"source host must be a lower-case DNS name, got {self.host!r}")


@dataclass(frozen=True, kw_only=True)
class Market:
    """What one source quotes for a feed: its own instrument name and its quote currency."""

    source: str
    instrument: str
    quote: str

    def __post_init__(self) -> None:
        if not _SOURCE_ID.fullmatch(self.source):
            raise ConfigError(f"market source must be a source id, got {self.source!r}")
        if not _INSTRUMENT.fullmatch(self.instrument):
            raise ConfigError(f"bad instrument name {self.instrument!r}")
        if not _CURRENCY.fullmatch(self.quote):
            raise ConfigError(f"bad quote currency {self.quote!r}")


@dataclass(frozen=True, kw_only=True)
class FeedConfig:
    """One feed: `symbol` names the pair actually priced (`BTC/USD` is dollars, `BTC/USDT` tether).

    USDT is not USD (docs/oracle-trust.md, "Market truth"). A market quoted in another currency Q is
    used only if Q is in `convert_quotes`: its price is then multiplied by the `Q/<quote>` rate
    that the same round aggregated from the config's own `Q/<quote>` feed (whose markets quote
    `<quote>` itself), and refused when that rate is off peg by more than `maxDepegBps`. The
    choice is in `configHash`. `min_sources` overrides the config's quorum for this feed only.
    """

    symbol: str
    markets: tuple[Market, ...]
    decimals: int = DEFAULT_DECIMALS
    convert_quotes: tuple[str, ...] = ()
    min_sources: int | None = None

    def __post_init__(self) -> None:
        feed_id(self.symbol)
        if isinstance(self.decimals, bool) or not 0 <= self.decimals <= _MAX_DECIMALS:
            raise ConfigError(f"{self.symbol}: decimals must be in 0..{_MAX_DECIMALS}")
        if not self.markets:
            raise ConfigError(f"{self.symbol}: at least one market is required")
        sources = [m.source for m in self.markets]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"{self.symbol}: one market per source")
        for quote in self.convert_quotes:
            if not _CURRENCY.fullmatch(quote) or quote == self.quote:
                raise ConfigError(f"{self.symbol}: bad conversion quote {quote!r}")
        if len(set(self.convert_quotes)) != len(self.convert_quotes):
            raise ConfigError(f"{self.symbol}: duplicate conversion quote")
        allowed = {self.quote, *self.convert_quotes}
        for market in self.markets:
            if market.quote not in allowed:
                raise ConfigError(
                    f"{self.symbol}: {market.source} quotes {market.quote}, not {self.quote}: "
                    f"list {market.quote} in convert_quotes (with a {market.quote}/{self.quote} "
                    f"feed), or name the feed {self.base}/{market.quote}"
                )
        if self.min_sources is not None and (
            isinstance(self.min_sources, bool) or not 1 <= self.min_sources <= len(self.markets)
        ):
            raise ConfigError(f"{self.symbol}: min_sources must be in 1..{len(self.markets)}")

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def feed_id(self) -> bytes:
        return feed_id(self.symbol)

    def rate_feed(self, quote: str) -> str:
        """The feed whose price converts a `quote`-quoted market into this feed's quote."""
        return f"{quote}/{self.quote}"

    def market(self, source: str) -> Market:
        for market in self.markets:
            if market.source == source:
                return market
        raise ConfigError(f"{self.symbol}: no market configured for source {source!r}")


def _default_feeds() -> tuple[FeedConfig, ...]:
    # Instrument names from each exchange's API docs (Binance Spot, Coinbase Exchange, Kraken,
    # OKX v5): Binance and OKX list spot pairs against USDT, Kraken calls bitcoin XBT.
    def feed(base: str, kraken: str) -> FeedConfig:
        return FeedConfig(
            symbol=f"{base}/USD",
            convert_quotes=("USDT",),
            markets=(
                Market(source="binance", instrument=f"{base}USDT", quote="USDT"),
                Market(source="coinbase", instrument=f"{base}-USD", quote="USD"),
                Market(source="kraken", instrument=kraken, quote="USD"),
                Market(source="okx", instrument=f"{base}-USDT", quote="USDT"),
            ),
        )

    # The dollar price of tether, from the two USD markets for it among our exchanges (Binance and
    # OKX list no USD pair). Its quorum is 2, declared here and signed in each report: the rate
    # only converts, it is bounded by maxDepegBps and by the outlier band, and the X/USD feeds
    # built with it keep the quorum of 3.
    usdt = FeedConfig(
        symbol="USDT/USD",
        min_sources=2,
        markets=(
            Market(source="coinbase", instrument="USDT-USD", quote="USD"),
            Market(source="kraken", instrument="USDTUSD", quote="USD"),
        ),
    )
    return (usdt, feed("BTC", "XBTUSD"), feed("ETH", "ETHUSD"))


def _default_sources() -> tuple[SourceConfig, ...]:
    # The hosts of the route table in docs/deployment.md (vsock ports 8443-8446).
    return (
        SourceConfig(id="binance", host="api.binance.com"),
        SourceConfig(id="coinbase", host="api.exchange.coinbase.com"),
        SourceConfig(id="kraken", host="api.kraken.com"),
        SourceConfig(id="okx", host="www.okx.com"),
    )


@dataclass(frozen=True, kw_only=True)
class OracleConfig:
    """Everything the enclave is told at runtime; hashed into `configHash`.

    The defaults: a 100 bps outlier band, 30 s source age, a 2 s clock skew against the attested
    time, a 2 s fetch timeout. The quorum is 3 distinct sources: with 2, one bad source moves the
    median by half its error and a parent that drops one connection chooses the price. Four
    exchanges leave one to lose (Binance answers 451 from US regions). A stablecoin rate more than
    `max_depeg_bps` off 1 is refused (1% by default).
    """

    sources: tuple[SourceConfig, ...] = field(default_factory=_default_sources)
    feeds: tuple[FeedConfig, ...] = field(default_factory=_default_feeds)
    domains: tuple[Eip712Domain, ...] = (Eip712Domain(),)
    min_sources: int = 3
    max_deviation_bps: int = 100
    # Kept sources lie within ±max_deviation_bps of the first median, so their spread can reach
    # about twice that; 150 makes the dispersion check bite before that happens.
    max_dispersion_bps: int = 150
    max_source_age: timedelta = timedelta(seconds=30)
    # Exchange clocks and ours both follow NTP-ish time; 5 s ahead is drift, not data.
    max_source_ahead: timedelta = timedelta(seconds=5)
    max_clock_skew: timedelta = timedelta(seconds=2)
    request_timeout: timedelta = timedelta(seconds=2)
    heartbeat: timedelta = timedelta(seconds=60)
    publish_deviation_bps: int = 50
    max_depeg_bps: int = 100
    # A signed report's `expiresAt` is its enclave time plus this: two heartbeats, so a consumer
    # always holds an unexpired report while the enclave publishes on time.
    report_ttl: timedelta = timedelta(seconds=120)

    def __post_init__(self) -> None:
        ids = [s.id for s in self.sources]
        if not ids or len(set(ids)) != len(ids):
            raise ConfigError("sources must be non-empty with unique ids")
        if not self.feeds or len({f.symbol for f in self.feeds}) != len(self.feeds):
            raise ConfigError("feeds must be non-empty with unique symbols")
        for feed in self.feeds:
            for market in feed.markets:
                if market.source not in ids:
                    raise ConfigError(f"{feed.symbol}: unknown source {market.source!r}")
            if feed.min_sources is None and (
                isinstance(self.min_sources, bool) or not 1 <= self.min_sources <= len(feed.markets)
            ):
                raise ConfigError(
                    f"min_sources must be in 1..{len(feed.markets)} (markets of {feed.symbol})"
                )
            for quote in feed.convert_quotes:
                rate = next((f for f in self.feeds if f.symbol == feed.rate_feed(quote)), None)
                if rate is None:
                    raise ConfigError(
                        f"{feed.symbol} converts {quote} but the config has no "
                        f"{feed.rate_feed(quote)} feed"
                    )
                if rate.convert_quotes:
                    raise ConfigError(f"{rate.symbol} converts a rate itself (no chains)")
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError("domains must be non-empty and unique")
        for name in (
            "max_deviation_bps",
            "max_dispersion_bps",
            "publish_deviation_bps",
            "max_depeg_bps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_BPS:
                raise ConfigError(f"{name} must be an int in 1..{_MAX_BPS}")
        for name in (
            "max_source_age",
            "max_source_ahead",
            "max_clock_skew",
            "request_timeout",
            "heartbeat",
            "report_ttl",
        ):
            _ms(getattr(self, name), name)

    # --- hashing ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        """The canonical object (also the wire form handed to the enclave)."""
        return {
            "version": CONFIG_VERSION,
            "sources": [{"id": s.id, "host": s.host} for s in self.sources],
            "feeds": [
                {
                    "symbol": f.symbol,
                    "decimals": f.decimals,
                    "convertQuotes": list(f.convert_quotes),
                    "minSources": f.min_sources,
                    "markets": [
                        {"source": m.source, "instrument": m.instrument, "quote": m.quote}
                        for m in f.markets
                    ],
                }
                for f in self.feeds
            ],
            "domains": [d.to_json() for d in self.domains],
            "minSources": self.min_sources,
            "maxDeviationBps": self.max_deviation_bps,
            "maxDispersionBps": self.max_dispersion_bps,
            "maxSourceAgeMs": _ms(self.max_source_age, "max_source_age"),
            "maxSourceAheadMs": _ms(self.max_source_ahead, "max_source_ahead"),
            "maxClockSkewMs": _ms(self.max_clock_skew, "max_clock_skew"),
            "requestTimeoutMs": _ms(self.request_timeout, "request_timeout"),
            "heartbeatMs": _ms(self.heartbeat, "heartbeat"),
            "publishDeviationBps": self.publish_deviation_bps,
            "reportTtlMs": _ms(self.report_ttl, "report_ttl"),
            "maxDepegBps": self.max_depeg_bps,
        }

    def canonical_bytes(self) -> bytes:
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")

    @property
    def config_hash(self) -> bytes:
        return keccak256(self.canonical_bytes())

    @property
    def domains_hash(self) -> bytes:
        return domains_hash(self.domains)

    def quorum(self, feed: FeedConfig) -> int:
        """The minimum number of distinct sources `feed` is priced from (signed as minSources)."""
        return self.min_sources if feed.min_sources is None else feed.min_sources

    def feeds_in_order(self) -> tuple[FeedConfig, ...]:
        """The feeds with every conversion rate before the feeds it converts."""
        rates = {f.rate_feed(q) for f in self.feeds for q in f.convert_quotes}
        return tuple(sorted(self.feeds, key=lambda f: f.symbol not in rates))

    def feed(self, symbol: str) -> FeedConfig:
        for feed in self.feeds:
            if feed.symbol == symbol:
                return feed
        raise ConfigError(f"no feed {symbol!r} in the config")

    def source(self, source_id: str) -> SourceConfig:
        for source in self.sources:
            if source.id == source_id:
                return source
        raise ConfigError(f"no source {source_id!r} in the config")

    # --- reading ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: object) -> OracleConfig:
        """Strict reader of `to_json()`: every key required, no extra key, exact types."""
        try:
            top = _exact(obj, _TOP_KEYS, "config")
            if top["version"] != CONFIG_VERSION:
                raise ConfigError(f"config version {top['version']!r} is not {CONFIG_VERSION}")
            sources = tuple(
                SourceConfig(id=_str(s["id"]), host=_str(s["host"]))
                for s in (_exact(x, {"id", "host"}, "source") for x in _list(top["sources"]))
            )
            feeds = tuple(_feed(x) for x in _list(top["feeds"]))
            domains = tuple(Eip712Domain.from_json(x) for x in _list(top["domains"]))
            return cls(
                sources=sources,
                feeds=feeds,
                domains=domains,
                min_sources=_int(top["minSources"]),
                max_deviation_bps=_int(top["maxDeviationBps"]),
                max_dispersion_bps=_int(top["maxDispersionBps"]),
                max_source_age=timedelta(milliseconds=_int(top["maxSourceAgeMs"])),
                max_source_ahead=timedelta(milliseconds=_int(top["maxSourceAheadMs"])),
                max_clock_skew=timedelta(milliseconds=_int(top["maxClockSkewMs"])),
                request_timeout=timedelta(milliseconds=_int(top["requestTimeoutMs"])),
                heartbeat=timedelta(milliseconds=_int(top["heartbeatMs"])),
                publish_deviation_bps=_int(top["publishDeviationBps"]),
                report_ttl=timedelta(milliseconds=_int(top["reportTtlMs"])),
                max_depeg_bps=_int(top["maxDepegBps"]),
            )
        except ReportFormatError as exc:
            raise ConfigError(f"bad domain in config: {exc}") from exc


_TOP_KEYS = frozenset(
    {
        "version",
        "sources",
        "feeds",
        "domains",
        "minSources",
        "maxDeviationBps",
        "maxDispersionBps",
        "maxSourceAgeMs",
        "maxSourceAheadMs",
        "maxClockSkewMs",
        "requestTimeoutMs",
        "heartbeatMs",
        "publishDeviationBps",
        "reportTtlMs",
        "maxDepegBps",
    }
)


def _exact(obj: object, keys: frozenset[str] | set[str], what: str) -> Mapping[str, object]:
    if not isinstance(obj, dict) or set(obj) != set(keys):
        raise ConfigError(f"{what} must be an object with exactly the keys {sorted(keys)}")
    return obj


def _list(obj: object) -> list[object]:
    if not isinstance(obj, list):
        raise ConfigError(f"expected a list, got {type(obj).__name__}")
    return obj


def _str(obj: object) -> str:
    if not isinstance(obj, str):
        raise ConfigError(f"expected a string, got {type(obj).__name__}")
    return obj


def _int(obj: object) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise ConfigError(f"expected an integer, got {type(obj).__name__}")
    return obj


def _feed(obj: object) -> FeedConfig:
    f = _exact(obj, {"symbol", "decimals", "convertQuotes", "minSources", "markets"}, "feed")
    markets = tuple(
        Market(source=_str(m["source"]), instrument=_str(m["instrument"]), quote=_str(m["quote"]))
        for m in (
            _exact(x, {"source", "instrument", "quote"}, "market") for x in _list(f["markets"])
        )
    )
    return FeedConfig(
        symbol=_str(f["symbol"]),
        decimals=_int(f["decimals"]),
        convert_quotes=tuple(_str(q) for q in _list(f["convertQuotes"])),
        min_sources=None if f["minSources"] is None else _int(f["minSources"]),
        markets=markets,
    )
