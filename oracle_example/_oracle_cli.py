"""`nitro-oracle enclave | gateway | get | demo`: the oracle's own subcommands.

`register(subparsers)` adds them to the `nitro-oracle` parser in `_cli.py`, which runs them
(`nitro-oracle ...` or `python -m oracle_example._cli ...`, as the demo starts the enclave).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from oracle_example.errors import OracleExampleError

__all__ = ["register"]


def _setup_logging(level: str) -> None:
    from oracle_example.proxy import JsonLogFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("oracle_example")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Our errors and unreadable files become one line and exit status 2, not a traceback."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (OracleExampleError, OSError, ValueError) as exc:
            print(f"nitro-oracle {args.command}: {exc}", file=sys.stderr)
            return 2

    return wrapper


async def _until_signalled(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


# --- enclave --------------------------------------------------------------------------------------


def _add_enclave(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from oracle_example.enclave import DEFAULT_INTERVAL, DEFAULT_LISTEN, DEFAULT_ROUTES

    p = sub.add_parser(
        "enclave",
        help="run the oracle inside the enclave (boot, fetch loop, API over vsock)",
        description="Boots the oracle (lo up, NSM, key from NSM randomness, PCR16 := config "
        "hash, locked; attestation binding the key), then fetches, signs and serves reports. "
        "Production mode (the default) refuses the NSM emulator and debug-mode enclaves. "
        f"Default routes: {', '.join(DEFAULT_ROUTES)}.",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR", help="API address")
    p.add_argument(
        "--nsm", default="device", metavar="device|unix:PATH", help="NSM (default /dev/nsm)"
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="development mode: permits the emulator and debug PCRs (never for real prices)",
    )
    p.add_argument("--route", action="append", default=[], metavar="HOST:PORT=ADDR")
    p.add_argument("--connect", metavar="ADDR", help="parent CONNECT proxy address")
    p.add_argument("--allow", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--ca-bundle", type=Path, metavar="PEM", help="default: certifi's bundle")
    p.add_argument("--config", type=Path, metavar="JSON", help="OracleConfig JSON (to_json form)")
    p.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL.total_seconds(), metavar="SECONDS"
    )
    p.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="(--dev only) shift the enclave clock, to exercise the clock check",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_guarded(_run_enclave))


def _run_enclave(args: argparse.Namespace) -> int:
    from nsm.client import Nsm
    from nsm.errors import NsmError
    from oracle_example.address import parse_address
    from oracle_example.config import OracleConfig
    from oracle_example.egress import EgressConfig, forbid_dns
    from oracle_example.enclave import DEFAULT_ROUTES, EnclaveOptions, Oracle, serve

    _setup_logging(args.log_level)
    log = logging.getLogger("oracle_example.enclave")
    if args.clock_offset and not args.dev:
        print("nitro-oracle enclave: --clock-offset needs --dev", file=sys.stderr)
        return 2
    config = (
        OracleConfig.from_json(json.loads(args.config.read_text()))
        if args.config
        else OracleConfig()
    )
    routes = args.route or ([] if args.connect else list(DEFAULT_ROUTES))
    egress = EgressConfig.from_strings(
        routes=routes, connect=args.connect, allow=args.allow, ca_bundle=args.ca_bundle
    )
    offset = timedelta(seconds=args.clock_offset)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    options = EnclaveOptions(
        config=config,
        egress=egress,
        listen=parse_address(args.listen),
        production=not args.dev,
        interval=timedelta(seconds=args.interval),
        clock=clock,
    )
    emulated = args.nsm != "device"
    if emulated and not args.dev:
        log.error("production mode refuses the NSM emulator (%s); pass --dev", args.nsm)
        return 2
    nsm = Nsm.emulator(str(parse_address(args.nsm)).removeprefix("unix:")) if emulated else None
    # The enclave has no resolver: any lookup is a bug, so make it fail at once, loudly.
    with forbid_dns():
        try:
            module = nsm if nsm is not None else Nsm.device()
        except (OracleExampleError, NsmError) as exc:
            log.error("cannot open the NSM: %s", exc)
            return 2
        with module:
            oracle = Oracle(module, options, emulated=emulated)
            try:
                oracle.boot()
            except OracleExampleError as exc:
                log.error("boot refused: %s", exc)
                return 2

            async def main() -> None:
                stop = asyncio.Event()
                await _until_signalled(stop)
                await serve(oracle, options.listen, stop)

            asyncio.run(main())
    return 0


# --- gateway --------------------------------------------------------------------------------------


def _add_gateway(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.set_defaults(func=_guarded(_run_gateway))


def _run_gateway(args: argparse.Namespace) -> int:
    from oracle_example.address import parse_address
    from oracle_example.gateway import Gateway, GatewayLimits

    _setup_logging(args.log_level)
    gateway = Gateway(
        listen=parse_address(args.listen),
        enclave=parse_address(args.enclave),
        limits=GatewayLimits(max_connections=args.max_connections),
    )

    async def main() -> None:
        stop = asyncio.Event()
        await _until_signalled(stop)
        await gateway.start()
        logging.getLogger("oracle_example.gateway").info(
            "ready", extra={"fields": {"listen": str(gateway.bound)}}
        )
        try:
            await stop.wait()
        finally:
            await gateway.close()

    asyncio.run(main())
    return 0


# --- get ------------------------------------------------------------------------------------------


def _pcr(text: str) -> tuple[int, bytes]:
    index, sep, value = text.partition("=")
    try:
        if not sep or not index.isdigit() or len(value) != 96:
            raise ValueError
        return int(index), bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected INDEX=96 hex digits") from None


def _add_get(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="fetch a report and a nonce-bound attestation, verify root to price",
        description="Verifies: root -> document -> policy (PCRs, nonce, age, no debug) -> "
        "public_key -> address -> user_data layout -> EIP-712 signature -> freshness and "
        "source count. Exit 0: verified price; 1: verification failed or the enclave signed "
        "an OracleError; 2: gateway unreachable or bad arguments.",
    )
    p.add_argument("feed", help="e.g. BTC/USD")
    p.add_argument("--gateway", required=True, metavar="URL", help="http://HOST:PORT")
    p.add_argument(
        "--pcr", action="append", type=_pcr, default=[], metavar="I=HEX", help="pin PCR I"
    )
    p.add_argument("--root", type=Path, metavar="PEM", help="trust this root, not AWS's")
    p.add_argument("--config", type=Path, metavar="JSON", help="pin the enclave's config hash")
    p.add_argument(
        "--min-sources", type=int, default=1, metavar="N", help="fewest sources to accept"
    )
    p.add_argument("--max-age", type=float, default=120.0, metavar="SECONDS", help="report age")
    p.add_argument("--allow-debug", action="store_true", help="accept debug documents (unsafe)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per HTTP request")
    p.add_argument("--json", action="store_true", help="print the verified report as JSON")
    p.set_defaults(func=_guarded(_run_get))


def _run_get(args: argparse.Namespace) -> int:
    from attestation import Verifier, load_pem_roots
    from oracle_example._oracle_errors import ReportVerificationError
    from oracle_example.client import ClientError, failure_json, get_report, result_json, summary
    from oracle_example.config import OracleConfig

    if not args.pcr:
        print("nitro-oracle get: pin at least PCR0 with --pcr 0=HEX", file=sys.stderr)
        return 2
    verifier = Verifier(roots=load_pem_roots(args.root.read_bytes())) if args.root else None
    config_hash = (
        OracleConfig.from_json(json.loads(args.config.read_text())).config_hash
        if args.config
        else None
    )
    try:
        result = get_report(
            args.gateway,
            args.feed,
            verifier=verifier or Verifier.aws(),
            pcrs=dict(args.pcr),
            allow_debug=args.allow_debug,
            max_report_age=timedelta(seconds=args.max_age),
            min_sources=args.min_sources,
            config_hash=config_hash,
            timeout=args.timeout,
        )
    except (ReportVerificationError, ClientError) as exc:
        if args.json:
            print(json.dumps(failure_json(args.feed, exc)))
        else:
            print(f"{args.feed}  NOT VERIFIED: {exc} [{exc.code}]")
        return 2 if isinstance(exc, ClientError) else 1
    if args.json:
        print(json.dumps(result_json(result), default=str))
    else:
        print("\n".join(summary(result)))
    return 0 if result.verified is not None else 1


# --- demo -----------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole oracle on one machine: emulator, egress, enclave, gateway, verify",
        description="Starts the NSM emulator, the parent egress proxy, the enclave app (in a "
        "network namespace with no interfaces when root) and the gateway; fetches and verifies "
        "BTC/USD and ETH/USD; writes reports, the attestation and the emulator root to --out. "
        "Uses live exchanges when they answer, else a local HTTPS replay (said loudly).",
    )
    p.add_argument("--out", type=Path, default=Path("oracle-demo"), metavar="DIR")
    p.add_argument("--seed", type=int, default=None, help="deterministic emulator PKI and PCRs")
    p.add_argument("--replay", action="store_true", help="skip the live probe, use the replay")
    p.add_argument(
        "--no-netns", action="store_true", help="run the enclave as a plain process even as root"
    )
    p.set_defaults(func=_guarded(_run_demo))


def _run_demo(args: argparse.Namespace) -> int:
    from oracle_example.demo import run_demo

    return run_demo(
        args.out, seed=args.seed, force_replay=args.replay, netns=False if args.no_netns else None
    )


# --- wiring ---------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `enclave`, `gateway`, `get`, `demo`, and the chain tools to `nitro-oracle`."""
    from oracle_example.relay import add_chain_commands

    _add_enclave(subparsers)
    _add_gateway(subparsers)
    _add_get(subparsers)
    _add_demo(subparsers)
    add_chain_commands(subparsers, pcr=_pcr, guard=_guarded)  # deploy, register, relay
