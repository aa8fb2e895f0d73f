"""Exchange adapters (Binance, Coinbase, Kraken, OKX): what to ask, and how to read the answer.

Sans-I/O: an adapter builds a `SourceRequest` and parses `(status, headers, body)` into a
`Quote`; the HTTP exchange itself goes through the egress layer. A fetcher is a thin loop:

```python
sources = build_sources(config)
quotes, failures = [], []
for market in config.feed("BTC/USD").markets:
    source_id, source = market.source, sources[market.source]
    if not states[source_id].ready(now):
        continue
    req = source.request("BTC/USD")
    try:
        status, headers, body = await fetch(req)  # egress; its errors -> SourceUnreachable
        quotes.append(source.parse("BTC/USD", status=status, headers=headers, body=body, now=now))
        states[source_id] = states[source_id].succeeded()
    except SourceError as exc:
        failures.append(exc)
        states[source_id] = states[source_id].failed(exc, now=now)
result = aggregate_feed(config, "BTC/USD", quotes, now=now, failures=failures)
```
```

Prices are parsed from their JSON strings with `Decimal`, never float (reference/oracle.md §2.3;
a float-converted price is what Marlin's demo got wrong, §1.11). Each quote carries the source's
own time, so staleness is judged by the exchange's clock, not by when bytes reached us:

- Binance `/api/v3/ticker/24hr?symbol=..&type=MINI`: `lastPrice`; time `closeTime` (ms, the end
  of the statistics window, which advances with trades).
- Coinbase `/products/{id}/ticker`: `price`; time `time` (RFC 3339, the last trade).
- Kraken `/0/public/Ticker?pair=..`: `c[0]` (last trade); the body has no time, so the HTTP
  `Date` header (set when Kraken answers, 1 s resolution) stands in.
- OKX `/api/v5/market/ticker?instId=..`: `last`; time `ts` (ms, as a string).

Shapes: binance/binance-spot-api-docs rest-api.md; the dYdX v4 price daemon's recorded test data
for Coinbase, Kraken and OKX (dydxprotocol/v4-chain protocol/daemons/pricefeed/client/
price_function/*/testdata); summarised in reference/networking.md §6.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import ClassVar
from urllib.parse import quote as _urlquote

from oracle_example._oracle_errors import (
    SourceBlocked,
    SourceError,
    SourceHttpError,
    SourceMalformed,
    SourceRateLimited,
)
from oracle_example.config import OracleConfig

__all__ = [
    "ADAPTERS",
    "DEFAULT_BAN_BACKOFF",
    "DEFAULT_RATE_LIMIT_BACKOFF",
    "MAX_BODY_BYTES",
    "MAX_RETRY_AFTER",
    "Binance",
    "Coinbase",
    "Headers",
    "Kraken",
    "Okx",
    "Quote",
    "Source",
    "SourceRequest",
    "SourceState",
    "build_sources",
    "parse_retry_after",
]

_log = logging.getLogger("oracle_example.sources")

#: A single-instrument ticker is well under 1 KiB in every exchange's shape; 64 KiB leaves room
#: for error pages while bounding what a misbehaving upstream can make us parse.
MAX_BODY_BYTES = 64 * 1024
#: Binance: "a 429 ... it's your job to back off"; limits are per minute (REQUEST_WEIGHT 6,000 per
#: minute, reference/networking.md §6), so a minute clears the window when no Retry-After came.
DEFAULT_RATE_LIMIT_BACKOFF = timedelta(seconds=60)
#: Binance 418 bans last "from 2 minutes to 3 days" (reference/oracle.md §5): the shortest ban.
DEFAULT_BAN_BACKOFF = timedelta(minutes=2)
#: The longest Binance ban; a larger Retry-After is clamped to it (and logged).
MAX_RETRY_AFTER = timedelta(days=3)
#: Never retry a rate limit in a tight loop (reference/oracle.md §5), whatever Retry-After says.
MIN_RETRY_AFTER = timedelta(seconds=1)
#: Circuit breaker for other failures (oracle.md §5): after this many in a row, back off ...
BREAKER_THRESHOLD = 3
#: ... starting here and doubling per further failure, up to the cap.
BREAKER_BASE = timedelta(seconds=2)
BREAKER_CAP = timedelta(minutes=5)

# Exchanges send prices as plain decimal strings; anything else (exponents, signs, spaces) means
# the shape changed and we would rather drop the source than guess.
_PRICE = re.compile(r"(0|[1-9][0-9]{0,29})(\.[0-9]{1,30})?")
_MS_DIGITS = re.compile(r"[1-9][0-9]{0,15}")
_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)"
)
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
# Timestamps outside this window are garbage, not clock skew.
_EARLIEST = datetime(2009, 1, 3, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_USER_AGENT = "nsm-attestation-oracle/1"

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


@dataclass(frozen=True, kw_only=True)
class SourceRequest:
    """An HTTPS GET for the egress layer: `https://{host}{path}` with `headers`."""

    host: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    port: int = 443

    @property
    def url(self) -> str:
        return f"https://{self.host}{self.path}"


@dataclass(frozen=True, kw_only=True)
class Quote:
    """One source's price for one feed, as the exchange stated it."""

    source: str
    feed: str
    instrument: str
    price: Decimal
    source_time: datetime
    """The exchange's own timestamp for the price (see the module table)."""
    received_at: datetime
    """The enclave clock when the response was parsed."""

    def __post_init__(self) -> None:
        price: object = self.price  # typed Decimal, but a float must not slip in at runtime
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise SourceMalformed(
                f"price must be a positive finite Decimal: {self.price!r}", source=self.source
            )
        for when in (self.source_time, self.received_at):
            if when.tzinfo is None:
                raise ValueError("quote times must be timezone-aware")


