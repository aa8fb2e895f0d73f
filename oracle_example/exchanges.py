"""The exchange adapters: Binance, Coinbase, Kraken, OKX. Adding an exchange is one `Source`
subclass here (its ticker path and parser, its time endpoint and reader) plus its entry in the
config's sources; the enclave's routes, the doctor's probes, the replay and the deployment
files follow from the source list.

- Binance `/api/v3/ticker/24hr?symbol=..&type=MINI&symbolStatus=TRADING`: `lastPrice`; time
  `closeTime` (ms). `closeTime` is the end of the rolling 24 h statistics window, i.e. when
  Binance computed the ticker, not a trade time; what makes it usable is `symbolStatus=TRADING`:
  a halted or delisted symbol is refused (error -1220) instead of answering its last price with
  a fresh-looking time. A symbol that trades but thinly can still show a stale `lastPrice`
  within the window; the outlier band is the guard there.
- Coinbase `/products/{id}/ticker`: `price`; time `time` (RFC 3339, the last trade).
- Kraken `/0/public/Trades?pair=..&count=1`: the last trade, `[price, volume, time, ...]`, its
  time in seconds with a fraction. Never the HTTP `Date` header: a market with no trades would
  look fresh.
- OKX `/api/v5/market/ticker?instId=..`: `last`; time `ts` (ms, as a string).

Shapes: binance/binance-spot-api-docs rest-api.md; the dYdX v4 price daemon's recorded test data
for Coinbase, Kraken and OKX (dydxprotocol/v4-chain protocol/daemons/pricefeed/client/
price_function/*/testdata).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import ClassVar
from urllib.parse import quote as _urlquote

from oracle_example.config import OracleConfig
from oracle_example.errors import SourceError, SourceMalformed, SourceRateLimited
from oracle_example.sources import DEFAULT_RATE_LIMIT_BACKOFF, EARLIEST, LATEST, Source

__all__ = ["ADAPTERS", "Binance", "Coinbase", "Kraken", "Okx", "build_sources"]

_MS_DIGITS = re.compile(r"[1-9][0-9]{0,15}")
_RFC3339_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SECONDS = int((LATEST - _EPOCH).total_seconds())


def _ms(value: object) -> datetime:
    """Milliseconds since the epoch, as a JSON integer or a digit string."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not milliseconds")
    return _EPOCH + timedelta(milliseconds=value)


def _dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def _ms_to_datetime(ms: int, source: str) -> datetime:
    when = _EPOCH + timedelta(milliseconds=ms)
    if not EARLIEST <= when < LATEST:
        raise SourceMalformed(f"timestamp {ms} ms is not plausible", source=source)
    return when


@dataclass(frozen=True, kw_only=True)
class Binance(Source):
    """Binance Spot: `GET /api/v3/ticker/24hr?symbol=BTCUSDT&type=MINI&symbolStatus=TRADING`.

    `/api/v3/ticker/price` has no timestamp (the predecessor's blind spot); the
    MINI 24 h ticker gives `lastPrice` with `closeTime` in ms. Errors: `{"code": -1121, "msg":
    "Invalid symbol."}` with 400, and -1220 for a symbol that is not trading (symbolStatus);
    451 from restricted locations; 429/418 with Retry-After. Weight 2.
    """

    id: ClassVar[str] = "binance"
    default_host: ClassVar[str] = "api.binance.com"
    time_path: ClassVar[str] = "/api/v3/time"
    time_shape: ClassVar[str] = '{"serverTime": <ms>}'
    time_field: ClassVar[str] = "serverTime"
    host: str = "api.binance.com"

    def _read_time(self, document: object) -> tuple[datetime, float]:
        return _ms(_dict(document)["serverTime"]), 0.001

    def _path(self, instrument: str) -> str:
        return f"/api/v3/ticker/24hr?symbol={_urlquote(instrument)}&type=MINI&symbolStatus=TRADING"

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
    time_path: ClassVar[str] = "/time"
    time_shape: ClassVar[str] = '{"iso": ..., "epoch": <s>}'
    host: str = "api.exchange.coinbase.com"

    def _read_time(self, document: object) -> tuple[datetime, float]:
        doc = _dict(document)
        epoch, _ = doc["epoch"], doc["iso"]
        if not isinstance(epoch, int | float) or isinstance(epoch, bool):
            raise TypeError("epoch is not a number")
        return datetime.fromtimestamp(float(epoch), UTC), 0.001

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
        if not EARLIEST <= when < LATEST:
            raise SourceMalformed(f"time {text!r} is not plausible", source=self.id)
        return self._field(obj, "price"), when


