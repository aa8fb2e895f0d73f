"""The egress path, link by link: routes, parent port, TLS, HTTP status, the probe's JSON, the
clock, and how many streams the parent serves at once (docs/troubleshooting.md).

Async, on the one egress implementation (`enclave_net.egress`); `enclave_checks` runs it with
`asyncio.run`. What each host should answer comes from the app's `Probe`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta

import httpcore2 as httpcore

from enclave_net.address import Address, HostPort, VsockAddress
from enclave_net.doctor._probe import (
    Clock,
    Finding,
    PathProbe,
    Probe,
    ProbeMismatch,
    ServerTime,
)
from enclave_net.doctor._probe import fail as _fail
from enclave_net.doctor._probe import ok as _ok
from enclave_net.doctor._probe import warn as _warn
from enclave_net.egress import (
    DEFAULT_MAX_CONNECTIONS,
    X509_V_ERR_CERT_HAS_EXPIRED,
    X509_V_ERR_CERT_NOT_YET_VALID,
    X509_V_ERR_HOSTNAME_MISMATCH,
    EgressBackend,
    EgressClient,
    EgressConfig,
    make_ssl_context,
)
from enclave_net.errors import (
    EgressConnectError,
    EgressError,
    EgressTimeout,
    NoRouteError,
    ProxyRefusedError,
    TLSVerificationError,
)

__all__ = ["CLOCK_WARN_SECONDS", "DEFAULT_CLOCK_FAIL_SECONDS", "check_egress", "check_routes"]

# The clock: warn above 2 s; fail above the app's freshness budget (docs/troubleshooting.md).
CLOCK_WARN_SECONDS = 2.0
DEFAULT_CLOCK_FAIL_SECONDS = 30.0
_PARENT_CID = 3


def _route_label(upstream: HostPort, address: Address, mode: str) -> str:
    return f"{upstream} via {address}" + (" (CONNECT)" if mode == "connect" else "")


def _parent_port(address: Address) -> str:
    if isinstance(address, VsockAddress):
        return f"vsock port {address.port}"
    return str(address)


def check_routes(config: EgressConfig) -> Iterator[Finding]:
    addresses = list(config.routes.values())
    duplicates = {str(a) for a in addresses if addresses.count(a) > 1}
    if duplicates:
        yield _fail(
            "routes",
            f"several upstream hosts share {', '.join(sorted(duplicates))}",
            "in route mode each parent port leads to exactly one host; give each host "
            "its own port (or use CONNECT)",
        )
    cids = {
        a.cid
        for a in addresses + ([config.connect] if config.connect else [])
        if isinstance(a, VsockAddress)
    }
    if cids - {_PARENT_CID}:
        yield _warn(
            "routes",
            f"vsock CID(s) {sorted(cids)}: the Nitro parent is CID 3",
            "use vsock:3:PORT unless you are on Firecracker (host CID 2)",
        )
    count = len(config.routes) + len(config.allow)
    if not duplicates:
        yield _ok("routes", f"{count} upstream(s) configured; host names only, ports unique")


def _classify(error: EgressError, upstream: HostPort, address: Address) -> Finding:
    port = _parent_port(address)
    name = f"egress {upstream}"
    if isinstance(error, TLSVerificationError):
        if error.verify_code == X509_V_ERR_HOSTNAME_MISMATCH:
            return _fail(
                name,
                f"TLS hostname mismatch: {port} is proxied to a different host",
                f"fix the parent's route for {port}: it must lead to {upstream}",
            )
        if error.verify_code in (X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID):
            return _fail(
                name,
                f"certificate not valid now: {error}",
                "check the enclave clock (it follows the host's KVM clock)",
            )
        return _fail(
            name,
            f"TLS verification failed: {error}",
            "the CA bundle in the image must contain the upstream's root (certifi)",
        )
    if isinstance(error, ProxyRefusedError):
        if error.status == 403:
            return _fail(
                name,
                f"the parent proxy refused it: {error}",
                f"add {upstream} to the parent's allow list (--allow / egress.toml)",
            )
        return _fail(
            name,
            f"the parent proxy could not reach the upstream: {error}",
            "check DNS and outbound access on the parent (enclave-net doctor --parent)",
        )
    if isinstance(error, EgressTimeout):
        return _fail(
            name,
            f"timed out: {error}",
            "probably queued behind busy proxy workers (vsock-proxy --num_workers, "
            "default 4) or the upstream is unreachable from the parent",
        )
    if isinstance(error, EgressConnectError) and "no listener" in str(error):
        return _fail(
            name,
            f"no listener on parent {port}",
            "the proxy is not running, the port is wrong, or vsock-proxy exited on its "
            "allowlist check: systemctl status / journalctl -u <unit> on the parent",
        )
    if isinstance(error, EgressConnectError) and "closed during the TLS" in str(error):
        return _fail(
            name,
            f"parent accepted on {port} but closed during the TLS handshake",
            "the parent's upstream connect failed or its worker died (vsock-proxy, "
            "aws/aws-nitro-enclaves-cli#549): check the parent's logs and its DNS for the host",
        )
    if isinstance(error, EgressConnectError) and any(
        s in str(error) for s in ("No such device", "Cannot assign requested address")
    ):
        return _fail(name, f"no vsock transport: {error}", "load vhost_vsock / vsock modules")
    return _fail(name, f"{type(error).__name__}: {error}", "see the message")


def _http_finding(upstream: HostPort, url: str, status: int, headers: dict[str, str]) -> Finding:
    name = f"http {upstream.host}"
    retry = headers.get("retry-after")
    wait = f" (Retry-After {retry}s)" if retry else ""
    weight = headers.get("x-mbx-used-weight-1m")
    used = f"; X-MBX-USED-WEIGHT-1M {weight}" if weight else ""
    if 200 <= status < 300:
        return _ok(name, f"GET {url} -> {status}{used}")
    if status == 451:
        return _fail(
            name,
            f"GET {url} -> 451: the server refuses this egress IP's jurisdiction",
            "move the parent instance (its public / NAT IP) to another region, or drop this source",
        )
    if status == 418:
        return _fail(
            name,
            f"GET {url} -> 418: this IP is banned for ignoring 429s{wait}",
            "stop polling until Retry-After; lower the request rate (weight per IP is "
            "shared by every enclave behind the parent)",
        )
    if status == 429:
        return _fail(
            name,
            f"GET {url} -> 429: rate limited{wait}{used}",
            "back off and honour Retry-After; lower the polling rate",
        )
    if status == 403:
        return _fail(
            name,
            f"GET {url} -> 403: blocked by the server's WAF",
            "check the User-Agent and the request rate; the IP may be flagged",
        )
    if status >= 500:
        return _warn(
            name, f"GET {url} -> {status}: the server is failing", "retry later; outcome unknown"
        )
    return _warn(name, f"GET {url} -> {status}", "unexpected status for a health probe")


def _schema_finding(upstream: HostPort, url: str, status: int, mismatch: str) -> Finding:
    return _fail(
        f"http {upstream.host}",
        f"GET {url} -> {status} but not the documented JSON (schema mismatch): {mismatch}",
        "a captive portal, a proxy error page, or a parent port routed to another service "
        "answered: check where the parent forwards this host (curl the URL on the parent)",
    )


def _clock_finding(server: ServerTime, *, skew: float, rtt: float, fail_after: float) -> Finding:
    direction = "ahead of" if skew > 0 else "behind"
    # The server stamped its time somewhere within the round trip, at its own resolution.
    slack = server.resolution + rtt / 2
    text = (
        f"local clock {abs(skew):.3f}s {direction} {server.label} (round trip {rtt * 1000:.0f} ms)"
    )
    if abs(skew) > fail_after + slack:
        return _fail(
            "clock",
            f"{text}: over the {fail_after:g}s budget",
            "fix the enclave clock before trusting timestamps or certificates (it follows the "
            "host's KVM clock; resync the parent with chrony/NTP)",
        )
    if abs(skew) > CLOCK_WARN_SECONDS + slack:
        return _warn(
            "clock",
            f"{text}: over {CLOCK_WARN_SECONDS:g}s",
            "the enclave clock drifts (up to 6 s a week reported); resync it",
        )
    return _ok("clock", text)


def _date_header_time(headers: dict[str, str], host: str) -> ServerTime | None:
    date_header = headers.get("date")
    if not date_header:
        return None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(date_header)
        if when.tzinfo is not None:
            return ServerTime(when, f"{host} Date header", 1.0)  # HTTP dates have 1 s steps
    return None


# --- Concurrency ------------------------------------------------------------------------------


async def _concurrency_finding(
    backend: EgressBackend,
    config: EgressConfig,
    upstream: HostPort,
    address: Address,
    label: str,
    streams: int,
) -> Finding:
    """Open `streams` tunnels to one route at once and hold them until all finished TLS.

    vsock-proxy serves one connection per worker (--num_workers, default 4): a pool that opens
    more than that gets the extra ones accepted by the kernel and then never served, which shows
    up here as a TLS handshake that does not finish while the others are held open.

    A slow handshake (a loaded parent or host) must not pass for that, so a stall is judged by
    its cause, not by a clock alone: streams still unfinished after twice the connect timeout
    are watched while the finished ones are released. Served then: the parent serves fewer
    than `streams` at once. Still not served with nothing else open: the route is stalled."""
    name = f"concurrency {upstream}"
    context = make_ssl_context(config.ca_bundle)
    timeout = config.timeouts.connect

    async def one() -> tuple[httpcore.AsyncNetworkStream, float]:
        started = time.monotonic()
        stream = await backend.connect_tcp(upstream.host, upstream.port, timeout=timeout)
        try:
            # Bounded by the phases below, which cancel what is left, not by this timeout.
            stream = await stream.start_tls(
                context, server_hostname=upstream.host, timeout=4 * timeout
            )
        except BaseException:
            await stream.aclose()
            raise
        return stream, time.monotonic() - started

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    try:
        _, waiting = await asyncio.wait(tasks, timeout=2 * timeout)
        held = [t for t in tasks if t.done() and t.exception() is None]
        served_after_release = 0
        if waiting:
            for task in held:  # release: a worker-limited parent now serves the waiting ones
                await task.result()[0].aclose()
            _, still = await asyncio.wait(waiting, timeout=timeout)
            served_after_release = len(waiting) - len(still)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    released = {id(task.result()[0]) for task in held} if waiting else set()
    for stream, _ in opened:  # only now: every stream stayed open until all had finished
        if id(stream) not in released:
            await stream.aclose()
    errors = [r for r in results if isinstance(r, EgressError)]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, EgressError | asyncio.CancelledError):
            raise r
    if not waiting and not errors:
        slowest = max(seconds for _, seconds in opened)
        return _ok(
            name,
            f"{streams} streams at once through {label}: all completed TLS while held open "
            f"(slowest {slowest * 1000:.0f} ms)",
        )
    if served_after_release:
        return _fail(
            name,
            f"{len(waiting)} of {streams} simultaneous streams stalled (no TLS answer within "
            f"{2 * timeout:g}s) while {len(held)} were held open; {served_after_release} of "
            f"them got it as soon as those closed: the parent serves fewer than {streams} "
            "connections at once",
            f"raise vsock-proxy --num_workers (default 4) above the client pool's "
            f"max_connections ({streams}), or lower max_connections; for enclave-net egress "
            "raise limits.max_connections",
        )
    if waiting and not errors:
        return _fail(
            name,
            f"{len(waiting)} of {streams} simultaneous streams got no TLS answer within "
            f"{3 * timeout:g}s, even once the others were closed: the route stalls",
            "check the parent's proxy and the upstream (enclave-net doctor --parent)",
        )
    first = _classify(errors[0], upstream, address)
    return _fail(
        name,
        f"{len(errors)} of {streams} simultaneous streams failed: {first.message}",
        first.remedy,
    )


def _url(upstream: HostPort, path: str) -> str:
    return f"https://{upstream.host}{'' if upstream.port == 443 else f':{upstream.port}'}{path}"


async def check_egress(
    config: EgressConfig,
    probes: Mapping[HostPort, Probe],
    *,
    clock: Clock,
    clock_fail: float = DEFAULT_CLOCK_FAIL_SECONDS,
    concurrency: int = DEFAULT_MAX_CONNECTIONS,
) -> list[Finding]:
    """Each configured upstream: stream + TLS, concurrency, the probe's answer, the app's
    follow-up checks; then the clock against the finest server time seen."""
    entries = [(u, a, "route") for u, a in config.routes.items()]
    if config.connect is not None:
        entries += [(u, config.connect, "connect") for u in sorted(config.allow)]
    findings: list[Finding] = []
    best: tuple[ServerTime, float, float] | None = None  # (server time, local skew base, rtt)
    backend = EgressBackend(config)
    context = make_ssl_context(config.ca_bundle)
    t = config.timeouts
    async with EgressClient(config) as client:
        for upstream, address, mode in entries:
            label = _route_label(upstream, address, mode)
            try:
                stream = await backend.connect_tcp(upstream.host, upstream.port, timeout=t.connect)
                stream = await stream.start_tls(
                    context, server_hostname=upstream.host, timeout=t.connect
                )
                await stream.aclose()
            except NoRouteError as exc:
                findings.append(_fail(f"egress {upstream}", str(exc), "add a route"))
                continue
            except EgressError as exc:
                findings.append(_classify(exc, upstream, address))
                continue
            findings.append(
                _ok(f"egress {upstream}", f"{label}: connected, TLS verified for {upstream.host}")
            )
            if concurrency > 1:
                findings.append(
                    await _concurrency_finding(
                        backend, config, upstream, address, label, concurrency
                    )
                )
            probe = probes.get(upstream) or PathProbe(upstream.host)
            url = _url(upstream, probe.path)
            try:
                response = await client.get(url)
            except EgressError as exc:
                findings.append(_classify(exc, upstream, address))
                continue
            # The server stamped its answer somewhere within the round trip: take the middle.
            local = clock() - timedelta(seconds=response.elapsed / 2)
            headers = {k.lower(): v for k, v in response.headers}
            finding = _http_finding(upstream, url, response.status, headers)
            server: ServerTime | None = None
            if finding.status == "ok":
                try:
                    server = probe.server_time(response)
                except ProbeMismatch as exc:
                    finding = _schema_finding(upstream, url, response.status, str(exc))
            findings.append(finding)
            # Prefer a JSON server time (ms) over an HTTP Date header (1 s steps).
            server = server or _date_header_time(headers, upstream.host)
            if server is not None and (best is None or server.resolution < best[0].resolution):
                best = (server, (local - server.when).total_seconds(), response.elapsed)
            if finding.status == "ok":
                findings.extend(await probe.follow_up(client, upstream, clock))
    if best is not None:
        server, skew, rtt = best
        findings.append(_clock_finding(server, skew=skew, rtt=rtt, fail_after=clock_fail))
    return findings
