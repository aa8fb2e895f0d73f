"""`nitro-oracle doctor`: check each link of the egress path and name the one that broke.

Each check yields one `Finding`: ok / warn / fail, a one-line cause, and a remedy. The checks
follow reference/networking.md §7.2 and recognise the previous team's setup (§1): resolv.conf
pointing at 127.0.0.1 while `lo` is down, UDP DNS pushed through socat into a TCP-only proxy, a
parent port with no listener, and TLS or HTTP answers that mean the network works but the route
or the region does not.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from oracle_example import netif
from oracle_example.address import Address, HostPort, VsockAddress
from oracle_example.address import connect_socket as _connect_socket
from oracle_example.egress import (
    X509_V_ERR_CERT_HAS_EXPIRED,
    X509_V_ERR_CERT_NOT_YET_VALID,
    X509_V_ERR_HOSTNAME_MISMATCH,
    EgressBackend,
    EgressClient,
    EgressConfig,
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


def _clock_finding(date_header: str | None, *, fail_after: float) -> Finding | None:
    if not date_header:
        return None
    with contextlib.suppress(TypeError, ValueError):
        remote = email.utils.parsedate_to_datetime(date_header)
        skew = abs((datetime.now(UTC) - remote).total_seconds())
        # HTTP Date has a resolution of one second.
        if skew > fail_after:
            return _fail(
                "clock",
                f"local clock differs from the server's Date by {skew:.0f}s",
                "fix the enclave clock before trusting timestamps or certificates",
            )
        if skew > CLOCK_WARN_SECONDS + 1:
            return _warn(
                "clock",
                f"local clock off by about {skew:.0f}s from the server's Date",
                "the enclave clock drifts (up to 6 s a week reported); resync it",
            )
        return _ok("clock", f"within {CLOCK_WARN_SECONDS + 1:g}s of the server's Date header")
    return None


def check_egress(
    config: EgressConfig, probes: dict[HostPort, str], *, clock_fail: float
) -> Iterator[Finding]:
    entries = [(u, a, "route") for u, a in config.routes.items()]
    if config.connect is not None:
        entries += [(u, config.connect, "connect") for u in sorted(config.allow)]
    clock_done = False
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
            url = probes.get(upstream) or (
                f"https://{upstream.host}{'' if upstream.port == 443 else f':{upstream.port}'}"
                f"{PROBE_PATHS.get(upstream.host, '/')}"
            )
            try:
                response = client.get(url)
            except EgressError as exc:
                yield _classify(exc, upstream, address)
                continue
            headers = {k.lower(): v for k, v in response.headers}
            yield _http_finding(upstream, url, response.status, headers)
            if not clock_done:
                clock = _clock_finding(headers.get("date"), fail_after=clock_fail)
                if clock is not None:
                    clock_done = True
                    yield clock


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
) -> Iterator[Finding]:
    yield from check_environment()
    yield from check_proxy_environment()
    yield from check_loopback(bring_up=bring_lo_up)
    yield from check_dns(resolv_conf)
    yield from check_entropy()
    if config is None:
        yield _warn(
            "routes",
            "no routes given: egress not checked",
            "pass --route HOST:PORT=ADDR ... or --connect ADDR --allow HOST:PORT",
        )
        return
    yield from check_routes(config)
    with forbid_dns() as lookups:
        findings = list(check_egress(config, probes, clock_fail=clock_fail))
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
    p.add_argument("--route", action="append", default=[], metavar="HOST:PORT=ADDR")
    p.add_argument("--connect", metavar="ADDR")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="hosts to check through --connect",
    )
    p.add_argument("--ca-bundle", type=Path, metavar="PEM")
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="URL",
        help="health URL per host (default: each exchange's time endpoint)",
    )
    p.add_argument("--resolv-conf", type=Path, default=Path("/etc/resolv.conf"))
    p.add_argument("--lo-up", action="store_true", help="bring lo up before checking it")
    p.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS")
    p.add_argument("--max-clock-skew", type=float, default=DEFAULT_CLOCK_FAIL_SECONDS)
    p.add_argument("--parent", action="store_true", help="run the parent-side checks instead")
    p.add_argument("--config", type=Path, help="parent: the egress proxy's TOML config")
    p.add_argument(
        "--vsock-proxy-config", type=Path, default=Path("/etc/nitro_enclaves/vsock-proxy.yaml")
    )
    p.add_argument("--json", action="store_true")


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
                )
            )
    failed = any(f.status == "fail" for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}))
    elif findings and findings[-1].check == "config":
        _render(findings[-1:], print)
    return 1 if failed else 0