def _normalise_headers(headers: Headers) -> dict[str, str]:
    """Lower-cased names; httpcore gives `[(b"name", b"value")]`, tests give dicts."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        val = value.decode("latin-1") if isinstance(value, bytes) else value
        out[key.lower()] = val.strip()
    return out


def parse_retry_after(value: str | None, *, now: datetime) -> timedelta | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; `None` when absent or unreadable."""
    if value is None:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when - now, timedelta(0))


def _retry_after(source: str, status: int, headers: Mapping[str, str], now: datetime) -> timedelta:
    default = DEFAULT_BAN_BACKOFF if status == 418 else DEFAULT_RATE_LIMIT_BACKOFF
    given = parse_retry_after(headers.get("retry-after"), now=now)
    if given is None:
        return default
    if given > MAX_RETRY_AFTER:
        _log.warning("%s: Retry-After %s clamped to %s", source, given, MAX_RETRY_AFTER)
        return MAX_RETRY_AFTER
    return max(given, MIN_RETRY_AFTER)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite JSON number {name}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


def _snippet(body: bytes) -> str:
    return body[:160].decode("utf-8", "replace").replace("\n", " ")


def _ms_to_datetime(ms: int, source: str) -> datetime:
    when = _EPOCH + timedelta(milliseconds=ms)
    if not _EARLIEST <= when < _LATEST:
        raise SourceMalformed(f"timestamp {ms} ms is not plausible", source=source)
    return when


