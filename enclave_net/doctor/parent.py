"""The parent side of the doctor: vsock-proxy processes and allowlist, the egress proxy's
config, DNS for each upstream as the parent resolves it, and its listeners."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

from enclave_net.address import VsockAddress
from enclave_net.address import connect_socket as _connect_socket
from enclave_net.doctor._probe import Finding
from enclave_net.doctor._probe import fail as _fail
from enclave_net.doctor._probe import ok as _ok
from enclave_net.doctor._probe import warn as _warn
from enclave_net.doctor.enclave import CHAIN_REMEDY, processes
from enclave_net.errors import EnclaveNetError
from enclave_net.proxy_config import address_refusal, load_config

__all__ = ["parent_checks"]


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
    # Every check says what it looked at, even when there was nothing to find: a doctor that
    # prints nothing cannot be told from one that checked nothing.
    relays = dns_relays = 0
    for pid, argv in processes():
        if not argv or Path(argv[0]).name != "vsock-proxy":
            continue
        relays += 1
        # vsock-proxy [OPTIONS] <local_port> <remote_addr> <remote_port>
        args = [a for a in argv[1:] if not a.startswith("-")]
        if any(args[i + 2] == "53" for i in range(len(args) - 2)):
            dns_relays += 1
            yield _fail(
                "parent-dns-proxy",
                f"pid {pid} ({' '.join(argv)}) relays vsock to port 53 over TCP",
                "the enclave's socat writes raw UDP datagrams into it, without the 2-byte "
                "length a TCP DNS server expects (RFC 1035 §4.2.2): no answer ever comes back. "
                + CHAIN_REMEDY,
            )
    if not dns_relays:
        yield _ok("vsock-proxy processes", f"{relays} running, none relays DNS (port 53)")
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
    else:
        yield _warn(
            "vsock-proxy allowlist",
            f"{vsock_proxy_config} does not exist: not checked",
            "pass --vsock-proxy-config PATH where AWS's vsock-proxy is configured "
            "(not needed when the parent runs `enclave-net egress`)",
        )
    if config_path is None:
        yield _warn(
            "egress config",
            "no --config given: routes, CONNECT allow list, parent DNS and listeners not checked",
            "pass --config FILE, the TOML file `enclave-net egress --config` runs with",
        )
        return
    try:
        config = load_config(config_path)
    except EnclaveNetError as exc:
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
                    "start the proxy (enclave-net egress): systemctl status <its unit>",
                )
            else:
                yield _ok(f"listener {address}", "accepting connections")
