"""`nitro-oracle doctor`: check each link of the egress path and name the one that broke.

Each check yields one `Finding`: ok / warn / fail, a one-line cause, and a remedy. The checks
follow reference/networking.md §7.2 and recognise the previous team's setup (§1): resolv.conf
pointing at 127.0.0.1 while `lo` is down, UDP DNS pushed through socat into a TCP-only proxy, a
parent port with no listener, and TLS or HTTP answers that mean the network works but the route
or the region does not.

Beyond the network, it checks what the network is for (§7.2 points 7, 8, 10-12): that each
exchange answers in its documented JSON shape (a 200 from a captive portal or a port routed to
another service is not an answer), the clock against Binance `serverTime`, that the parent serves
as many streams at once as the client pool opens, that the NSM attests and the enclave is not in
debug mode, and that each source's own timestamp is fresh.

The enclave side never resolves a name for egress. The one DNS packet the doctor may send is
the legacy probe: when resolv.conf names a loopback nameserver, it asks that server one question
to show what the old chain does with it.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import errno
import fcntl
import json
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpcore

from oracle_example import netif
from oracle_example._oracle_errors import SourceError, SourceMalformed
from oracle_example.address import Address, HostPort, VsockAddress
from oracle_example.address import connect_socket as _connect_socket
from oracle_example.egress import (
    DEFAULT_MAX_CONNECTIONS,
    X509_V_ERR_CERT_HAS_EXPIRED,
    X509_V_ERR_CERT_NOT_YET_VALID,
    X509_V_ERR_HOSTNAME_MISMATCH,
    EgressBackend,
    EgressClient,
    EgressConfig,
    Response,
    Timeouts,
    forbid_dns,
    make_ssl_context,
)
from oracle_example.errors import (
    EgressConnectError,
    EgressError,
    EgressTimeout,
    InterfaceError,
    NoRouteError,
    OracleExampleError,
    ProxyRefusedError,
    TLSVerificationError,
)
from oracle_example.sources import ADAPTERS, Source

__all__ = ["Finding", "Status", "add_arguments", "enclave_checks", "parent_checks", "run"]

Status = Literal["ok", "warn", "fail"]

# Per-exchange health probes: cheap, unauthenticated, weight 1 (networking.md §6).
PROBE_PATHS = {
    "api.binance.com": "/api/v3/time",
    "data-api.binance.vision": "/api/v3/time",
    "api.exchange.coinbase.com": "/time",
    "api.kraken.com": "/0/public/Time",
    "www.okx.com": "/api/v5/public/time",
}
# networking.md §7.2 point 8: warn above 2 s; fail above the oracle's freshness budget.
CLOCK_WARN_SECONDS = 2.0
DEFAULT_CLOCK_FAIL_SECONDS = 30.0
# §7.2 point 12: the oracle's own defaults (OracleConfig.max_source_age / max_source_ahead).
DEFAULT_MAX_SOURCE_AGE = 30.0
MAX_SOURCE_AHEAD = 5.0
# §7.2 point 12: the instrument each exchange's freshness probe asks for (BTC against USD(T)).
_FRESHNESS_FEED = "BTC/USD"
_FRESHNESS_INSTRUMENTS = {
    "binance": "BTCUSDT",
    "coinbase": "BTC-USD",
    "kraken": "XBTUSD",
    "okx": "BTC-USDT",
}
_EXTRA_HOSTS = {"data-api.binance.vision": "binance"}
_EARLIEST = datetime(2009, 1, 3, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
# IOCTL_VM_SOCKETS_GET_LOCAL_CID (linux/vm_sockets.h) on /dev/vsock.
_IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9
_PARENT_CID = 3
_DNS_PORT = 53
_DNS_PROBE_NAME = "api.binance.com"
_DNS_PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    message: str
    remedy: str = ""


def _ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def _warn(check: str, message: str, remedy: str) -> Finding:
    return Finding(check, "warn", message, remedy)


def _fail(check: str, message: str, remedy: str) -> Finding:
    return Finding(check, "fail", message, remedy)


# --- enclave side ---------------------------------------------------------------------------


def check_environment() -> Iterator[Finding]:
    if Path("/dev/nsm").exists():
        yield _ok("environment", "/dev/nsm present: running in an enclave")
    else:
        yield _warn(
            "environment",
            "no /dev/nsm: development mode, no real attestation possible",
            "expected outside an enclave; inside one, the nsm driver did not load",
        )
    if not hasattr(socket, "AF_VSOCK"):
        yield _fail(
            "vsock", "this Python has no socket.AF_VSOCK", "use Linux >= 4.8, Python >= 3.7"
        )
        return
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError as exc:
        yield _warn(
            "vsock",
            f"cannot create an AF_VSOCK socket: {exc.strerror}",
            "load the vsock transport (in an enclave it is built in)",
        )
        return
    try:
        with Path("/dev/vsock").open("rb") as dev:
            raw = fcntl.ioctl(dev, _IOCTL_VM_SOCKETS_GET_LOCAL_CID, b"\0" * 4)
        cid = struct.unpack("I", raw)[0]
    except OSError as exc:
        yield _warn(
            "vsock",
            f"/dev/vsock unavailable ({exc.strerror}): local CID unknown",
            "outside an enclave this is normal; tests use unix: addresses instead",
        )
        return
    if cid == _PARENT_CID:
        yield _warn(
            "vsock",
            "local CID is 3: this is the parent instance, not the enclave",
            "run the enclave-side doctor inside the enclave; use --parent here",
        )
    else:
        yield _ok("vsock", f"AF_VSOCK works, local CID {cid}")


def check_proxy_environment() -> Iterator[Finding]:
    names = [
        n
        for n in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
        if os.environ.get(n)
    ]
    if names:
        yield _warn(
            "proxy-env",
            f"{', '.join(names)} set; the egress layer ignores them",
            "unset them: any library that honours them could route around the enclave's "
            "route table",
        )
    else:
        yield _ok("proxy-env", "no HTTP(S)_PROXY / ALL_PROXY variables")


def _nameservers(text: str) -> list[str]:
    return re.findall(r"^\s*nameserver\s+(\S+)", text, flags=re.MULTILINE)


def _lo_up() -> bool | None:
    try:
        return bool(netif.interface_flags("lo") & netif.IFF_UP)
    except InterfaceError:
        return None


def check_loopback(*, bring_up: bool) -> Iterator[Finding]:
    if bring_up:
        try:
            netif.bring_up("lo")
        except InterfaceError as exc:
            yield _fail("lo", f"could not bring lo up: {exc}", "run as root (CAP_NET_ADMIN)")
    try:
        flags = netif.interface_flags("lo")
    except InterfaceError as exc:
        yield _fail("lo", str(exc), "is this a network namespace without lo?")
        return
    if not flags & netif.IFF_UP:
        yield _warn(
            "lo",
            f"lo DOWN (flags {flags:#x}): 127.0.0.1 unreachable (ENETUNREACH)",
            "egress over vsock does not need lo; local services do: call "
            "oracle_example.netif.bring_up('lo') at boot (the enclave init never does), "
            "or run `nitro-oracle doctor --lo-up`",
        )
        return
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            socket.create_connection(server.getsockname(), timeout=1).close()
    except OSError as exc:
        yield _fail(
            "lo",
            f"lo UP (flags {flags:#x}) but 127.0.0.1 refuses TCP: {exc.strerror}",
            "check that lo has 127.0.0.1/8 (ip addr show lo)",
        )
        return
    yield _ok("lo", f"lo UP (flags {flags:#x}), 127.0.0.1 accepts TCP connections")


def _dns_query(name: str, ident: int) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD=1, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + labels + struct.pack("!HH", 1, 1)  # A, IN


def _udp_listeners_on_53() -> bool:
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local = line.split()[1]
                if int(local.rsplit(":", 1)[1], 16) == _DNS_PORT:
                    return True
    return False


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            raw = (entry / "cmdline").read_bytes()
            if raw:
                yield int(entry.name), [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _udp_dns_relays() -> list[str]:
    """socat-style relays that take UDP :53 and write it into a stream (vsock, unix, TCP)."""
    found = []
    for pid, argv in _processes():
        if not argv or not Path(argv[0]).name.startswith("socat"):
            continue
        line = " ".join(argv).upper()
        if re.search(r"UDP[46]?(-RECVFROM|-LISTEN)?:53\b", line) and re.search(
            r"VSOCK-CONNECT|UNIX-CONNECT|TCP[46]?:|TCP[46]?-CONNECT", line
        ):
            found.append(f"pid {pid}: {' '.join(argv)}")
    return found


_CHAIN_REMEDY = (
    "remove the DNS chain: this design needs no DNS in the enclave. Route each host to a "
    "parent port (--route api.binance.com:443=vsock:3:8443) and let the parent resolve it"
)


def check_dns(resolv_conf: Path) -> Iterator[Finding]:
    """resolv.conf state, and what the previous team's DNS chain does with a query."""
    target = str(resolv_conf.readlink()) if resolv_conf.is_symlink() else None
    try:
        text = resolv_conf.read_text()
    except FileNotFoundError:
        where = f" -> {target} (dangling)" if target else " missing"
        yield _ok(
            "resolv.conf",
            f"{resolv_conf}{where}: normal in an enclave, where the EIF build turns it into a "
            "symlink into /run (a fresh tmpfs), so whatever the Dockerfile wrote is lost; "
            "nothing here needs DNS",
        )
        return
    except OSError as exc:
        yield _warn("resolv.conf", f"cannot read {resolv_conf}: {exc.strerror}", "")
        return
    servers = _nameservers(text)
    relays = _udp_dns_relays()
    if relays:
        yield _fail(
            "dns-relay",
            f"UDP DNS is relayed into a stream: {relays[0]}",
            "vsock is stream-only and vsock-proxy TCP-only; a TCP DNS server expects a "
            "2-byte length prefix (RFC 1035 §4.2.2) and misreads raw datagrams. " + _CHAIN_REMEDY,
        )
    loopback = [s for s in servers if s.startswith("127.") or s == "::1"]
    if not loopback:
        yield _ok("resolv.conf", f"nameservers {servers or 'none'}; egress does not use DNS")
        return
    server = loopback[0]
    lo_up = _lo_up()
    if lo_up is False:
        yield _fail(
            "resolv.conf",
            f"resolv.conf points at {server} but lo is DOWN: every lookup fails at once "
            "(EAI_AGAIN; sendto gives ENETUNREACH)",
            _CHAIN_REMEDY + "; if something local needs 127.0.0.1, bring lo up",
        )
        return
    yield from _probe_dns(server, relays=bool(relays))