# Kraken reports rate limits in the body with HTTP 200 (docs.kraken.com spot-rest-ratelimits).
_KRAKEN_RATE_LIMIT = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")


@dataclass(frozen=True, kw_only=True)
class Kraken(Source):
    """Kraken: `GET /0/public/Trades?pair=XBTUSD&count=1` (Get Recent Trades).

    `{"error": [], "result": {"XXBTZUSD": [[price, volume, time, side, type, misc, id]],
    "last": "<id>"}}`; the pair key is Kraken's own name, so exactly one key besides `last` is
    required, whatever its name. The newest trade is the last entry; its price and its time
    (Unix seconds with a fraction) are the quote. Errors come in `error` with HTTP 200.
    """

    id: ClassVar[str] = "kraken"
    default_host: ClassVar[str] = "api.kraken.com"
    time_path: ClassVar[str] = "/0/public/Time"
    time_shape: ClassVar[str] = '{"error": [], "result": {"unixtime": <s>, ...}}'
    host: str = "api.kraken.com"

    def _read_time(self, document: object) -> tuple[datetime, float]:
        doc = _dict(document)
        if doc.get("error") != []:
            raise ValueError('no empty "error" list')
        unixtime = _dict(doc["result"])["unixtime"]
        if not isinstance(unixtime, int) or isinstance(unixtime, bool):
            raise TypeError("unixtime is not an integer")
        return datetime.fromtimestamp(unixtime, UTC), 1.0

    def _path(self, instrument: str) -> str:
        return f"/0/public/Trades?pair={_urlquote(instrument)}&count=1"

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
        pairs = {k: v for k, v in result.items() if k != "last"}
        if len(pairs) != 1:
            raise SourceMalformed(f"expected one pair in result, got {len(pairs)}", source=self.id)
        (trades,) = pairs.values()
        if not isinstance(trades, list) or not trades:
            raise SourceMalformed("no trade in the answer", source=self.id)
        trade = trades[-1]
        if not isinstance(trade, list) or len(trade) < 3:
            raise SourceMalformed(
                f"trade is not [price, volume, time..]: {trade!r}", source=self.id
            )
        # JSON numbers arrive as Decimal (the body is decoded without float); whole microseconds
        seconds = trade[2]
        if isinstance(seconds, bool) or not isinstance(seconds, int | Decimal):
            raise SourceMalformed(f"trade time is not a number: {seconds!r}", source=self.id)
        if not (Decimal(seconds).is_finite() and 0 <= seconds < _MAX_SECONDS):
            raise SourceMalformed(f"trade time {seconds} is not plausible", source=self.id)
        micros = int(Decimal(seconds).scaleb(6).to_integral_value(rounding=ROUND_FLOOR))
        when = _EPOCH + timedelta(microseconds=micros)
        if not EARLIEST <= when < LATEST:
            raise SourceMalformed(f"trade time {seconds} is not plausible", source=self.id)
        return trade[0], when


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
    time_path: ClassVar[str] = "/api/v5/public/time"
    time_shape: ClassVar[str] = '{"code": "0", "data": [{"ts": "<ms>"}]}'
    host: str = "www.okx.com"

    def _read_time(self, document: object) -> tuple[datetime, float]:
        doc = _dict(document)
        data = doc["data"]
        if doc.get("code") != "0" or not isinstance(data, list) or len(data) != 1:
            raise ValueError('no "code": "0" with one "data" entry')
        return _ms(_dict(data[0])["ts"]), 0.001

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