@dataclass(frozen=True, kw_only=True)
class Source(ABC):
    """One exchange adapter, bound to the instruments its config assigns to each feed."""

    id: ClassVar[str]
    default_host: ClassVar[str]
    host: str
    instruments: Mapping[str, str] = field(default_factory=dict)
    """feed symbol -> the exchange's instrument name (`"BTC/USD"` -> `"BTCUSDT"`)."""

    def instrument(self, feed: str) -> str:
        try:
            return self.instruments[feed]
        except KeyError:
            raise SourceError(
                f"no instrument configured for {feed}", source=self.id, code="source.no_market"
            ) from None

    def request(self, feed: str) -> SourceRequest:
        return SourceRequest(
            host=self.host,
            path=self._path(self.instrument(feed)),
            headers=(("accept", "application/json"), ("user-agent", _USER_AGENT)),
        )

    def parse(
        self, feed: str, *, status: int, headers: Headers, body: bytes, now: datetime
    ) -> Quote:
        """The quote in this response, or a `SourceError` saying why there is none.

        451 -> `SourceBlocked`; 429/418 -> `SourceRateLimited` with the Retry-After to honour;
        other non-200 -> `SourceHttpError`; a body not in the documented shape, a non-positive
        or non-decimal price, or a missing timestamp -> `SourceMalformed`.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        instrument = self.instrument(feed)
        hdrs = _normalise_headers(headers)
        if status == 451:
            raise SourceBlocked(f"HTTP 451 (restricted location): {_snippet(body)}", source=self.id)
        if status in (429, 418):
            raise SourceRateLimited(
                f"HTTP {status} {'rate limit' if status == 429 else 'IP ban'}",
                source=self.id,
                status=status,
                retry_after=_retry_after(self.id, status, hdrs, now),
            )
        if status != 200:
            raise SourceHttpError(f"HTTP {status}: {_snippet(body)}", source=self.id, status=status)
        document = self._decode(body)
        price_text, source_time = self._extract(document, instrument, hdrs, now)
        return Quote(
            source=self.id,
            feed=feed,
            instrument=instrument,
            price=self._price(price_text),
            source_time=source_time,
            received_at=now,
        )

    # --- helpers for adapters ---------------------------------------------------------------

    def _decode(self, body: bytes) -> object:
        if len(body) > MAX_BODY_BYTES:
            raise SourceMalformed(
                f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", source=self.id
            )
        try:
            # parse_float=Decimal: even a stray JSON number never becomes a float.
            return json.loads(
                body.decode("utf-8"),
                parse_float=Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_no_duplicates,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SourceMalformed(f"body is not JSON: {exc}", source=self.id) from exc

    def _price(self, text: object) -> Decimal:
        if not isinstance(text, str) or not _PRICE.fullmatch(text):
            raise SourceMalformed(f"price is not a decimal string: {text!r}", source=self.id)
        price = Decimal(text)
        if price <= 0:
            raise SourceMalformed(f"price {text} is not positive", source=self.id)
        return price

    def _object(self, value: object, what: str) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise SourceMalformed(f"{what} is not a JSON object", source=self.id)
        return value

    def _field(self, obj: Mapping[str, object], key: str) -> object:
        if key not in obj:
            raise SourceMalformed(f"missing field {key!r}", source=self.id)
        return obj[key]

    @abstractmethod
    def _path(self, instrument: str) -> str: ...

    @abstractmethod
    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        """(price as sent, the source's timestamp) from a decoded 200 body."""


@dataclass(frozen=True, kw_only=True)
class Binance(Source):
    """Binance Spot: `GET /api/v3/ticker/24hr?symbol=BTCUSDT&type=MINI` (weight 2).

    `/api/v3/ticker/price` has no timestamp (the predecessor's blind spot, oracle.md §1.1); the
    MINI 24 h ticker gives `lastPrice` with `closeTime` in ms. Errors: `{"code": -1121, "msg":
    "Invalid symbol."}` with 400; 451 from restricted locations; 429/418 with Retry-After.
    """

    id: ClassVar[str] = "binance"
    default_host: ClassVar[str] = "api.binance.com"
    host: str = "api.binance.com"

    def _path(self, instrument: str) -> str:
        return f"/api/v3/ticker/24hr?symbol={_urlquote(instrument)}&type=MINI"

    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        obj = self._object(document, "ticker")
        if self._field(obj, "symbol") != instrument:
            raise SourceMalformed(f"symbol {obj['symbol']!r} is not {instrument}", source=self.id)
        close_time = self._field(obj, "closeTime")
        if not isinstance(close_time, int) or isinstance(close_time, bool):
            raise SourceMalformed(f"closeTime is not an integer: {close_time!r}", source=self.id)
        return self._field(obj, "lastPrice"), _ms_to_datetime(close_time, self.id)


@dataclass(frozen=True, kw_only=True)
class Coinbase(Source):
    """Coinbase Exchange: `GET /products/BTC-USD/ticker`.

    `{"ask","bid","volume","trade_id","price","size","time"}`; `time` is the last trade, RFC 3339
    with up to 6 (sometimes fewer) fractional digits. Errors: `{"message": "NotFound"}` with 404.
    Coinbase refuses requests without a User-Agent, which `request` always sets.
    """

    id: ClassVar[str] = "coinbase"
    default_host: ClassVar[str] = "api.exchange.coinbase.com"
    host: str = "api.exchange.coinbase.com"

    def _path(self, instrument: str) -> str:
        return f"/products/{_urlquote(instrument, safe='')}/ticker"

    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        obj = self._object(document, "ticker")
        text = self._field(obj, "time")
        match = _RFC3339_UTC.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise SourceMalformed(f"time is not RFC 3339 UTC: {text!r}", source=self.id)
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        fraction = (match.group(7) or "").ljust(6, "0")[:6]  # truncate ns to µs
        try:
            when = datetime(year, month, day, hour, minute, second, int(fraction), tzinfo=UTC)
        except ValueError as exc:
            raise SourceMalformed(f"time {text!r}: {exc}", source=self.id) from exc
        if not _EARLIEST <= when < _LATEST:
            raise SourceMalformed(f"time {text!r} is not plausible", source=self.id)
        return self._field(obj, "price"), when


# Kraken reports rate limits in the body with HTTP 200 (docs.kraken.com spot-rest-ratelimits).
_KRAKEN_RATE_LIMIT = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")


@dataclass(frozen=True, kw_only=True)
class Kraken(Source):
    """Kraken: `GET /0/public/Ticker?pair=XBTUSD`.

    `{"error": [], "result": {"XXBTZUSD": {"a": [...], "b": [...], "c": [last, lot], ...}}}`; the
    result key is Kraken's own pair name, so exactly one entry is required, whatever its name.
    Errors come in `error` with HTTP 200. The body has no timestamp: the response's `Date`
    header (set by Kraken's edge when it answers, 1 s resolution) is the source time.
    """

    id: ClassVar[str] = "kraken"
    default_host: ClassVar[str] = "api.kraken.com"
    host: str = "api.kraken.com"

    def _path(self, instrument: str) -> str:
        return f"/0/public/Ticker?pair={_urlquote(instrument)}"

    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        obj = self._object(document, "response")
        errors = self._field(obj, "error")
        if not isinstance(errors, list):
            raise SourceMalformed("error is not a list", source=self.id)
        if errors:
            text = "; ".join(str(e) for e in errors)
            if any(str(e).startswith(_KRAKEN_RATE_LIMIT) for e in errors):
                raise SourceRateLimited(
                    text, source=self.id, status=200, retry_after=DEFAULT_RATE_LIMIT_BACKOFF
                )
            raise SourceMalformed(f"API error: {text}", source=self.id, code="source.api_error")
        result = self._object(self._field(obj, "result"), "result")
        if len(result) != 1:
            raise SourceMalformed(f"expected one pair in result, got {len(result)}", source=self.id)
        (ticker,) = result.values()
        last = self._field(self._object(ticker, "ticker"), "c")
        if not isinstance(last, list) or len(last) != 2:
            raise SourceMalformed(f"c is not [price, lot volume]: {last!r}", source=self.id)
        date = headers.get("date")
        try:
            when = parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            when = None
        if when is None or when.tzinfo is None:
            raise SourceMalformed(f"no usable Date header ({date!r})", source=self.id)
        return last[0], when.astimezone(UTC)


# OKX error codes (OKX v5 REST "Error Code" table): 50011 "Rate limit reached" comes with HTTP 429
# on the public endpoints, but also check the body in case a proxy rewrote the status.
_OKX_RATE_LIMIT_CODES = frozenset({"50011", "50061"})


@dataclass(frozen=True, kw_only=True)
class Okx(Source):
    """OKX v5: `GET /api/v5/market/ticker?instId=BTC-USDT`.

    `{"code": "0", "msg": "", "data": [{"instId", "last", "ts", ...}]}`; `ts` is ms as a string.
    Errors: non-"0" `code` with a message, e.g. `51001` "Instrument ID does not exist".
    """

    id: ClassVar[str] = "okx"
    default_host: ClassVar[str] = "www.okx.com"
    host: str = "www.okx.com"

    def _path(self, instrument: str) -> str:
        return f"/api/v5/market/ticker?instId={_urlquote(instrument)}"

    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        obj = self._object(document, "response")
        code = self._field(obj, "code")
        if code != "0":
            msg = obj.get("msg", "")
            if isinstance(code, str) and code in _OKX_RATE_LIMIT_CODES:
                raise SourceRateLimited(
                    f"code {code}: {msg}",
                    source=self.id,
                    status=200,
                    retry_after=DEFAULT_RATE_LIMIT_BACKOFF,
                )
            raise SourceMalformed(
                f"API error code {code!r}: {msg}", source=self.id, code="source.api_error"
            )
        data = self._field(obj, "data")
        if not isinstance(data, list) or len(data) != 1:
            raise SourceMalformed("data is not a one-element list", source=self.id)
        ticker = self._object(data[0], "ticker")
        if self._field(ticker, "instId") != instrument:
            raise SourceMalformed(
                f"instId {ticker['instId']!r} is not {instrument}", source=self.id
            )
        ts = self._field(ticker, "ts")
        if not isinstance(ts, str) or not _MS_DIGITS.fullmatch(ts):
            raise SourceMalformed(f"ts is not a millisecond string: {ts!r}", source=self.id)
        return self._field(ticker, "last"), _ms_to_datetime(int(ts), self.id)


#: Adapter classes by source id (the ids `config.SourceConfig.id` may use).
ADAPTERS: Mapping[str, type[Source]] = {cls.id: cls for cls in (Binance, Coinbase, Kraken, Okx)}


def build_sources(config: OracleConfig) -> dict[str, Source]:
    """One adapter per configured source, bound to its host and its instrument per feed."""
    out: dict[str, Source] = {}
    for sc in config.sources:
        cls = ADAPTERS.get(sc.id)
        if cls is None:
            raise SourceError(
                f"no adapter (known: {', '.join(sorted(ADAPTERS))})",
                source=sc.id,
                code="source.unknown",
            )
        instruments = {
            f.symbol: m.instrument for f in config.feeds for m in f.markets if m.source == sc.id
        }
        out[sc.id] = cls(host=sc.host, instruments=instruments)
    return out


# --- scheduling -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SourceState:
    """When a source may be asked again. Transitions return a new state; nothing mutates.

    - 451 disables the source for the session (a configuration problem: the parent's egress IP
      is in a jurisdiction the exchange refuses, reference/oracle.md §5).
    - 429/418 wait exactly the Retry-After (clamped to [1 s, 3 days]).
    - Other failures open a circuit breaker after `BREAKER_THRESHOLD` in a row, with doubling
      backoff from `BREAKER_BASE` to `BREAKER_CAP`; one success closes it.
    """

    source: str
    disabled: str | None = None
    not_before: datetime | None = None
    failures: int = 0

    def ready(self, now: datetime) -> bool:
        if self.disabled is not None:
            return False
        return self.not_before is None or now >= self.not_before

    def succeeded(self) -> SourceState:
        return replace(self, not_before=None, failures=0)

    def failed(self, error: SourceError, *, now: datetime) -> SourceState:
        failures = self.failures + 1
        if isinstance(error, SourceBlocked):
            _log.error(
                "source %s DISABLED for this session: HTTP 451, the exchange refuses requests "
                "from this egress IP's location. Move the parent instance to another region or "
                "remove %s from the config. (%s)",
                self.source,
                self.source,
                error,
            )
            return replace(self, disabled=str(error), failures=failures)
        if isinstance(error, SourceRateLimited):
            until = now + error.retry_after
            _log.warning(
                "source %s rate limited (HTTP %d): not asking again before %s (Retry-After %ss)",
                self.source,
                error.status,
                until.isoformat(),
                int(error.retry_after.total_seconds()),
            )
            return replace(self, not_before=until, failures=failures)
        if failures < BREAKER_THRESHOLD:
            _log.info("source %s failed (%s): %s", self.source, error.code, error)
            return replace(self, failures=failures)
        delay = min(BREAKER_BASE * (1 << min(failures - BREAKER_THRESHOLD, 20)), BREAKER_CAP)
        _log.warning(
            "source %s failed %d times in a row (%s): backing off %ss",
            self.source,
            failures,
            error.code,
            int(delay.total_seconds()),
        )
        return replace(self, not_before=now + delay, failures=failures)