def _probe_dns(server: str, *, relays: bool) -> Iterator[Finding]:
    ident = int.from_bytes(os.urandom(2), "big") | 0x0101  # never a tiny "length"
    query = _dns_query(_DNS_PROBE_NAME, ident)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_DNS_PROBE_TIMEOUT)
        try:
            sock.sendto(query, (server, _DNS_PORT))
            reply = sock.recv(4096)
        except TimeoutError:
            reply = None
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                yield _fail(
                    "dns",
                    f"resolv.conf points at {server}:53 and nothing listens there",
                    _CHAIN_REMEDY,
                )
            elif exc.errno == errno.ENETUNREACH:
                yield _fail("dns", f"{server} unreachable (ENETUNREACH): lo is down", _CHAIN_REMEDY)
            else:
                yield _fail("dns", f"query to {server}:53 failed: {exc.strerror}", _CHAIN_REMEDY)
            return
    if reply is None:
        listener = _udp_listeners_on_53()
        if listener or relays:
            yield _fail(
                "dns",
                f"a local UDP :53 listener took the query and never answered within "
                f"{_DNS_PROBE_TIMEOUT:g}s: UDP DNS forwarded into a TCP-only proxy (the "
                "TCP DNS server reads the query ID as a length and waits)",
                _CHAIN_REMEDY,
            )
        else:
            yield _fail(
                "dns", f"no answer from {server}:53 within {_DNS_PROBE_TIMEOUT:g}s", _CHAIN_REMEDY
            )
        return
    if len(reply) >= 2 and int.from_bytes(reply[:2], "big") == len(reply) - 2:
        yield _fail(
            "dns",
            "the reply carries a TCP length prefix: a stream DNS answer was "
            "passed back as a datagram, so the resolver rejects it",
            _CHAIN_REMEDY,
        )
        return
    if reply[:2] != query[:2]:
        yield _fail("dns", "the reply's transaction ID does not match the query", _CHAIN_REMEDY)
        return
    yield _warn(
        "dns",
        f"{server}:53 answers DNS; nothing in this design needs it",
        "fine, but do not let the app depend on it: egress resolves on the parent",
    )


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
            "check DNS and outbound access on the parent (nitro-oracle doctor --parent)",
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
            "the parent's upstream connect failed or its worker died (vsock-proxy "
            "#549): check the parent's logs and its DNS for the host",
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
            f"GET {url} -> 451: the exchange refuses this egress IP's jurisdiction",
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
            f"GET {url} -> 403: blocked by the exchange's WAF",
            "check the User-Agent and the request rate; the IP may be flagged",
        )
    if status >= 500:
        return _warn(
            name, f"GET {url} -> {status}: the exchange is failing", "retry later; outcome unknown"
        )
    return _warn(name, f"GET {url} -> {status}", "unexpected status for a health probe")


