"""From per-source quotes to one price, or to a reasoned refusal.

The procedure, all in integers once prices are scaled, so a consumer (or a contract) can redo it
from the unsigned per-source detail and get the same numbers:

0. A market quoted in another currency than the feed's (USDT for a USD feed) is multiplied by
   that currency's rate, aggregated the same round from the rate feed's own markets; with no
   rate it is not used, and a rate off peg by more than `max_depeg_bps` refuses the feed
   (`QUOTE_DEPEG`). The per-source line carries the converted price, the detail the quote.
1. Drop quotes whose own timestamp is older than `max_age` or more than `max_ahead` in the future.
2. Scale each price to `decimals` with ROUND_HALF_EVEN (`scale_price`).
3. m = median (odd: the middle; even: the mean of the middle two, ties to even).
4. Drop sources with |p - m| * 10_000 > max_deviation_bps * m; take the median of the rest.
5. Fewer than `min_sources` left -> `OracleErrorCode.TOO_FEW_SOURCES` (or `ALL_SOURCES_BLOCKED`
   when every source was blocked or rate limited); dispersion above the bound -> `DISPERSION`.

`dispersionBps` = ceil((max - min) * 10_000 / median) over the kept sources: rounded up, so the
signed figure never understates disagreement. `sourcesHash` = keccak256 of the concatenated
keccak256 of each kept source id, ids sorted (the EIP-712 encoding of a `string[]`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from oracle_example.config import FeedConfig, OracleConfig
from oracle_example.errors import (
    AggregationError,
    ReportFormatError,
    SourceBlocked,
    SourceError,
    SourceMalformed,
    SourceRateLimited,
)
from oracle_example.report import (
    Message,
    OracleError,
    OracleErrorCode,
    Outcome,
    PriceReport,
    SourceOutcome,
    detail_hash,
    feed_id,
    sources_hash,
)

__all__ = [
    "BPS",
    "Aggregate",
    "AggregationFailure",
    "Quote",
    "aggregate",
    "aggregate_feed",
    "clock_failure",
    "dispersion_bps",
    "median",
    "message_for",
    "scale_price",
    "should_publish",
]

#: Basis points in one.
BPS = 10_000
# Enough digits for any price string the adapters accept (30 + 30) scaled by 10**36.
_PRECISION = 100


@dataclass(frozen=True, kw_only=True)
class Quote:
    """One source's price for one feed, as the exchange stated it."""

    source: str
    feed: str
    instrument: str
    price: Decimal
    source_time: datetime
    """The exchange's own timestamp for the price (see the table in exchanges.py)."""
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


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    """A price the enclave may sign."""

    feed: str
    price: int
    """The median scaled by 10**decimals."""
    decimals: int
    num_sources: int
    dispersion_bps: int
    sources_hash: bytes
    observed_at: datetime
    outcomes: tuple[SourceOutcome, ...]


@dataclass(frozen=True, kw_only=True)
class AggregationFailure:
    """No price this round: the enclave signs an `OracleError` with this code and detail."""

    feed: str
    code: OracleErrorCode
    detail: str
    observed_at: datetime
    outcomes: tuple[SourceOutcome, ...]


def scale_price(price: Decimal, decimals: int) -> int:
    """price * 10**decimals as an int, ROUND_HALF_EVEN; exact, never float."""
    value: object = price  # typed Decimal, but a float must not slip in at runtime
    if not isinstance(value, Decimal) or not value.is_finite():
        raise AggregationError(f"price must be a finite Decimal, got {price!r}")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return int(price.scaleb(decimals).to_integral_value(rounding=ROUND_HALF_EVEN))


def median(values: Sequence[int]) -> int:
    """Middle value; for an even count the mean of the middle two, a .5 rounded to even."""
    if not values:
        raise AggregationError("median of nothing")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    q, r = divmod(ordered[mid - 1] + ordered[mid], 2)
    return q + 1 if r and q % 2 else q


