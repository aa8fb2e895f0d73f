"""The enclave side of the doctor: the host it runs on, then the egress path.

Each check yields one `Finding`: ok / warn / fail, a one-line cause, and a remedy. The checks
are those of docs/troubleshooting.md and recognise the previous team's setup: resolv.conf
pointing at 127.0.0.1 while `lo` is down, UDP DNS pushed through socat into a TCP-only proxy, a
parent port with no listener, and TLS or HTTP answers that mean the network works but the route
or the region does not (those are in `doctor.egress`).

Beyond the network it checks what the enclave needs: that the NSM attests and the enclave is
not in debug mode, and that the kernel's entropy pool is ready.

The enclave side never resolves a name for egress. The one DNS packet the doctor may send is
the legacy probe: when resolv.conf names a loopback nameserver, it asks that server one question
to show what the old chain does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

from enclave_net import netif
from enclave_net.address import HostPort
from enclave_net.doctor._probe import Clock, Finding, Probe
from enclave_net.doctor._probe import fail as _fail
from enclave_net.doctor._probe import ok as _ok
from enclave_net.doctor._probe import warn as _warn
from enclave_net.doctor.egress import (
    DEFAULT_CLOCK_FAIL_SECONDS,
    check_egress,
    check_routes,
)
from enclave_net.egress import DEFAULT_MAX_CONNECTIONS, EgressConfig, forbid_dns
from enclave_net.errors import InterfaceError

__all__ = [
    "CHAIN_REMEDY",
    "check_attestation",
    "check_dns",
    "check_entropy",
    "check_environment",
    "check_loopback",
    "check_proxy_environment",
    "enclave_checks",
    "processes",
]

# IOCTL_VM_SOCKETS_GET_LOCAL_CID (linux/vm_sockets.h) on /dev/vsock.
_IOCTL_VM_SOCKETS_GET_LOCAL_CID = 0x7B9
PARENT_CID = 3
_DNS_PORT = 53
# Any public name will do: the probe only shows what the legacy chain does with a query.
_DNS_PROBE_NAME = "example.com"
_DNS_PROBE_TIMEOUT = 2.0


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
    if cid == PARENT_CID:
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
            "enclave_net.netif.bring_up('lo') at boot (the enclave init never does), "
            "or run `enclave-net doctor --lo-up`",
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


def processes() -> Iterator[tuple[int, list[str]]]:
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
    for pid, argv in processes():
        if not argv or not Path(argv[0]).name.startswith("socat"):
            continue
        line = " ".join(argv).upper()
        if re.search(r"UDP[46]?(-RECVFROM|-LISTEN)?:53\b", line) and re.search(
            r"VSOCK-CONNECT|UNIX-CONNECT|TCP[46]?:|TCP[46]?-CONNECT", line
        ):
            found.append(f"pid {pid}: {' '.join(argv)}")
    return found


CHAIN_REMEDY = (
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
            "2-byte length prefix (RFC 1035 §4.2.2) and misreads raw datagrams. " + CHAIN_REMEDY,
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
            CHAIN_REMEDY + "; if something local needs 127.0.0.1, bring lo up",
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
                    CHAIN_REMEDY,
                )
            elif exc.errno == errno.ENETUNREACH:
                yield _fail("dns", f"{server} unreachable (ENETUNREACH): lo is down", CHAIN_REMEDY)
            else:
                yield _fail("dns", f"query to {server}:53 failed: {exc.strerror}", CHAIN_REMEDY)
            return
    if reply is None:
        listener = _udp_listeners_on_53()
        if listener or relays:
            yield _fail(
                "dns",
                f"a local UDP :53 listener took the query and never answered within "
                f"{_DNS_PROBE_TIMEOUT:g}s: UDP DNS forwarded into a TCP-only proxy (the "
                "TCP DNS server reads the query ID as a length and waits)",
                CHAIN_REMEDY,
            )
        else:
            yield _fail(
                "dns", f"no answer from {server}:53 within {_DNS_PROBE_TIMEOUT:g}s", CHAIN_REMEDY
            )
        return
    if len(reply) >= 2 and int.from_bytes(reply[:2], "big") == len(reply) - 2:
        yield _fail(
            "dns",
            "the reply carries a TCP length prefix: a stream DNS answer was "
            "passed back as a datagram, so the resolver rejects it",
            CHAIN_REMEDY,
        )
        return
    if reply[:2] != query[:2]:
        yield _fail("dns", "the reply's transaction ID does not match the query", CHAIN_REMEDY)
        return
    yield _warn(
        "dns",
        f"{server}:53 answers DNS; nothing in this design needs it",
        "fine, but do not let the app depend on it: egress resolves on the parent",
    )


# --- Attestation --------------------------------------------------------------------------


def check_attestation(*, production: bool) -> Iterator[Finding]:
    """NSM reachable, DescribeNSM answers, a fresh document with our nonce parses, and its PCR0
    is not all zero (debug mode). Production refuses the emulator and a debug-mode enclave, as
    an attested app's boot should."""
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
            "run it without --debug-mode (nitro-cli run-enclave): a debug-mode enclave's "
            "attestations prove nothing"
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
    probes: Mapping[HostPort, Probe],
    resolv_conf: Path,
    bring_lo_up: bool,
    clock: Clock,
    clock_fail: float = DEFAULT_CLOCK_FAIL_SECONDS,
    production: bool = False,
    concurrency: int = DEFAULT_MAX_CONNECTIONS,
) -> Iterator[Finding]:
    """The host checks, then (given routes) the egress checks with name lookups disabled."""
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
        findings = asyncio.run(
            check_egress(
                config, probes, clock=clock, clock_fail=clock_fail, concurrency=concurrency
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
