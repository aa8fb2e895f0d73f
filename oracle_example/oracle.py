"""The oracle inside the enclave: boot, the fetch loop, signing.

Boot (`Oracle.boot`), in this order, failing closed at each step:

1. bring `lo` up (fatal in production, a warning in development);
2. open the NSM: `/dev/nsm`, or the emulator only when named explicitly; production mode refuses
   the emulator and a debug-mode enclave (PCR0 all zero, as the User Guide documents);
3. PCR16 := SHA384(0^48 || configHash), then locked, so the document names the config too;
4. a secp256k1 key from NSM randomness (coincurve). It lives in this process only: nothing
   logs or returns it. With `sealed_key` (sealed.py) it is also sealed with KMS on the first
   boot and unsealed on later ones, which KMS allows only for this PCR0 and PCR16 (hence
   after step 3); a refusal stops the boot rather than making a new key;
5. an attestation with `public_key` = the 65-byte uncompressed key and `user_data` = the fixed
   88-byte binding (binding.py), whose timestamp is the first clock check.

Then every `interval`: re-check the clock against a fresh attestation when due (its document
becomes the cached one served without a nonce), fetch every (feed, source) pair concurrently
through the egress layer, aggregate, and sign either a `PriceReport` or an `OracleError` per
feed, once per configured EIP-712 domain. When the enclave clock and the attested time disagree
by more than `max_clock_skew`, every feed gets a signed `OracleError(CLOCK_UNTRUSTED)` instead.

Its HTTP API is in `api.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import coincurve

from attestation.document import AttestationDocument
from attestation.errors import AttestationError
from enclave_net.address import Address
from enclave_net.egress import EgressClient, EgressConfig, Timeouts
from enclave_net.errors import EgressError, InterfaceError
from enclave_net.netif import bring_up
from nsm.client import Nsm
from nsm.errors import NsmError
from oracle_example.aggregate import (
    Aggregate,
    AggregationFailure,
    Quote,
    aggregate_feed,
    clock_failure,
    message_for,
)
from oracle_example.binding import Binding, public_key_bytes
from oracle_example.config import OracleConfig
from oracle_example.errors import (
    EnclaveBootError,
    SourceError,
    SourceUnreachable,
)
from oracle_example.eth import SECP256K1_N, to_checksum_address
from oracle_example.exchanges import build_sources
from oracle_example.report import (
    OracleError,
    OracleErrorCode,
    Outcome,
    SignedReport,
)
from oracle_example.sealed import SealedKeyOptions, load_signing_secret
from oracle_example.sources import SKIPPED, Source, SourceState, severity, skip_reason

__all__ = [
    "DEFAULT_INTERVAL",
    "FIRST_ROUTE_PORT",
    "EnclaveOptions",
    "Oracle",
    "default_routes",
    "expected_pcr16",
]

log = logging.getLogger("oracle_example.oracle")

#: The parent's first route port (docs/deployment.md): source i of the config is
#: reached through vsock port FIRST_ROUTE_PORT + i (8443 Binance, 8444 Coinbase, ...).
FIRST_ROUTE_PORT = 8443
PARENT_CID = 3
#: A round every 5 s: about 1 request/s per exchange for two feeds, far under every public
#: limit (Binance Spot API docs: 6,000 weight/min, 2 per MINI ticker).
DEFAULT_INTERVAL = _dt.timedelta(seconds=5)
#: Re-read the attested time this often (every few minutes would do; once a minute costs one
#: NSM attestation).
DEFAULT_CLOCK_CHECK = _dt.timedelta(seconds=60)
_PCR16 = 16
_PCR_SIZE = 48
#: Round ids start at (attested boot time in seconds) << 20 and count up per feed, so they keep
#: increasing across restarts (a contract refuses a round id that is not newer): a boot's ids
#: stay below the next boot's base unless it signed over 2**20 rounds per second of uptime.
ROUND_ID_SHIFT = 20


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def default_routes(config: OracleConfig) -> tuple[str, ...]:
    """The route table of docs/deployment.md, one parent vsock port per source host,
    in the config's source order. It is part of the image's command line, so PCR2 measures it."""
    return tuple(
        f"{source.host}:443=vsock:{PARENT_CID}:{FIRST_ROUTE_PORT + i}"
        for i, source in enumerate(config.sources)
    )


def expected_pcr16(config: OracleConfig) -> bytes:
    """PCR16 after boot: SHA384(48 zero bytes || configHash); consumers may pin it."""
    return hashlib.sha384(bytes(_PCR_SIZE) + config.config_hash).digest()


@dataclass(frozen=True, kw_only=True)
class EnclaveOptions:
    config: OracleConfig
    egress: EgressConfig
    listen: Address
    production: bool = True
    interval: _dt.timedelta = DEFAULT_INTERVAL
    clock_check: _dt.timedelta = DEFAULT_CLOCK_CHECK
    clock: Callable[[], _dt.datetime] = _utcnow
    """The enclave clock; injected so tests can make it drift."""
    sealed_key: SealedKeyOptions | None = None
    """Keep the signing key across restarts, sealed with KMS (None: a new key every boot)."""


@dataclass
class _ClockCheck:
    checked_at: _dt.datetime
    attested_at: _dt.datetime
    failure: str | None


@dataclass
class _Published:
    reports: tuple[SignedReport, ...]
    result: Aggregate | AggregationFailure


@dataclass(kw_only=True)
class _State:
    round: int = 0
    round_base: int = 1
    """The first round id of this boot (see ROUND_ID_SHIFT)."""
    next_round_id: dict[str, int] = field(default_factory=dict)
    clock: _ClockCheck | None = None
    published: dict[str, _Published] = field(default_factory=dict)
    """The latest round per feed, a price or a refusal."""
    last_price: dict[str, tuple[SignedReport, ...]] = field(default_factory=dict)
    """The latest PriceReport per feed: served until it expires, refusals or not."""
    sources: dict[str, SourceState] = field(default_factory=dict)
    last_error: dict[str, SourceError] = field(default_factory=dict)


class Oracle:
    """The enclave's state: NSM, key (private), config, latest reports. `boot()` first."""

    def __init__(self, nsm: Nsm, options: EnclaveOptions, *, emulated: bool) -> None:
        self._nsm = nsm
        self._nsm_lock = threading.Lock()
        self.options = options
        self.config = options.config
        self.emulated = emulated
        self._sources: dict[str, Source] = build_sources(options.config)
        self._state = _State(sources={s: SourceState(source=s) for s in self._sources})
        self._key: coincurve.PrivateKey | None = None
        self.public_key = b""
        self.address = b""
        self.binding: Binding | None = None
        self.pcr0 = b""
        self.pcr16 = b""
        self.debug = False
        # "nsm" (a new key this boot), "sealed" (new, and sealed for later boots) or
        # "unsealed" (the key an earlier boot sealed).
        self.key_origin = ""
        self._document = b""
        self._slowest = 0.0
        self._started = options.clock()

    # --- boot -----------------------------------------------------------------------------

    def boot(self) -> None:
        production = self.options.production
        if production and self.emulated:
            raise EnclaveBootError(
                "production mode refuses the NSM emulator: run on /dev/nsm, or pass --dev "
                "(development mode, never for real prices)"
            )
        try:
            flags = bring_up("lo")
            log.info("lo is up", extra={"fields": {"flags": flags}})
        except InterfaceError as exc:
            if production:
                raise EnclaveBootError(f"cannot bring lo up: {exc}") from exc
            log.warning("lo not brought up (development mode): %s", exc)
        try:
            with self._nsm_lock:
                description = self._nsm.describe()
                self.pcr0 = self._nsm.describe_pcr(0).data
                self.debug = not any(self.pcr0)
                if self.debug:
                    if production:
                        raise EnclaveBootError(
                            "PCR0 is all zero: this enclave runs in debug mode, where memory is "
                            "readable from the parent and attestations are worthless; "
                            "production mode refuses to sign (run-enclave without --debug-mode)"
                        )
                    log.warning("DEBUG-MODE NSM (PCR0 all zero): documents will not verify")
                state = self._nsm.describe_pcr(_PCR16)
                if state.locked or any(state.data):
                    raise EnclaveBootError(
                        "PCR16 is not fresh (extended or locked before boot): refusing an "
                        "unknown measurement"
                    )
                self.pcr16 = self._nsm.extend_pcr(_PCR16, self.config.config_hash)
                self._nsm.lock_pcr(_PCR16)
                self._key = self._signing_key()
                self.public_key = public_key_bytes(self._key)
                self.binding = Binding.for_key(self.public_key, self.config)
                self.address = self.binding.address
        except NsmError as exc:
            raise EnclaveBootError(f"NSM: {exc}") from exc
        booted = self._check_clock()
        self._state.round_base = int(booted.attested_at.timestamp()) << ROUND_ID_SHIFT
        log.info(
            "booted",
            extra={
                "fields": {
                    "mode": "production" if production else "development",
                    "nsm": "emulator" if self.emulated else "device",
                    "module_id": description.module_id,
                    "address": to_checksum_address(self.address),
                    "key": self.key_origin,
                    "config_hash": "0x" + self.config.config_hash.hex(),
                    "pcr0": self.pcr0.hex(),
                    "pcr16": self.pcr16.hex(),
                }
            },
        )

    def _signing_key(self) -> coincurve.PrivateKey:
        sealed = self.options.sealed_key
        if sealed is None:
            self.key_origin = "nsm"
            return _key_from_nsm(self._nsm)
        secret, created = load_signing_secret(
            self._nsm,
            sealed,
            create=lambda: _key_from_nsm(self._nsm).secret,
            pcr0=self.pcr0,
            pcr16=self.pcr16,
        )
        if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < SECP256K1_N:
            raise EnclaveBootError("the unsealed signing key is not a secp256k1 scalar")
        self.key_origin = "sealed" if created else "unsealed"
        return coincurve.PrivateKey(secret)

    def _attest(self, nonce: bytes | None) -> bytes:
        if self.binding is None:
            raise EnclaveBootError("not booted")
        with self._nsm_lock:
            try:
                return self._nsm.attestation(
                    public_key=self.public_key, user_data=self.binding.encode(), nonce=nonce
                )
            except NsmError as exc:
                raise EnclaveBootError(f"NSM attestation failed: {exc}") from exc

    def _check_clock(self) -> _ClockCheck:
        """A fresh document; its signed timestamp against our clock."""
        before = self.options.clock()
        document = self._attest(None)
        after = self.options.clock()
        try:
            attested_at = AttestationDocument.parse(document).timestamp
        except AttestationError as exc:
            raise EnclaveBootError(f"the NSM returned an unreadable document: {exc}") from exc
        now = before + (after - before) / 2
        failure = clock_failure(
            "*", now=now, attested_at=attested_at, max_skew=self.config.max_clock_skew
        )
        check = _ClockCheck(
            checked_at=after,
            attested_at=attested_at,
            failure=None if failure is None else failure.detail.removeprefix("*: "),
        )
        self._document = document
        self._state.clock = check
        if check.failure:
            log.error("CLOCK UNTRUSTED: %s; signing OracleError instead of prices", check.failure)
        return check

    # --- rounds ---------------------------------------------------------------------------

    async def run_round(self, client: EgressClient) -> None:
        """One round for every feed: fetch, aggregate, sign, publish. Never raises."""
        self._state.round += 1
        try:
            check = self._state.clock
            now = self.options.clock()
            # An untrusted clock is re-checked every round: the refusal is stamped with a
            # fresh attested time, and prices resume as soon as the clocks agree again.
            stale = check is None or now - check.checked_at >= self.options.clock_check
            if check is None or stale or check.failure is not None:
                check = await asyncio.to_thread(self._check_clock)
            if check.failure is not None:
                for feed in self.config.feeds:
                    failure = AggregationFailure(
                        feed=feed.symbol,
                        code=OracleErrorCode.CLOCK_UNTRUSTED,
                        detail=f"{feed.symbol}: {check.failure}",
                        # The NSM's signed time, not the clock just found skewed: a consumer
                        # with a correct clock must be able to accept the refusal.
                        observed_at=check.attested_at,
                        outcomes=(),
                    )
                    self._publish(failure)
                return
            await self._fetch_and_publish(client)
        except Exception as exc:  # a round must never take the enclave down; sign the failure
            log.exception("round %d failed", self._state.round)
            for feed in self.config.feeds:
                self._publish(
                    AggregationFailure(
                        feed=feed.symbol,
                        code=OracleErrorCode.INTERNAL,
                        detail=f"{feed.symbol}: internal error: {type(exc).__name__}",
                        observed_at=self.options.clock(),
                        outcomes=(),
                    )
                )

    async def _fetch_and_publish(self, client: EgressClient) -> None:
        pairs = [(f.symbol, m.source) for f in self.config.feeds for m in f.markets]
        started = time.monotonic()
        self._slowest = 0.0
        results = await asyncio.gather(*(self._fetch(client, f, s) for f, s in pairs))
        fetched = time.monotonic()
        # Source state once per source: any failure this round wins over a success on the
        # other feed (a 429 must not be forgotten because ETH answered before BTC was refused).
        by_source: dict[str, list[Quote | SourceError | None]] = {}
        for (_, source), result in zip(pairs, results, strict=True):
            by_source.setdefault(source, []).append(result)
        now = self.options.clock()
        for source, outcomes in by_source.items():
            state = self._state.sources[source]
            errors = [e for e in outcomes if isinstance(e, SourceError)]
            if errors:
                worst = max(errors, key=severity)
                if worst.code != SKIPPED:
                    self._state.sources[source] = state.failed(worst, now=now)
                    self._state.last_error[source] = worst
            elif any(isinstance(o, Quote) for o in outcomes):
                self._state.sources[source] = state.succeeded()
        rates: dict[str, Decimal] = {}  # rate feed symbol -> this round's price
        rate_times: dict[str, _dt.datetime] = {}  # ... -> its oldest observation
        for feed in self.config.feeds_in_order():
            quotes: list[Quote] = []
            failures: list[SourceError] = []
            for (symbol, _), result in zip(pairs, results, strict=True):
                if symbol != feed.symbol:
                    continue
                if isinstance(result, Quote):
                    quotes.append(result)
                elif isinstance(result, SourceError):
                    failures.append(result)
            aggregated = aggregate_feed(
                self.config,
                feed.symbol,
                quotes,
                now=self.options.clock(),
                failures=failures,
                rates={
                    q: rates[feed.rate_feed(q)]
                    for q in feed.convert_quotes
                    if feed.rate_feed(q) in rates
                },
                rate_times={
                    q: rate_times[feed.rate_feed(q)]
                    for q in feed.convert_quotes
                    if feed.rate_feed(q) in rate_times
                },
            )
            if isinstance(aggregated, Aggregate):
                rates[feed.symbol] = Decimal(aggregated.price).scaleb(-aggregated.decimals)
                rate_times[feed.symbol] = min(
                    o.source_time
                    for o in aggregated.outcomes
                    if o.outcome == Outcome.USED and o.source_time is not None
                )
            self._publish(aggregated)
        log.info(
            "round",
            extra={
                "fields": {
                    "round": self._state.round,
                    "slowest_source_ms": round(self._slowest * 1000, 3),
                    "fetch_ms": round((fetched - started) * 1000, 3),
                    "total_ms": round((time.monotonic() - started) * 1000, 3),
                }
            },
        )

    async def _fetch(self, client: EgressClient, feed: str, source_id: str) -> Quote | SourceError:
        state = self._state.sources[source_id]
        now = self.options.clock()
        if not state.ready(now):
            return skip_reason(state, self._state.last_error.get(source_id), now)
        source = self._sources[source_id]
        request = source.request(feed)
        seconds = self.config.request_timeout.total_seconds()
        timeouts = Timeouts(connect=seconds, read=seconds, write=seconds, pool=seconds)
        try:
            async with asyncio.timeout(2 * seconds):
                response = await client.get(
                    request.url, headers=dict(request.headers), timeouts=timeouts
                )
        except (EgressError, TimeoutError) as exc:
            kind = type(exc).__name__
            return SourceUnreachable(f"{kind}: {exc}", source=source_id)
        self._slowest = max(self._slowest, response.elapsed)
        try:
            return source.parse(
                feed,
                status=response.status,
                headers=response.headers,
                body=response.body,
                now=self.options.clock(),
            )
        except SourceError as exc:
            return exc

    def _publish(self, result: Aggregate | AggregationFailure) -> None:
        if self._key is None:
            raise EnclaveBootError("not booted")
        rounds = self._state.next_round_id
        round_id = rounds.get(result.feed, self._state.round_base)
        rounds[result.feed] = round_id + 1
        message, detail = message_for(result, round_id=round_id, config=self.config)
        reports = SignedReport.sign(
            message,
            feed=result.feed,
            key=self._key,
            domains=self.config.domains,
            sources=result.outcomes,
            detail=detail,
        )
        self._state.published[result.feed] = _Published(reports=reports, result=result)
        if isinstance(result, Aggregate):
            self._state.last_price[result.feed] = reports
        if isinstance(result, Aggregate):
            log.info(
                "signed PriceReport",
                extra={
                    "fields": {
                        "feed": result.feed,
                        "round": round_id,
                        "price": str(result.price),
                        "decimals": result.decimals,
                        "sources": result.num_sources,
                        "dispersion_bps": result.dispersion_bps,
                    }
                },
            )
        else:
            log.warning(
                "signed OracleError",
                extra={
                    "fields": {
                        "feed": result.feed,
                        "round": round_id,
                        "code": int(result.code),
                        "detail": result.detail,
                    }
                },
            )

    async def run(self, stop: asyncio.Event) -> None:
        async with EgressClient(self.options.egress) as client:
            while not stop.is_set():
                await self.run_round(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.options.interval.total_seconds())

    # --- what the API serves -------------------------------------------------------------

    def report(self, feed: str, domain: int = 0) -> SignedReport | None:
        """The last good price while it has not expired, even after newer refusals (they are
        served beside it, `error`); otherwise the latest round, a refusal or an expired price."""
        published = self._state.published.get(feed)
        if published is None:
            return None
        good = self._state.last_price.get(feed)
        now = int(self.options.clock().timestamp())
        if good is not None and good[domain].message.expires_at > now:
            return good[domain]
        return published.reports[domain]

    def error(self, feed: str, domain: int = 0) -> SignedReport | None:
        """The latest round's signed `OracleError`, or None when the latest round priced."""
        published = self._state.published.get(feed)
        if published is None or isinstance(published.result, Aggregate):
            return None
        return published.reports[domain]

    async def attestation(self, nonce: bytes | None) -> bytes:
        if nonce is None:
            return self._document
        return await asyncio.to_thread(self._attest, nonce)

    def health(self) -> dict[str, object]:
        feeds: dict[str, object] = {}
        for feed in self.config.feeds:
            published = self._state.published.get(feed.symbol)
            if published is None:
                feeds[feed.symbol] = None
                continue
            message = published.reports[0].message
            feeds[feed.symbol] = {
                "kind": message.TYPE_NAME,
                "roundId": message.round_id,
                "timestamp": message.timestamp,
                "code": message.code if isinstance(message, OracleError) else None,
            }
        clock = self._state.clock
        ready = all(v is not None for v in feeds.values())
        return {
            "status": "ok" if ready else "starting",
            "mode": "production" if self.options.production else "development",
            "nsm": "emulator" if self.emulated else "device",
            "debug": self.debug,
            "address": to_checksum_address(self.address),
            "key": self.key_origin,
            "publicKey": "0x" + self.public_key.hex(),
            "configHash": "0x" + self.config.config_hash.hex(),
            "domainsHash": "0x" + self.config.domains_hash.hex(),
            "pcr0": self.pcr0.hex(),
            "pcr16": self.pcr16.hex(),
            "rounds": self._state.round,
            "uptimeSeconds": round((self.options.clock() - self._started).total_seconds(), 3),
            "clock": None
            if clock is None
            else {
                "checkedAt": clock.checked_at.isoformat(),
                "attestedAt": clock.attested_at.isoformat(),
                "ok": clock.failure is None,
                "detail": clock.failure,
            },
            "feeds": feeds,
            "sources": {
                s: {
                    "disabled": st.disabled,
                    "notBefore": None if st.not_before is None else st.not_before.isoformat(),
                    "failures": st.failures,
                }
                for s, st in self._state.sources.items()
            },
        }


def _key_from_nsm(nsm: Nsm) -> coincurve.PrivateKey:
    """A secp256k1 scalar from NSM randomness, rejection-sampled into [1, n)."""
    for _ in range(8):  # the chance of needing a second draw is about 2**-128
        secret = nsm.get_random(32)
        if 0 < int.from_bytes(secret, "big") < SECP256K1_N:
            return coincurve.PrivateKey(secret)
    raise EnclaveBootError("NSM randomness never gave a valid secp256k1 scalar")
