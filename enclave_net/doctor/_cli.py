"""The doctor's command line (`enclave-net doctor`, and any app's doctor built on it).

`add_arguments` adds the options; `run(args, probes=...)` runs the enclave-side or (with
`--parent`) the parent-side checks and prints one line per finding, or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from enclave_net.address import HostPort, parse_host_port
from enclave_net.doctor._probe import (
    Clock,
    Finding,
    PathProbe,
    Probe,
    ServerTime,
    json_body,
)
from enclave_net.doctor._probe import fail as _fail
from enclave_net.doctor.egress import CLOCK_WARN_SECONDS, DEFAULT_CLOCK_FAIL_SECONDS
from enclave_net.doctor.enclave import enclave_checks
from enclave_net.doctor.parent import parent_checks
from enclave_net.egress import (
    DEFAULT_MAX_CONNECTIONS,
    EgressClient,
    EgressConfig,
    Response,
    Timeouts,
)
from enclave_net.errors import EnclaveNetError

__all__ = ["add_arguments", "run"]


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
        help="health URL per host (default: the app's probe for the host, else /)",
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


@dataclass(frozen=True, slots=True)
class _Repathed:
    """An app probe asked on another path (`--probe URL`): the app's follow-up checks still
    run; the answer is read by whichever app probe owns that path, else any JSON passes."""

    inner: Probe
    path: str
    reader: Probe | None

    @property
    def host(self) -> str:
        return self.inner.host

    def server_time(self, response: Response) -> ServerTime | None:
        if self.reader is None:
            json_body(response)
            return None
        return self.reader.server_time(response)

    async def follow_up(
        self, client: EgressClient, upstream: HostPort, clock: Clock
    ) -> Sequence[Finding]:
        return await self.inner.follow_up(client, upstream, clock)


def _probes(app: Sequence[Probe], urls: list[str]) -> dict[HostPort, Probe]:
    by_host: dict[HostPort, Probe] = {parse_host_port(f"{p.host}:443"): p for p in app}
    by_path = {p.path: p for p in app}
    for url in urls:
        parts = urlsplit(url)
        upstream = parse_host_port(f"{parts.hostname}:{parts.port or 443}")
        path = parts.path + (f"?{parts.query}" if parts.query else "") or "/"
        inner = by_host.get(upstream) or PathProbe(upstream.host, path)
        by_host[upstream] = _Repathed(inner, path, by_path.get(path))
    return by_host


def _now() -> datetime:
    return datetime.now(UTC)


def run(args: argparse.Namespace, *, probes: Sequence[Probe] = (), clock: Clock = _now) -> int:
    """Run the checks `add_arguments` set up; `probes` are the app's, one per upstream host."""
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
            by_host = _probes(probes, args.probe)
        except EnclaveNetError as exc:
            findings.append(_fail("config", str(exc), "fix the command line"))
        else:
            collect(
                enclave_checks(
                    config,
                    probes=by_host,
                    resolv_conf=args.resolv_conf,
                    bring_lo_up=args.lo_up,
                    clock=clock,
                    clock_fail=args.max_clock_skew,
                    production=args.production,
                    concurrency=args.concurrency,
                )
            )
    failed = any(f.status == "fail" for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]}))
    elif findings and findings[-1].check == "config":
        _render(findings[-1:], print)
    return 1 if failed else 0
