"""`enclave-net`: the networking kit's command line.

Subcommands: `egress` (the parent-side proxy), `fetch` (one HTTPS request through the enclave's
egress layer), `doctor` (name every broken link of the egress path; apps add their probes with
their own doctor command), `gateway` (the parent-side TCP front of an enclave API).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TypeAlias, cast
from urllib.parse import urlsplit

from enclave_net import __version__
from enclave_net._output import EXIT_CODES, print_error
from enclave_net.address import parse_address
from enclave_net.egress import EgressClient, EgressConfig, Response, Timeouts
from enclave_net.errors import EnclaveNetError
from enclave_net.gateway import Gateway, GatewayLimits
from enclave_net.jsonlog import json_logging, log_event
from nsm_attestation_cli import (
    EXIT_USAGE,
    CliParser,
    UsageError,
    dump,
    epilog_everywhere,
    report_usage_error,
    stdout_closed,
    wants_json,
)

__all__ = ["build_parser", "main", "run_command", "stop_on_signals"]

_log = logging.getLogger("enclave_net.cli")
_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set `stop` on SIGINT or SIGTERM (call inside the running loop); servers wait on it."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


_EGRESS_HELP = """\
Parent-side egress proxy for enclaves. Two modes, usable together:

  route mode    --route LISTEN=HOST:PORT (repeatable). Every stream accepted on LISTEN is
                relayed to HOST:PORT, resolved here on the parent and re-resolved on failure
                and every --resolve-ttl seconds. Same semantics as AWS's vsock-proxy: the
                enclave maps each upstream host name to one parent port.
  CONNECT mode  --connect LISTEN with --allow HOST:PORT (repeatable). Clients send
                "CONNECT host:port"; only allowed pairs are tunnelled (400 malformed,
                403 refused, 502 upstream failure, 503 over capacity, 408 too slow).

TLS is never terminated here: the enclave verifies certificates itself. Upstream addresses that
are link-local (169.254.169.254), multicast or unspecified are always refused; private and
loopback ones unless --allow-private; IPv6 forms that embed an IPv4 address (NAT64, 6to4,
Teredo, IPv4-mapped or -compatible) are judged by that address. Logs are JSON lines on stderr.

