"""The oracle's probes for `enclave_net`'s doctor: one per configured exchange.

Each exchange's `Source` knows its time endpoint and how to read it (exchanges.py); this module
only adapts it to the doctor's `Probe` and adds the oracle's own check (docs/troubleshooting.md,
`freshness`): the exchange's ticker, fetched and judged exactly as a round does, must be
fresh. The network can be healthy and the data still stale.

`probe_live` is the demo's question before it starts: does each exchange answer a real quote
from here (through the parent's resolver)?
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import certifi

from enclave_net.address import HostPort
from enclave_net.doctor import (
    Clock,
    Finding,
    ProbeMismatch,
    ServerTime,
    fail,
    json_body,
    ok,
    snippet,
)
from enclave_net.egress import EgressClient, Response
from enclave_net.errors import EgressError
from oracle_example.config import OracleConfig
from oracle_example.errors import OracleExampleError, SourceError, SourceMalformed
from oracle_example.exchanges import build_sources
from oracle_example.sources import Source

__all__ = ["ExchangeProbe", "oracle_probes", "probe_live"]


@dataclass(frozen=True, slots=True)
class ExchangeProbe:
    """The doctor's view of one exchange: its time endpoint, then its ticker's freshness."""

    source: Source
    feed: str | None  # the feed whose instrument the freshness check asks for
    max_age: timedelta
    max_ahead: timedelta

    @property
    def host(self) -> str:
        return self.source.host

    @property
    def path(self) -> str:
        return self.source.time_path

    def server_time(self, response: Response) -> ServerTime | None:
        document = json_body(response)
        try:
            when, resolution = self.source.server_time(document)
        except SourceMalformed as exc:
            raise ProbeMismatch(
                f"expected {self.source.time_shape}, got {snippet(response.body)!r} ({exc})"
            ) from exc
        return ServerTime(when, f"{self.host} {self.source.time_field}", resolution)

    async def follow_up(
        self, client: EgressClient, upstream: HostPort, clock: Clock
    ) -> Sequence[Finding]:
        if self.feed is None:
            return ()
        return (await self._freshness(client, upstream, self.feed, clock),)

    async def _freshness(
        self, client: EgressClient, upstream: HostPort, feed: str, clock: Clock
    ) -> Finding:
        source = self.source
        name = f"freshness {upstream.host}"
        request = source.request(feed)
        port = "" if upstream.port == 443 else f":{upstream.port}"
        url = f"https://{upstream.host}{port}{request.path}"
        try:
            response = await client.get(url, headers=dict(request.headers))
        except EgressError as exc:
            return fail(name, f"GET {url} failed: {exc}", "see the egress and http checks above")
        now = clock()
        try:
            quote = source.parse(
                feed, status=response.status, headers=response.headers, body=response.body, now=now
            )
        except SourceMalformed as exc:
            return fail(
                name,
                f"GET {url} -> {response.status} but not {source.id}'s ticker JSON (schema "
                f"mismatch): {exc}",
                "a captive portal, an error page, a port routed to another service, or a "
                "changed API: check the parent's route for this host",
            )
        except SourceError as exc:
            return fail(
                name, f"no price from {source.id}: {exc}", "see the http check for this host above"
            )
        age = (now - quote.source_time).total_seconds()
        budget = self.max_age.total_seconds()
        what = f"{source.id} {quote.instrument} {quote.price}"
        if age > budget:
            return fail(
                name,
                f"{what}: last price is {age:.1f}s old, over the {budget:g}s freshness budget",
                "the oracle leaves this source out until it is fresh; a parent or middlebox that "
                "delays or replays answers, or a stalled market, does this: compare with the "
                "exchange directly from the parent",
            )
        if -age > self.max_ahead.total_seconds():
            return fail(
                name,
                f"{what}: the source's timestamp is {-age:.1f}s in the future",
                "the enclave clock is behind: see the clock check",
            )
        return ok(name, f"{what}: last good price age {max(age, 0.0):.1f}s (budget {budget:g}s)")


def oracle_probes(config: OracleConfig, *, max_age: timedelta | None = None) -> list[ExchangeProbe]:
    """One probe per configured source, checking the first feed it prices; `max_age` overrides
    the config's `max_source_age` (the doctor's --max-source-age)."""
    probes = []
    for source in build_sources(config).values():
        feed = next((f.symbol for f in config.feeds if f.symbol in source.instruments), None)
        probes.append(
            ExchangeProbe(
                source,
                feed,
                max_age=config.max_source_age if max_age is None else max_age,
                max_ahead=config.max_source_ahead,
            )
        )
    return probes


#: Live probe: one HTTPS GET per exchange through the parent's resolver, connect and read.
PROBE_TIMEOUT = 3.0
_PROBE_MAX_BODY = 64 * 1024


def probe_live(config: OracleConfig, *, timeout: float = PROBE_TIMEOUT) -> dict[str, str | None]:
    """source id -> None when the exchange answered a real quote, else why not.

    "Answers" means what the enclave needs: an HTTPS GET of the source's own endpoint for the
    first feed, with certificate checks (certifi), returning a body its adapter parses into a
    quote. A TCP connect alone would call a geo-blocked (451) or intercepted host live.
    """
    feed = config.feeds[0].symbol
    context = ssl.create_default_context(cafile=certifi.where())

    def one(source: Source) -> str | None:
        request = source.request(feed)
        connection = http.client.HTTPSConnection(
            request.host, request.port, timeout=timeout, context=context
        )
        try:
            connection.request("GET", request.path, headers=dict(request.headers))
            response = connection.getresponse()
            body = response.read(_PROBE_MAX_BODY + 1)
            if len(body) > _PROBE_MAX_BODY:
                return f"answer larger than {_PROBE_MAX_BODY} bytes"
            source.parse(
                feed,
                status=response.status,
                headers=dict(response.getheaders()),
                body=body,
                now=datetime.now(UTC),
            )
            return None
        except (OSError, http.client.HTTPException, OracleExampleError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    sources = build_sources(config)
    pool = ThreadPoolExecutor(max_workers=len(sources) or 1)
    try:
        futures = {name: pool.submit(one, source) for name, source in sources.items()}
        out: dict[str, str | None] = {}
        for name, future in futures.items():
            try:
                out[name] = future.result(timeout * 3)
            except Exception as exc:
                out[name] = f"probe failed: {exc!r}"
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
