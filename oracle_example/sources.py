"""What an exchange adapter is: what to ask, how to read the answer, when to ask again.

The adapters themselves (Binance, Coinbase, Kraken, OKX) are in `exchanges.py`. Sans-I/O: an
adapter builds a `SourceRequest` and parses `(status, headers, body)` into a
`Quote`; the HTTP exchange itself goes through the egress layer. A fetcher is a thin loop:

```python
sources = build_sources(config)  # exchanges.py
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

Prices are parsed from their JSON strings with `Decimal`, never float (a float-converted price
is what Marlin's sui-oyster-demo got wrong). Each quote carries the source's
own time, so staleness is judged by the exchange's clock, not by when bytes reached us.
The table of what each exchange sends is in `exchanges.py`.
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

from oracle_example.aggregate import Quote
from oracle_example.errors import (
    SourceBlocked,
    SourceError,
    SourceHttpError,
    SourceMalformed,
    SourceRateLimited,
)

__all__ = [
    "DEFAULT_BAN_BACKOFF",
    "DEFAULT_RATE_LIMIT_BACKOFF",
    "EARLIEST",
    "LATEST",
    "MAX_BODY_BYTES",
    "MAX_RETRY_AFTER",
    "SKIPPED",
    "Headers",
    "Source",
    "SourceRequest",
    "SourceState",
    "parse_retry_after",
    "severity",
    "skip_reason",
]

_log = logging.getLogger("oracle_example.sources")

#: A single-instrument ticker is well under 1 KiB in every exchange's shape; 64 KiB leaves room
#: for error pages while bounding what a misbehaving upstream can make us parse.
MAX_BODY_BYTES = 64 * 1024
#: Binance: "a 429 ... it's your job to back off"; limits are per minute (REQUEST_WEIGHT 6,000 per
#: minute, Binance Spot API docs, "LIMITS"), so a minute clears the window when no Retry-After came.
DEFAULT_RATE_LIMIT_BACKOFF = timedelta(seconds=60)
#: Binance 418 bans last "from 2 minutes to 3 days" (Binance Spot API docs, "LIMITS"): the
#: shortest ban.
DEFAULT_BAN_BACKOFF = timedelta(minutes=2)
#: The longest Binance ban; a larger Retry-After is clamped to it (and logged).
MAX_RETRY_AFTER = timedelta(days=3)
#: Never retry a rate limit in a tight loop, whatever Retry-After says.
MIN_RETRY_AFTER = timedelta(seconds=1)
#: Circuit breaker for other failures: after this many in a row, back off ...
BREAKER_THRESHOLD = 3
#: ... starting here and doubling per further failure, up to the cap.
BREAKER_BASE = timedelta(seconds=2)
BREAKER_CAP = timedelta(minutes=5)

# Exchanges send prices as plain decimal strings; anything else (exponents, signs, spaces) means
# the shape changed and we would rather drop the source than guess.
_PRICE = re.compile(r"(0|[1-9][0-9]{0,29})(\.[0-9]{1,30})?")
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
# Timestamps outside this window are garbage, not clock skew.
EARLIEST = datetime(2009, 1, 3, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
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


@dataclass(frozen=True, kw_only=True)
class Source(ABC):
    """One exchange adapter, bound to the instruments its config assigns to each feed."""

    id: ClassVar[str]
    default_host: ClassVar[str]
    time_path: ClassVar[str]
    """A cheap, unauthenticated GET that states the exchange's clock (per its API docs); the
    doctor probes each host with it."""
    time_shape: ClassVar[str]
    """The documented JSON of `time_path`, for messages."""
    time_field: ClassVar[str] = "time"
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

    def server_time(self, document: object) -> tuple[datetime, float]:
        """(the exchange's clock, its resolution in seconds) from the decoded `time_path`
        answer; `SourceMalformed` when it is not the documented shape or the time is absurd."""
        try:
            when, resolution = self._read_time(document)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError, OSError) as exc:
            if isinstance(exc, SourceMalformed):
                raise
            raise SourceMalformed(f"expected {self.time_shape}: {exc!r}", source=self.id) from exc
        if not EARLIEST <= when < LATEST:
            raise SourceMalformed(f"time {when.isoformat()} is implausible", source=self.id)
        return when, resolution

    @abstractmethod
    def _read_time(self, document: object) -> tuple[datetime, float]:
        """Read `time_path`'s answer; a wrong shape raises KeyError/TypeError/ValueError."""

    @abstractmethod
    def _path(self, instrument: str) -> str: ...

    @abstractmethod
    def _extract(
        self, document: object, instrument: str, headers: Mapping[str, str], now: datetime
    ) -> tuple[object, datetime]:
        """(price as sent, the source's timestamp) from a decoded 200 body."""


# --- scheduling -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SourceState:
    """When a source may be asked again. Transitions return a new state; nothing mutates.

    - 451 disables the source for the session (a configuration problem: the parent's egress IP
      is in a jurisdiction the exchange refuses: "Service unavailable from a restricted
      location", Binance says).
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


def severity(error: SourceError) -> int:
    """How bad a failure is, to report the worst one of a round: blocked > rate limited > other."""
    if isinstance(error, SourceBlocked):
        return 3
    if isinstance(error, SourceRateLimited):
        return 2
    return 1


SKIPPED = "source.skipped"


def skip_reason(state: SourceState, last: SourceError | None, now: datetime) -> SourceError:
    """Why a source is not asked this round, as the error its outcome line should show.

    The code is `source.skipped` (so the state machine does not count it as a new failure) on
    the same class as the failure that caused it, so the outcome reads blocked / rate_limited /
    failed, and "every source blocked" is still recognised.
    """
    if state.disabled is not None:
        blocked = SourceBlocked(
            f"disabled for this session ({state.disabled})", source=state.source
        )
        blocked.code = SKIPPED
        return blocked
    wait = max((state.not_before or now) - now, timedelta(0))
    if isinstance(last, SourceRateLimited):
        skipped: SourceError = SourceRateLimited(
            f"honouring Retry-After, {wait.total_seconds():.1f} s left",
            source=state.source,
            status=last.status,
            retry_after=wait,
        )
    else:
        skipped = SourceError(
            f"circuit open after {state.failures} failures, {wait.total_seconds():.1f} s left",
            source=state.source,
        )
    skipped.code = SKIPPED
    return skipped