Addresses: vsock:CID:PORT (listen on vsock:4294967295:PORT for any CID), unix:PATH, tcp:HOST:PORT.
"""


def _add_egress(sub: _Sub) -> None:
    p = sub.add_parser(
        "egress",
        help="run the parent-side egress proxy (routes and/or CONNECT)",
        description=_EGRESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--route", action="append", default=[], metavar="LISTEN=HOST:PORT")
    p.add_argument("--connect", metavar="LISTEN", help="CONNECT-mode listener address")
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="CONNECT allow list entry (repeatable)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with routes, connect, allow, resolve, limits (see docs/deployment.md)",
    )
    p.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST=IP",
        help="pin a name on the parent, like curl's --resolve; HOST:PORT=IP:PORT "
        "also remaps the port",
    )
    p.add_argument(
        "--allow-private",
        action="store_true",
        default=None,
        help="permit private and loopback upstream addresses (tests, VPC services)",
    )
    p.add_argument("--max-connections", type=int, metavar="N")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS")
    p.add_argument("--total-timeout", type=float, metavar="SECONDS")
    p.add_argument("--head-timeout", type=float, metavar="SECONDS")
    p.add_argument("--resolve-ttl", type=float, metavar="SECONDS")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_egress)


def _run_egress(args: argparse.Namespace) -> int:
    import dataclasses

    from enclave_net.proxy import EgressProxy
    from enclave_net.proxy_config import load_config

    config = load_config(
        args.config,
        routes=args.route,
        connect=args.connect,
        allow=args.allow,
        resolve=args.resolve,
        allow_private=args.allow_private,
    )
    overrides = {
        name: value
        for name, value in (
            ("max_connections", args.max_connections),
            ("idle_timeout", args.idle_timeout),
            ("total_timeout", args.total_timeout),
            ("head_timeout", args.head_timeout),
            ("resolve_ttl", args.resolve_ttl),
        )
        if value is not None
    }
    if overrides:
        config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, **overrides))

    async def serve() -> None:
        proxy = EgressProxy(config)
        await proxy.start()
        stop = asyncio.Event()
        stop_on_signals(stop)
        log_event(_log, logging.INFO, "ready", pid=os.getpid())
        await stop.wait()
        await proxy.close()

    with json_logging(args.log_level):
        asyncio.run(serve())
    return 0


def _add_fetch(sub: _Sub) -> None:
    p = sub.add_parser(
        "fetch",
        help="one HTTPS request through the enclave's egress layer",
        description="Fetch URL through the egress layer exactly as an enclave app does: no DNS, "
        "TLS verified here. Prints status, headers and body; exits 1 with the named "
        "cause if the request fails.",
    )
    p.add_argument("url")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--route",
        action="append",
        metavar="HOST:PORT=ADDR",
        help="route HOST:PORT to a parent address (repeatable)",
    )
    mode.add_argument("--connect", metavar="ADDR", help="parent CONNECT proxy address")
    p.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="PEM",
        help="CA certificates to trust (default: certifi's bundle)",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_fetch)


async def _get(config: EgressConfig, url: str) -> Response:
    async with EgressClient(config) as client:
        return await client.get(url)


def _run_fetch(args: argparse.Namespace) -> int:
    t = args.timeout
    try:
        allow = []
        if args.connect:
            parts = urlsplit(args.url)
            allow = [f"{parts.hostname}:{parts.port or 443}"]
        config = EgressConfig.from_strings(
            routes=args.route or (),
            connect=args.connect,
            allow=allow,
            ca_bundle=args.ca_bundle,
            timeouts=Timeouts(connect=t, read=t, write=t, pool=t),
        )
        response = asyncio.run(_get(config, args.url))
    except EnclaveNetError as exc:
        print_error(exc, as_json=args.json, prefix="enclave-net fetch", url=args.url)
        return 1
    if args.json:
        print(
            dump(
                {
                    "url": args.url,
                    "status": response.status,
                    "headers": [list(h) for h in response.headers],
                    "body": response.text,
                    "elapsed_ms": round(response.elapsed * 1000, 3),
                }
            )
        )
    else:
        print(f"HTTP {response.status}")
        for name, value in response.headers:
            print(f"{name}: {value}")
        print()
        sys.stdout.write(response.text)
        if not response.text.endswith("\n"):
            print()
    return 0


def _add_gateway(sub: _Sub) -> None:
    p = sub.add_parser(
        "gateway",
        help="expose the enclave API on TCP (parent side; forwards bytes only)",
        description="Relays each TCP connection to the enclave API. It cannot forge reports "
        "or documents (they are signed in the enclave); it can only delay or drop them.",
    )
    p.add_argument("--listen", default="tcp:127.0.0.1:8080", metavar="ADDR")
    p.add_argument("--enclave", required=True, metavar="ADDR", help="e.g. vsock:16:5000")
    p.add_argument("--max-connections", type=int, default=256)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    gateway = Gateway(
        listen=parse_address(args.listen),
        enclave=parse_address(args.enclave),
        limits=GatewayLimits(max_connections=args.max_connections),
    )

    async def serve() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await gateway.start()
        log_event(_log, logging.INFO, "ready", listen=str(gateway.bound))
        try:
            await stop.wait()
        finally:
            await gateway.close()

    with json_logging(args.log_level):
        asyncio.run(serve())
    return 0


def _add_doctor(sub: _Sub) -> None:
    from enclave_net.doctor import add_arguments, run

    p = sub.add_parser(
        "doctor",
        help="check every link of the egress path and name what is broken",
        description="Runs the enclave-side (and with --parent, parent-side) checks of the "
        "egress path. Each line is ok / warn / fail with a cause and a remedy; "
        "exit status 1 if anything failed.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="enclave-net",
        description="Networking for Nitro enclaves: egress without DNS, the parent's proxy, "
        "the gateway, a doctor, and KMS with attestation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = cast("_Sub", parser.add_subparsers(dest="command", metavar="COMMAND"))
    _add_egress(sub)
    _add_fetch(sub)
    _add_doctor(sub)
    _add_gateway(sub)
    _add_kms(sub)
    epilog_everywhere(parser, EXIT_CODES)
    return parser


def _add_kms(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from enclave_net.kms._cli import add_kms_commands
    except ImportError as exc:  # botocore / asn1crypto: the [kms] extra
        missing = exc.name
        p = sub.add_parser("kms", help="KMS with attestation (needs the [kms] extra)")

        def _missing(args: argparse.Namespace) -> int:
            print(
                f"enclave-net kms: {missing} is not installed; "
                "install the kms extra: pip install 'nsm-attestation[kms]'",
                file=sys.stderr,
            )
            return 2

        p.set_defaults(func=_missing)
        return
    add_kms_commands(sub)


def run_command(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    errors: tuple[type[BaseException], ...] = (EnclaveNetError, OSError, ValueError),
) -> int:
    """Parse and run one subcommand (its `func`); `errors` become one line (the error shape
    under --json) and exit status 2, not a traceback; so do usage errors when `parser` is a
    `CliParser`. Shared by `enclave-net` and the apps' command lines."""
    as_json = wants_json(argv)
    try:
        try:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return EXIT_USAGE
            result: int = args.func(args)
        except UsageError as exc:  # from argparse, or a command's own check of its arguments
            return report_usage_error(exc, prog=parser.prog, as_json=as_json)
        except BrokenPipeError:
            raise
        except errors as exc:
            prefix = f"{parser.prog} {args.command}"
            print_error(exc, as_json=getattr(args, "json", False), prefix=prefix)
            return EXIT_USAGE
    except BrokenPipeError:
        return stdout_closed()
    return result


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
