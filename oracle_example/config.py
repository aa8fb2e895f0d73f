"""The oracle's runtime configuration, and its canonical hash (`configHash`).

PCR0/PCR2 measure only what is in the image; anything handed to the enclave at runtime must be
bound through `user_data`, or the host could change it unseen (reference/oracle.md §2.2). So the
whole configuration (sources, feeds and the instrument each source quotes, thresholds, decimals,
EIP-712 domains) is hashed into `configHash`, which goes into `user_data` and every report.

Canonical form: the `to_json()` object serialised with sorted keys, no whitespace, ASCII only,
integers only (durations in milliseconds), bytes as lower-case 0x-hex; `configHash` is keccak256
of those bytes. JSON canonicalisation bit the predecessor (oracle.md §1.1), hence one writer here,
a strict reader, and a round-trip test.
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
#: RedStone's default, and one of Data Streams' two (reference/oracle.md §2.3).
DEFAULT_DECIMALS = 8
# uint8 on the wire; beyond 36 a scaled BTC price no longer fits comfortably in 128 bits, and no
# consumer uses more than 18 (oracle.md §2.3).
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
    """One feed. `accepted_quotes` declares which other quote currencies count as the feed's.

    USDT is not USD (reference/oracle.md §3 step 6); a config that mixes them says so here, and
    the choice is in `configHash`.
    """

    symbol: str
    markets: tuple[Market, ...]
    decimals: int = DEFAULT_DECIMALS
    accepted_quotes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        feed_id(self.symbol)
        if isinstance(self.decimals, bool) or not 0 <= self.decimals <= _MAX_DECIMALS:
            raise ConfigError(f"{self.symbol}: decimals must be in 0..{_MAX_DECIMALS}")
        if not self.markets:
            raise ConfigError(f"{self.symbol}: at least one market is required")
        sources = [m.source for m in self.markets]
        if len(set(sources)) != len(sources):
            raise ConfigError(f"{self.symbol}: one market per source")
        for quote in self.accepted_quotes:
            if not _CURRENCY.fullmatch(quote) or quote == self.quote:
                raise ConfigError(f"{self.symbol}: bad accepted quote {quote!r}")
        allowed = {self.quote, *self.accepted_quotes}
        for market in self.markets:
            if market.quote not in allowed:
                raise ConfigError(
                    f"{self.symbol}: {market.source} quotes {market.quote}, which the feed does "
                    f"not accept (declare it in accepted_quotes)"
                )

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def feed_id(self) -> bytes:
        return feed_id(self.symbol)

    def market(self, source: str) -> Market:
        for market in self.markets:
            if market.source == source:
                return market
        raise ConfigError(f"{self.symbol}: no market configured for source {source!r}")


def _default_feeds() -> tuple[FeedConfig, ...]:
    # Instrument names from each exchange's docs (reference/networking.md §6): Binance and OKX
    # list spot pairs against USDT, Kraken calls bitcoin XBT.
    def feed(base: str, kraken: str) -> FeedConfig:
        return FeedConfig(
            symbol=f"{base}/USD",
            accepted_quotes=("USDT",),
            markets=(
                Market(source="binance", instrument=f"{base}USDT", quote="USDT"),
                Market(source="coinbase", instrument=f"{base}-USD", quote="USD"),
                Market(source="kraken", instrument=kraken, quote="USD"),
                Market(source="okx", instrument=f"{base}-USDT", quote="USDT"),
            ),
        )

    return (feed("BTC", "XBTUSD"), feed("ETH", "ETHUSD"))


def _default_sources() -> tuple[SourceConfig, ...]:
    # The hosts of the route table in reference/networking.md §7.1.
    return (
        SourceConfig(id="binance", host="api.binance.com"),
        SourceConfig(id="coinbase", host="api.exchange.coinbase.com"),
        SourceConfig(id="kraken", host="api.kraken.com"),
        SourceConfig(id="okx", host="www.okx.com"),
    )


@dataclass(frozen=True, kw_only=True)
class OracleConfig:
    """Everything the enclave is told at runtime; hashed into `configHash`.

    Defaults follow reference/oracle.md §3 and §5: a 100 bps outlier band, 30 s source age, a 2 s
    clock skew against the attested time, a 2 s fetch timeout, and at least 2 sources (its
    "2 of 3"; with four exchanges that still prices when Binance answers 451 from a US region).
    """

    sources: tuple[SourceConfig, ...] = field(default_factory=_default_sources)
    feeds: tuple[FeedConfig, ...] = field(default_factory=_default_feeds)
    domains: tuple[Eip712Domain, ...] = (Eip712Domain(),)
    min_sources: int = 2
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
            if isinstance(self.min_sources, bool) or not 1 <= self.min_sources <= len(feed.markets):
                raise ConfigError(
                    f"min_sources must be in 1..{len(feed.markets)} (markets of {feed.symbol})"
                )
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError("domains must be non-empty and unique")
        for name in ("max_deviation_bps", "max_dispersion_bps", "publish_deviation_bps"):
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
                    "acceptedQuotes": list(f.accepted_quotes),
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
    f = _exact(obj, {"symbol", "decimals", "acceptedQuotes", "markets"}, "feed")
    markets = tuple(
        Market(source=_str(m["source"]), instrument=_str(m["instrument"]), quote=_str(m["quote"]))
        for m in (
            _exact(x, {"source", "instrument", "quote"}, "market") for x in _list(f["markets"])
        )
    )
    return FeedConfig(
        symbol=_str(f["symbol"]),
        decimals=_int(f["decimals"]),
        accepted_quotes=tuple(_str(q) for q in _list(f["acceptedQuotes"])),
        markets=markets,
    )