def dispersion_bps(values: Sequence[int], center: int) -> int:
    """ceil((max - min) * 10_000 / center)."""
    if center <= 0:
        raise AggregationError("dispersion needs a positive center")
    return -(-(max(values) - min(values)) * BPS // center)


def _failure_outcome(error: SourceError) -> SourceOutcome:
    if isinstance(error, SourceBlocked):
        kind = Outcome.BLOCKED
    elif isinstance(error, SourceRateLimited):
        kind = Outcome.RATE_LIMITED
    else:
        kind = Outcome.FAILED
    return SourceOutcome(source=error.source, outcome=kind, detail=f"{error.code}: {error}")


def aggregate(
    feed: FeedConfig,
    quotes: Iterable[Quote],
    *,
    now: datetime,
    min_sources: int,
    max_deviation_bps: int,
    max_dispersion_bps: int,
    max_age: timedelta,
    max_ahead: timedelta,
    failures: Iterable[SourceError] = (),
    rates: Mapping[str, Decimal] | None = None,
    rate_times: Mapping[str, datetime] | None = None,
    max_depeg_bps: int = BPS,
) -> Aggregate | AggregationFailure:
    """Aggregate one round for `feed`. Thin or dispersed data is a result, not an exception.

    `rates` maps a quote currency of `feed.convert_quotes` to this round's `Q/<quote>` price, and
    `rate_times` to that rate's oldest observation: a converted quote is only as fresh as the
    older of its own time and its rate's, so that time is its line's `source_time` (and so counts
    for staleness and for the signed `observationsTimestamp`).
    Every configured market gets one outcome line: used, dropped (and why), failed, or missing.
    `AggregationError` means the inputs were inconsistent (a quote for another feed, a source
    outside the feed's markets, two answers from one source).
    """
    if now.tzinfo is None:
        raise AggregationError("now must be timezone-aware")
    if min_sources < 1:
        raise AggregationError("min_sources must be at least 1")
    markets = {m.source for m in feed.markets}
    rates = {} if rates is None else rates
    depegged: dict[str, Decimal] = {}
    outcomes: dict[str, SourceOutcome] = {}
    fresh: dict[str, tuple[Quote, int]] = {}

    def claim(source: str) -> None:
        if source not in markets:
            raise AggregationError(f"{source} is not a market of {feed.symbol}")
        if source in outcomes:
            raise AggregationError(f"two results for {source}")

    for error in failures:
        claim(error.source)
        outcomes[error.source] = _failure_outcome(error)
    for quote in quotes:
        if quote.feed != feed.symbol:
            raise AggregationError(f"quote for {quote.feed} passed to {feed.symbol}")
        claim(quote.source)
        quoted = feed.market(quote.source).quote
        converted, note, observed = quote.price, "", quote.source_time
        if quoted != feed.quote:
            rate = rates.get(quoted)
            if quoted not in feed.convert_quotes or rate is None:
                outcomes[quote.source] = SourceOutcome(
                    source=quote.source,
                    outcome=Outcome.FAILED,
                    source_time=quote.source_time,
                    detail=f"quoted {quote.price} {quoted}: no {feed.rate_feed(quoted)} rate "
                    "this round",
                )
                continue
            if abs(rate - 1) * BPS > max_depeg_bps:
                depegged[quoted] = rate
            with localcontext() as ctx:
                ctx.prec = _PRECISION
                converted = quote.price * rate  # exact: both are short decimals
            note = f"{quote.price} {quoted} at {feed.rate_feed(quoted)} {rate}"
            rate_time = (rate_times or {}).get(quoted)
            if rate_time is not None and rate_time < observed:
                observed = rate_time
                note += f" (rate observed {rate_time.isoformat()})"
        line = SourceOutcome(
            source=quote.source,
            outcome=Outcome.USED,
            price=converted,
            source_time=observed,
            detail=note,
        )
        age = now - observed
        if age > max_age:
            outcomes[quote.source] = _with(line, Outcome.STALE, f"{age.total_seconds():.3f} s old")
            continue
        if -age > max_ahead:
            outcomes[quote.source] = _with(
                line, Outcome.FUTURE, f"{-age.total_seconds():.3f} s ahead of the enclave clock"
            )
            continue
        scaled = scale_price(converted, feed.decimals)
        if scaled <= 0:
            outcomes[quote.source] = _with(line, Outcome.FAILED, "scales to zero")
            continue
        outcomes[quote.source] = line
        fresh[quote.source] = (quote, scaled)
    for source in markets - outcomes.keys():
        outcomes[source] = SourceOutcome(
            source=source, outcome=Outcome.MISSING, detail="no answer this round"
        )

    kept = dict(fresh)
    if kept:
        first = median([s for _, s in kept.values()])
        for source, (_, scaled) in fresh.items():
            if abs(scaled - first) * BPS > max_deviation_bps * first:
                deviation = abs(scaled - first) * BPS / Decimal(first)
                outcomes[source] = _with(
                    outcomes[source],
                    Outcome.OUTLIER,
                    f"{deviation:.1f} bps from the median, limit {max_deviation_bps}",
                )
                del kept[source]
    lines = tuple(outcomes[s] for s in sorted(outcomes))

    def fail(code: OracleErrorCode, detail: str) -> AggregationFailure:
        return AggregationFailure(
            feed=feed.symbol, code=code, detail=detail, observed_at=now, outcomes=lines
        )

    if depegged:
        rates_text = ", ".join(f"{feed.rate_feed(q)} {r}" for q, r in sorted(depegged.items()))
        return fail(
            OracleErrorCode.QUOTE_DEPEG,
            f"{feed.symbol}: {rates_text} is off peg by more than {max_depeg_bps} bps",
        )
    if len(kept) < min_sources:
        refused = {Outcome.BLOCKED, Outcome.RATE_LIMITED}
        summary = ", ".join(f"{o.source} {o.outcome}" for o in lines if o.outcome != Outcome.USED)
        if all(o.outcome in refused for o in lines):
            return fail(
                OracleErrorCode.ALL_SOURCES_BLOCKED,
                f"{feed.symbol}: every source blocked or rate limited: {summary}",
            )
        return fail(
            OracleErrorCode.TOO_FEW_SOURCES,
            f"{feed.symbol}: {len(kept)} usable source(s), {min_sources} required: {summary}",
        )
    values = [s for _, s in kept.values()]
    price = median(values)
    spread = dispersion_bps(values, price)
    if spread > max_dispersion_bps:
        return fail(
            OracleErrorCode.DISPERSION,
            f"{feed.symbol}: dispersion {spread} bps over {len(kept)} sources, "
            f"limit {max_dispersion_bps}",
        )
    return Aggregate(
        feed=feed.symbol,
        price=price,
        decimals=feed.decimals,
        num_sources=len(kept),
        dispersion_bps=spread,
        sources_hash=sources_hash(kept),
        observed_at=now,
        outcomes=lines,
    )


def _with(line: SourceOutcome, outcome: Outcome, detail: str) -> SourceOutcome:
    return SourceOutcome(
        source=line.source,
        outcome=outcome,
        price=line.price,
        source_time=line.source_time,
        # a converted quote keeps its conversion note beside the reason it was dropped
        detail=f"{line.detail}; {detail}" if line.detail else detail,
    )


def aggregate_feed(
    config: OracleConfig,
    symbol: str,
    quotes: Iterable[Quote],
    *,
    now: datetime,
    failures: Iterable[SourceError] = (),
    rates: Mapping[str, Decimal] | None = None,
    rate_times: Mapping[str, datetime] | None = None,
) -> Aggregate | AggregationFailure:
    """`aggregate` with the thresholds of `config` (and the feed's own quorum)."""
    feed = config.feed(symbol)
    return aggregate(
        feed,
        quotes,
        now=now,
        min_sources=config.quorum(feed),
        max_deviation_bps=config.max_deviation_bps,
        max_dispersion_bps=config.max_dispersion_bps,
        max_age=config.max_source_age,
        max_ahead=config.max_source_ahead,
        failures=failures,
        rates=rates,
        rate_times=rate_times,
        max_depeg_bps=config.max_depeg_bps,
    )


def clock_failure(
    feed: str, *, now: datetime, attested_at: datetime, max_skew: timedelta
) -> AggregationFailure | None:
    """`CLOCK_UNTRUSTED` when the enclave clock and a fresh attestation's time disagree.

    The enclave clock follows the KVM clock (aws/aws-nitro-enclaves-nsm-api#15) but drifts (up
    to 6 s a week was seen, evervault/enclaves#195); the NSM document's timestamp is made by the
    hypervisor and signed by the AWS PKI, so it is the reference. Call it with a document fetched
    just now.
    """
    if now.tzinfo is None or attested_at.tzinfo is None:
        raise AggregationError("clock times must be timezone-aware")
    skew = now - attested_at
    if abs(skew) <= max_skew:
        return None
    return AggregationFailure(
        feed=feed,
        code=OracleErrorCode.CLOCK_UNTRUSTED,
        detail=(
            f"{feed}: enclave clock is {skew.total_seconds():+.3f} s from the attested time, "
            f"limit {max_skew.total_seconds():.3f} s"
        ),
        observed_at=now,
        outcomes=(),
    )


def should_publish(
    *,
    last_price: int | None,
    last_timestamp: int | None,
    price: int,
    timestamp: int,
    deviation_bps: int,
    heartbeat: timedelta,
) -> bool:
    """Push a new report on a deviation or when the heartbeat expires, as Chainlink's feeds do.

    Pull requests always get the latest report; this only decides pushes.
    """
    if last_price is None or last_timestamp is None or last_price <= 0:
        return True
    if timestamp - last_timestamp >= heartbeat.total_seconds():
        return True
    return abs(price - last_price) * BPS >= deviation_bps * last_price


# --- the message a round signs --------------------------------------------------------------------


def message_for(
    result: Aggregate | AggregationFailure,
    *,
    round_id: int,
    config: OracleConfig,
    timestamp: int | None = None,
) -> tuple[Message, str | None]:
    """The message to sign for one aggregation round, and the detail text for an `OracleError`.

    `timestamp` (the enclave time) defaults to the round's aggregation time in whole seconds
    (floor). `observationsTimestamp` is the oldest used source time (floor); `validFrom` is the
    enclave time less the clock skew the config tolerates (rounded up to whole seconds), so a
    chain whose clock trails ours by that much still accepts it; `expiresAt` adds `report_ttl`.
    """
    when = int(result.observed_at.timestamp()) if timestamp is None else timestamp
    quorum = config.quorum(config.feed(result.feed))
    used = [o for o in result.outcomes if o.outcome == Outcome.USED]
    expires_at = when + _whole_seconds(config.report_ttl)
    if isinstance(result, Aggregate):
        times = [o.source_time for o in used if o.source_time is not None]
        if len(times) != len(used) or len(used) != result.num_sources:
            raise ReportFormatError("every used source needs its observation time")
        return (
            PriceReport(
                feed_id=feed_id(result.feed),
                price=result.price,
                decimals=result.decimals,
                round_id=round_id,
                observations_timestamp=min(int(t.timestamp()) for t in times),
                valid_from=when - _whole_seconds(config.max_clock_skew),
                expires_at=expires_at,
                timestamp=when,
                num_sources=result.num_sources,
                min_sources=quorum,
                dispersion_bps=result.dispersion_bps,
                sources_hash=result.sources_hash,
                config_hash=config.config_hash,
            ),
            None,
        )
    return (
        OracleError(
            feed_id=feed_id(result.feed),
            code=int(result.code),
            round_id=round_id,
            timestamp=when,
            expires_at=expires_at,
            num_sources=len(used),
            min_sources=quorum,
            detail_hash=detail_hash(result.detail),
            config_hash=config.config_hash,
        ),
        result.detail,
    )


def _whole_seconds(delta: timedelta) -> int:
    return -(-delta // timedelta(seconds=1))