# --- §7.2 point 7: the JSON each time probe must return; point 8: the server time in it -------


@dataclass(frozen=True, slots=True)
class _ServerTime:
    when: datetime
    label: str  # e.g. "api.binance.com serverTime"
    resolution: float  # seconds


class _Shape(ValueError):
    """The answer is not the JSON shape documented for the endpoint."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise _Shape(what)


def _ms(value: object, what: str) -> datetime:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    _require(isinstance(value, int) and not isinstance(value, bool), f"{what} is not ms")
    assert isinstance(value, int)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


def _binance_time(doc: object) -> tuple[datetime, float]:
    _require(isinstance(doc, dict) and "serverTime" in doc, 'no "serverTime"')
    assert isinstance(doc, dict)
    return _ms(doc["serverTime"], "serverTime"), 0.001


def _coinbase_time(doc: object) -> tuple[datetime, float]:
    _require(isinstance(doc, dict) and "epoch" in doc and "iso" in doc, 'no "iso" / "epoch"')
    assert isinstance(doc, dict)
    epoch = doc["epoch"]
    _require(isinstance(epoch, int | float) and not isinstance(epoch, bool), "epoch not a number")
    return datetime.fromtimestamp(float(epoch), UTC), 0.001


def _kraken_time(doc: object) -> tuple[datetime, float]:
    _require(isinstance(doc, dict) and doc.get("error") == [], 'no empty "error" list')
    assert isinstance(doc, dict)
    result = doc.get("result")
    _require(isinstance(result, dict) and isinstance(result.get("unixtime"), int), "no unixtime")
    assert isinstance(result, dict)
    return datetime.fromtimestamp(result["unixtime"], UTC), 1.0


def _okx_time(doc: object) -> tuple[datetime, float]:
    _require(isinstance(doc, dict) and doc.get("code") == "0", 'no "code": "0"')
    assert isinstance(doc, dict)
    data = doc.get("data")
    _require(isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict), "no data")
    assert isinstance(data, list)
    return _ms(data[0].get("ts"), "data[0].ts"), 0.001


# Path -> (the documented shape, for messages; its reader). networking.md §6.
_TIME_SHAPES: dict[str, tuple[str, Callable[[object], tuple[datetime, float]]]] = {
    "/api/v3/time": ('{"serverTime": <ms>}', _binance_time),
    "/time": ('{"iso": ..., "epoch": <s>}', _coinbase_time),
    "/0/public/Time": ('{"error": [], "result": {"unixtime": <s>, ...}}', _kraken_time),
    "/api/v5/public/time": ('{"code": "0", "data": [{"ts": "<ms>"}]}', _okx_time),
}


def _snippet(body: bytes) -> str:
    text = body[:80].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", text) + ("..." if len(body) > 80 else "")


def _read_probe(url: str, response: Response) -> tuple[_ServerTime | None, str | None]:
    """(the server's time if the answer carries one, why the answer is not the expected JSON)."""
    parts = urlsplit(url)
    try:
        document = json.loads(response.body)
    except (UnicodeDecodeError, ValueError):
        content_type = (response.header("content-type") or "?").split(";")[0]
        head = response.body[:512].lower()
        kind = "an HTML page" if b"<html" in head or "html" in content_type else "not JSON"
        return None, f"the body is {kind} ({content_type}): {_snippet(response.body)!r}"
    shape = _TIME_SHAPES.get(parts.path)
    if shape is None:
        return None, None  # a custom probe: any JSON will do
    expected, reader = shape
    try:
        when, resolution = reader(document)
        _require(_EARLIEST <= when < _LATEST, f"time {when.isoformat()} is implausible")
    except (_Shape, OverflowError, OSError, ValueError) as exc:
        return None, f"expected {expected}, got {_snippet(response.body)!r} ({exc})"
    field = "serverTime" if parts.path == "/api/v3/time" else "time"
    return _ServerTime(when, f"{parts.hostname} {field}", resolution), None


def _schema_finding(upstream: HostPort, url: str, status: int, mismatch: str) -> Finding:
    return _fail(
        f"http {upstream.host}",
        f"GET {url} -> {status} but not the exchange's JSON (schema mismatch): {mismatch}",
        "a captive portal, a proxy error page, or a parent port routed to another service "
        "answered: check where the parent forwards this host (curl the URL on the parent)",
    )


def _clock_finding(
    server: _ServerTime, *, local: datetime, rtt: float, fail_after: float
) -> Finding:
    skew = (local - server.when).total_seconds()
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


def _date_header_time(headers: dict[str, str], host: str) -> _ServerTime | None:
    date_header = headers.get("date")
    if not date_header:
        return None
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(date_header)
        if when.tzinfo is not None:
            return _ServerTime(when, f"{host} Date header", 1.0)  # HTTP dates have 1 s steps
    return None


# --- §7.2 point 10: concurrency ---------------------------------------------------------------


def _concurrency_finding(
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
    up here as a TLS handshake that times out while the others are held open."""
    name = f"concurrency {upstream}"
    context = make_ssl_context(config.ca_bundle)
    timeout = config.timeouts.connect

    def one(_: int) -> tuple[httpcore.NetworkStream, float]:
        started = time.monotonic()
        stream = backend.connect_tcp(upstream.host, upstream.port, timeout=timeout)
        try:
            stream = stream.start_tls(context, server_hostname=upstream.host, timeout=timeout)
        except BaseException:
            stream.close()
            raise
        return stream, time.monotonic() - started

    opened: list[tuple[httpcore.NetworkStream, float]] = []
    errors: list[EgressError] = []
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="doctor") as pool:
        for future in [pool.submit(one, i) for i in range(streams)]:
            try:
                opened.append(future.result())
            except EgressError as exc:
                errors.append(exc)
    for stream, _ in opened:  # only now: every stream stayed open until all had finished
        stream.close()
    if not errors:
        slowest = max(seconds for _, seconds in opened)
        return _ok(
            name,
            f"{streams} streams at once through {label}: all completed TLS while held open "
            f"(slowest {slowest * 1000:.0f} ms)",
        )
    stalled = [e for e in errors if isinstance(e, EgressTimeout)]
    if stalled:
        return _fail(
            name,
            f"{len(stalled)} of {streams} simultaneous streams stalled (no TLS answer within "
            f"{timeout:g}s) while {len(opened)} were held open: the parent serves fewer than "
            f"{streams} connections at once",
            f"raise vsock-proxy --num_workers (default 4) above the client pool's "
            f"max_connections ({streams}), or lower max_connections; for nitro-oracle egress "
            "raise limits.max_connections",
        )
    first = _classify(errors[0], upstream, address)
    return _fail(
        name,
        f"{len(errors)} of {streams} simultaneous streams failed: {first.message}",
        first.remedy,
    )


# --- §7.2 point 12: freshness of each source's own data ------------------------------------


def _source_for(upstream: HostPort) -> Source | None:
    source_id = _EXTRA_HOSTS.get(upstream.host) or next(
        (i for i, cls in ADAPTERS.items() if cls.default_host == upstream.host), None
    )
    if source_id is None or source_id not in _FRESHNESS_INSTRUMENTS:
        return None
    cls = ADAPTERS[source_id]
    return cls(host=upstream.host, instruments={_FRESHNESS_FEED: _FRESHNESS_INSTRUMENTS[source_id]})


def _freshness_finding(
    client: EgressClient, source: Source, upstream: HostPort, *, max_age: float
) -> Finding:
    """Fetch the oracle's own ticker request and judge the source's own timestamp, as the
    oracle's rounds do (sources.py): the network can be healthy and the data still stale."""
    name = f"freshness {upstream.host}"
    request = source.request(_FRESHNESS_FEED)
    port = "" if upstream.port == 443 else f":{upstream.port}"
    url = f"https://{upstream.host}{port}{request.path}"
    try:
        response = client.get(url, headers=dict(request.headers))
    except EgressError as exc:
        return _fail(name, f"GET {url} failed: {exc}", "see the egress and http checks above")
    now = datetime.now(UTC)
    try:
        quote = source.parse(
            _FRESHNESS_FEED,
            status=response.status,
            headers=response.headers,
            body=response.body,
            now=now,
        )
    except SourceMalformed as exc:
        return _fail(
            name,
            f"GET {url} -> {response.status} but not {source.id}'s ticker JSON (schema "
            f"mismatch): {exc}",
            "a captive portal, an error page, a port routed to another service, or a changed "
            "API: check the parent's route for this host",
        )
    except SourceError as exc:
        return _fail(
            name, f"no price from {source.id}: {exc}", "see the http check for this host above"
        )
    age = (now - quote.source_time).total_seconds()
    what = f"{source.id} {quote.instrument} {quote.price}"
    if age > max_age:
        return _fail(
            name,
            f"{what}: last price is {age:.1f}s old, over the {max_age:g}s freshness budget",
            "the oracle leaves this source out until it is fresh; a parent or middlebox that "
            "delays or replays answers, or a stalled market, does this: compare with the "
            "exchange directly from the parent",
        )
    if -age > MAX_SOURCE_AHEAD:
        return _fail(
            name,
            f"{what}: the source's timestamp is {-age:.1f}s in the future",
            "the enclave clock is behind: see the clock check",
        )
    return _ok(name, f"{what}: last good price age {max(age, 0.0):.1f}s (budget {max_age:g}s)")


def check_egress(
    config: EgressConfig,
    probes: dict[HostPort, str],
    *,
    clock_fail: float,
    concurrency: int = DEFAULT_MAX_CONNECTIONS,
    max_source_age: float = DEFAULT_MAX_SOURCE_AGE,
) -> Iterator[Finding]:
    entries = [(u, a, "route") for u, a in config.routes.items()]
    if config.connect is not None:
        entries += [(u, config.connect, "connect") for u in sorted(config.allow)]
    best: tuple[_ServerTime, datetime, float] | None = None
    backend = EgressBackend(config)
    context = make_ssl_context(config.ca_bundle)
    t = config.timeouts
    with EgressClient(config) as client:
        for upstream, address, mode in entries:
            label = _route_label(upstream, address, mode)
            try:
                stream = backend.connect_tcp(upstream.host, upstream.port, timeout=t.connect)
                stream = stream.start_tls(context, server_hostname=upstream.host, timeout=t.connect)
                stream.close()
            except NoRouteError as exc:
                yield _fail(f"egress {upstream}", str(exc), "add a route")
                continue
            except EgressError as exc:
                yield _classify(exc, upstream, address)
                continue
            yield _ok(f"egress {upstream}", f"{label}: connected, TLS verified for {upstream.host}")
            if concurrency > 1:
                yield _concurrency_finding(backend, config, upstream, address, label, concurrency)
            url = probes.get(upstream) or (
                f"https://{upstream.host}{'' if upstream.port == 443 else f':{upstream.port}'}"
                f"{PROBE_PATHS.get(upstream.host, '/')}"
            )
            try:
                response = client.get(url)
            except EgressError as exc:
                yield _classify(exc, upstream, address)
                continue
            local = datetime.now(UTC) - timedelta(seconds=response.elapsed / 2)
            headers = {k.lower(): v for k, v in response.headers}
            finding = _http_finding(upstream, url, response.status, headers)
            server: _ServerTime | None = None
            if finding.status == "ok":
                server, mismatch = _read_probe(url, response)
                if mismatch is not None:
                    finding = _schema_finding(upstream, url, response.status, mismatch)
            yield finding
            # Prefer a JSON server time (ms) over an HTTP Date header (1 s steps).
            server = server or _date_header_time(headers, upstream.host)
            if server is not None and (best is None or server.resolution < best[0].resolution):
                best = (server, local, response.elapsed)
            if finding.status == "ok" and (source := _source_for(upstream)) is not None:
                yield _freshness_finding(client, source, upstream, max_age=max_source_age)
    if best is not None:
        server, local, rtt = best
        yield _clock_finding(server, local=local, rtt=rtt, fail_after=clock_fail)


# --- §7.2 point 11: attestation -----------------------------------------------------------


def check_attestation(*, production: bool) -> Iterator[Finding]:
    """NSM reachable, DescribeNSM answers, a fresh document with our nonce parses, and its PCR0
    is not all zero (debug mode). The same rules as the enclave's boot (enclave.py): production
    refuses the emulator and a debug-mode enclave."""
    from attestation.document import AttestationDocument
    from attestation.errors import AttestationError
    from nsm import Nsm, NsmError

    emulator = os.environ.get("NSM_EMULATOR")
    where = f"the emulator (NSM_EMULATOR={emulator})" if emulator else "/dev/nsm"
    if not emulator and not Path("/dev/nsm").exists():
        text = "no NSM (no /dev/nsm, NSM_EMULATOR unset): no attestation, nothing to verify"
        if production:
            yield _fail(
                "attestation",
                text,
                "production runs inside a Nitro enclave, where the nsm driver provides /dev/nsm",
            )
        else:
            yield _warn(
                "attestation",
                text,
                "expected outside an enclave; to exercise attestation set "
                "NSM_EMULATOR=unix:PATH to a running NSM emulator",
            )
        return
    if emulator and production:
        yield _fail(
            "attestation",
            f"NSM_EMULATOR={emulator} is set: an emulated NSM attests nothing",
            "production refuses the emulator (as the enclave's boot does): unset NSM_EMULATOR "
            "and run on /dev/nsm",
        )
        return
    nonce = os.urandom(32)
    try:
        with Nsm.open() as nsm:
            description = nsm.describe()
            document = nsm.attestation(nonce=nonce)
    except (NsmError, OSError) as exc:
        yield _fail(
            "attestation",
            f"NSM via {where} unusable: {exc}",
            "start the emulator at that path"
            if emulator
            else "check the nsm driver and that this process may open /dev/nsm",
        )
        return
    try:
        parsed = AttestationDocument.parse(document)
    except AttestationError as exc:
        yield _fail(
            "attestation",
            f"the NSM returned an unreadable attestation document: {exc}",
            "the NSM or its driver is broken; restart the enclave",
        )
        return
    if parsed.nonce != nonce:
        yield _fail(
            "attestation",
            "the attestation document does not carry the nonce just sent (stale or foreign)",
            "the NSM transport is not the enclave's own: check NSM_EMULATOR and /dev/nsm",
        )
        return
    pcr0 = parsed.pcrs.get(0, b"")
    module = f"module {description.module_id}"
    if parsed.is_debug:
        text = (
            f"PCR0 is all zero ({module}): the enclave runs in debug mode, its memory is "
            "readable from the parent and its attestations prove nothing"
        )
        remedy = (
            "run it without --debug-mode (nitro-cli run-enclave); the oracle refuses to sign "
            "in production mode"
        )
        yield (
            _fail("attestation", text, remedy) if production else _warn("attestation", text, remedy)
        )
        return
    yield _ok(
        "attestation",
        f"NSM via {where} ({module}): DescribeNSM works, a fresh document with our nonce "
        f"parses, PCR0 {pcr0.hex()[:16]}... (not debug mode)",
    )


def check_entropy() -> Iterator[Finding]:
    try:
        os.getrandom(16, os.GRND_NONBLOCK)
    except BlockingIOError:
        yield _fail(
            "entropy",
            "getrandom would block: the kernel pool is not initialised yet",
            "seed it from NSM GetRandom before generating keys",
        )
        return
    yield _ok("entropy", "getrandom(GRND_NONBLOCK) works")


def enclave_checks(
    config: EgressConfig | None,
    *,
    probes: dict[HostPort, str],
    resolv_conf: Path,
    bring_lo_up: bool,
    clock_fail: float = DEFAULT_CLOCK_FAIL_SECONDS,
    production: bool = False,
    concurrency: int = DEFAULT_MAX_CONNECTIONS,
    max_source_age: float = DEFAULT_MAX_SOURCE_AGE,
) -> Iterator[Finding]:
    yield from check_environment()
    yield from check_proxy_environment()
    yield from check_loopback(bring_up=bring_lo_up)
    yield from check_dns(resolv_conf)
    yield from check_entropy()
    yield from check_attestation(production=production)
    if config is None:
        yield _warn(
            "routes",
            "no routes given: egress not checked",
            "pass --route HOST:PORT=ADDR ... or --connect ADDR --allow HOST:PORT",
        )
        return
    yield from check_routes(config)
    with forbid_dns() as lookups:
        findings = list(
            check_egress(
                config,
                probes,
                clock_fail=clock_fail,
                concurrency=concurrency,
                max_source_age=max_source_age,
            )
        )
    yield from findings
    if lookups:
        yield _fail(
            "no-dns",
            f"something looked up {', '.join(sorted(set(lookups)))} during the egress checks",
            "find the caller: the enclave must never resolve names",
        )
    else:
        yield _ok("no-dns", "egress checks ran with name lookups disabled; none was attempted")


# --- parent side ----------------------------------------------------------------------------


def _vsock_proxy_allowlist(path: Path) -> list[tuple[str, str]]:
    # The file is tiny and flat; a regex avoids a YAML dependency. Quoted ports are kept quoted
    # so we can flag them (vsock-proxy requires YAML integers).
    text = path.read_text()
    return re.findall(
        r"address:\s*['\"]?([^,'\"\s}]+)['\"]?\s*,?\s*(?:\n\s*)?port:\s*([^\s,}]+)", text
    )


def parent_checks(
    config_path: Path | None, *, vsock_proxy_config: Path, probe_listeners: bool = True
) -> Iterator[Finding]:
    from oracle_example.proxy import address_refusal, load_config

    for pid, argv in _processes():
        if not argv or Path(argv[0]).name != "vsock-proxy":
            continue
        # vsock-proxy [OPTIONS] <local_port> <remote_addr> <remote_port>
        args = [a for a in argv[1:] if not a.startswith("-")]
        if any(args[i + 2] == "53" for i in range(len(args) - 2)):
            yield _fail(
                "parent-dns-proxy",
                f"pid {pid} ({' '.join(argv)}) relays vsock to port 53 over TCP",
                "the enclave's socat writes raw UDP datagrams into it, without the 2-byte "
                "length a TCP DNS server expects (RFC 1035 §4.2.2): no answer ever comes back. "
                + _CHAIN_REMEDY,
            )
    if vsock_proxy_config.exists():
        entries = _vsock_proxy_allowlist(vsock_proxy_config)
        quoted = [a for a, p in entries if not p.isdigit()]
        if quoted:
            yield _fail(
                "vsock-proxy allowlist",
                f"non-integer port for {', '.join(quoted)} in {vsock_proxy_config}",
                'write port: 443, not port: "443"',
            )
        else:
            yield _ok(
                "vsock-proxy allowlist",
                f"{len(entries)} entries in {vsock_proxy_config}; "
                "each vsock-proxy exits at start unless its host:port is listed",
            )
    if config_path is None:
        return
    try:
        config = load_config(config_path)
    except OracleExampleError as exc:
        yield _fail("egress config", str(exc), "fix the file; the proxy refuses to start with it")
        return
    yield _ok(
        "egress config",
        f"{config_path}: {len(config.routes)} route(s), {len(config.allow)} CONNECT entries",
    )
    upstreams = sorted({r.upstream for r in config.routes} | set(config.allow))
    for upstream in upstreams:
        pin = config.pins.get(str(upstream)) or config.pins.get(upstream.host)
        try:
            ips = (
                [pin.ip]
                if pin
                else sorted(
                    {
                        str(i[4][0])
                        for i in socket.getaddrinfo(
                            upstream.host, upstream.port, type=socket.SOCK_STREAM
                        )
                    }
                )
            )
        except OSError as exc:
            yield _fail(
                f"parent dns {upstream.host}",
                f"cannot resolve on the parent: {exc}",
                "check the parent's resolver (VPC DNS) and outbound access",
            )
            continue
        refused = [
            r for ip in ips if (r := address_refusal(ip, allow_private=config.allow_private))
        ]
        if refused and len(refused) == len(ips):
            yield _fail(
                f"parent dns {upstream.host}",
                "; ".join(refused),
                "the proxy will answer 403; fix DNS or use --resolve / --allow-private",
            )
        else:
            yield _ok(f"parent dns {upstream.host}", f"resolves to {', '.join(ips)}")
    if probe_listeners:
        listeners = [r.listen for r in config.routes] + ([config.connect] if config.connect else [])
        for address in listeners:
            probe = address
            if isinstance(address, VsockAddress):
                # Listening on VMADDR_CID_ANY; from the parent itself, dial the local CID 1.
                probe = VsockAddress(1, address.port)
            try:
                _connect_socket(probe, timeout=2).close()
            except OSError as exc:
                yield _fail(
                    f"listener {address}",
                    f"nothing accepts on {address}: {exc.strerror or exc}",
                    "start the proxy: systemctl status nitro-oracle-egress",
                )
            else:
                yield _ok(f"listener {address}", "accepting connections")


# --- command line ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="HOST:PORT=ADDR",
        help="the enclave's route for an upstream, as in `fetch` (repeatable)",
    )
    p.add_argument("--connect", metavar="ADDR", help="the parent's CONNECT proxy address")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="hosts to check through --connect",
    )
    p.add_argument(
        "--ca-bundle", type=Path, metavar="PEM", help="CA bundle for TLS (default: certifi)"
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="URL",
        help="health URL per host (default: each exchange's time endpoint)",
    )
    p.add_argument(
        "--resolv-conf",
        type=Path,
        default=Path("/etc/resolv.conf"),
        help="resolver file to inspect (default /etc/resolv.conf)",
    )
    p.add_argument("--lo-up", action="store_true", help="bring lo up before checking it")
    p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="per-probe connect/TLS/read timeout (default 3)",
    )
    p.add_argument(
        "--max-clock-skew",
        type=float,
        default=DEFAULT_CLOCK_FAIL_SECONDS,
        metavar="SECONDS",
        help="fail when the clock is further than this from the exchange's serverTime / Date "
        f"(warn above {CLOCK_WARN_SECONDS:g}s; default %(default)s)",
    )
    p.add_argument(
        "--max-source-age",
        type=float,
        default=DEFAULT_MAX_SOURCE_AGE,
        metavar="SECONDS",
        help="fail when an exchange's own ticker timestamp is older than this "
        "(the oracle's maxSourceAgeMs; default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="open N streams per route at once and fail if any stalls (the egress pool's "
        "max_connections; default %(default)s; 0 or 1 skips)",
    )
    p.add_argument(
        "--production",
        action="store_true",
        help="production rules for the attestation check: no NSM, the emulator or a "
        "debug-mode enclave (PCR0 all zero) fail instead of warn",
    )
    p.add_argument("--parent", action="store_true", help="run the parent-side checks instead")
    p.add_argument("--config", type=Path, help="parent: the egress proxy's TOML config")
    p.add_argument(
        "--vsock-proxy-config",
        type=Path,
        default=Path("/etc/nitro_enclaves/vsock-proxy.yaml"),
        help="parent: AWS vsock-proxy allowlist to check (default as installed by AWS)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def _render(findings: list[Finding], out: Callable[[str], None]) -> None:
    for f in findings:
        out(f"{f.status:<5} {f.check}: {f.message}")
        if f.remedy and f.status != "ok":
            out(f"      remedy: {f.remedy}")


def run(args: argparse.Namespace) -> int:
    from oracle_example.address import parse_host_port

    findings: list[Finding] = []

    def collect(checks: Iterator[Finding]) -> None:
        for finding in checks:
            findings.append(finding)
            if not args.json:
                _render([finding], print)
                sys.stdout.flush()

    if args.parent:
        collect(parent_checks(args.config, vsock_proxy_config=args.vsock_proxy_config))
    else:
        config = None
        probes: dict[HostPort, str] = {}
        try:
            if args.route or args.connect:
                t = args.timeout
                config = EgressConfig.from_strings(
                    routes=args.route,
                    connect=args.connect,
                    allow=args.allow,
                    ca_bundle=args.ca_bundle,
                    timeouts=Timeouts(connect=t, read=t, write=t, pool=t),
                )
            for url in args.probe:
                parts = urlsplit(url)
                probes[parse_host_port(f"{parts.hostname}:{parts.port or 443}")] = url
        except OracleExampleError as exc:
            findings.append(_fail("config", str(exc), "fix the command line"))
        else:
            collect(
                enclave_checks(
                    config,
                    probes=probes,
                    resolv_conf=args.resolv_conf,
                    bring_lo_up=args.lo_up,
                    clock_fail=args.max_clock_skew,
                    production=args.production,
                    concurrency=args.concurrency,
                    max_source_age=args.max_source_age,
                )
            )
    failed = any(f.status == "fail" for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}))
    elif findings and findings[-1].check == "config":
        _render(findings[-1:], print)
    return 1 if failed else 0
