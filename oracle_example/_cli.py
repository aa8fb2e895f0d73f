"""`nitro-oracle`: the oracle's command line: `enclave`, `get`, `doctor`, `demo`, and the chain
tools `deploy`, `register`, `relay` (from `relay.py`).

`nitro-oracle ...` or `python -m oracle_example._cli ...` (as the demo starts the enclave). The
networking tools (the parent's egress proxy, the gateway, fetch, the generic doctor) are
`enclave-net`'s; `nitro-oracle doctor` is that doctor with the oracle's exchange probes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from enclave_net._cli import run_command, stop_on_signals
from enclave_net.errors import EnclaveNetError
from nsm_attestation_cli import CliParser, UsageError, dump, epilog_everywhere
from oracle_example import __version__
from oracle_example.errors import OracleExampleError

if TYPE_CHECKING:
    from oracle_example.sealed import SealedKeyOptions

__all__ = ["build_parser", "main"]

_EXIT_CODES = """\
exit status:
  0    done; get: a verified price
  1    get: verification failed, or the enclave signed an OracleError; doctor: a check failed
  2    usage error; get: gateway unreachable; enclave: boot refused; bad configuration
  141  stdout closed early (e.g. | head)
With --json, results and errors are JSON on stdout (docs/schemas/).
"""
# `get`'s hints by error code, in terms of its flags.
_GET_HINTS = {
    "policy.debug": "pass --allow-debug to accept a debug-mode enclave (development only)",
    "chain.untrusted": "an enclave on the NSM emulator is signed by its own root: pass --root "
    "PEM (the demo writes it to its --out directory)",
    "policy.pcr-mismatch": "pin the PCRs the enclave image measures (--pcr I=HEX, from "
    "`nitro-cli describe-eif`)",
    "client.transport": "is the gateway running at --gateway? (`enclave-net gateway` on the "
    "parent)",
    "verify.too_few_sources": "fewer exchanges answered than --min-sources",
    "verify.stale_report": "the report is older than --max-age SECONDS",
}


# --- enclave --------------------------------------------------------------------------------------


def _add_enclave(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from oracle_example.api import DEFAULT_LISTEN
    from oracle_example.config import OracleConfig
    from oracle_example.oracle import DEFAULT_INTERVAL, default_routes

    p = sub.add_parser(
        "enclave",
        help="run the oracle inside the enclave (boot, fetch loop, API over vsock)",
        description="Boots the oracle (lo up, NSM, PCR16 := config hash, locked; key from NSM "
        "randomness, or unsealed with --sealed-key; attestation binding the key), then "
        "fetches, signs and serves reports. "
        "Production mode (the default) refuses the NSM emulator and debug-mode enclaves. "
        f"Default routes (one per configured source): {', '.join(default_routes(OracleConfig()))}.",
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
    _add_sealed_key(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_run_enclave)


def _add_sealed_key(p: argparse.ArgumentParser) -> None:
    from oracle_example.sealed import DEFAULT_CREDENTIALS, DEFAULT_KMS_ROUTE, DEFAULT_STORE

    g = p.add_argument_group(
        "sealed key",
        "Keep the signing key across restarts: sealed with KMS Encrypt on the first boot, "
        "unsealed with Decrypt + Recipient later, which the key policy allows only for this "
        "image's PCR0 and this config's PCR16. A refusal stops the boot (no new key).",
    )
    g.add_argument(
        "--sealed-key", metavar="KEY_ID", help="the KMS key (id, ARN or alias) that seals it"
    )
    g.add_argument("--kms-region", metavar="REGION", help="the key's region (with --sealed-key)")
    g.add_argument(
        "--kms-route",
        default=DEFAULT_KMS_ROUTE,
        metavar="ADDR",
        help=f"parent address for kms.REGION.amazonaws.com:443 (default {DEFAULT_KMS_ROUTE})",
    )
    g.add_argument(
        "--kms-credentials",
        default=DEFAULT_CREDENTIALS,
        metavar="ADDR",
        help=f"parent credentials endpoint (default {DEFAULT_CREDENTIALS})",
    )
    g.add_argument(
        "--sealed-key-store",
        default=DEFAULT_STORE,
        metavar="ADDR",
        help=f"parent's write-once blob store (default {DEFAULT_STORE})",
    )
    g.add_argument(
        "--kms-ca-bundle", type=Path, metavar="PEM", help="CAs for KMS (default: certifi's)"
    )


def _sealed_key(args: argparse.Namespace) -> SealedKeyOptions | None:
    from enclave_net.address import parse_address
    from oracle_example.sealed import SealedKeyOptions

    if args.sealed_key is None:
        if args.kms_region is not None:
            raise ValueError("--kms-region needs --sealed-key KEY_ID")
        return None
    if args.kms_region is None:
        raise ValueError("--sealed-key needs --kms-region")
    return SealedKeyOptions(
        key_id=args.sealed_key,
        region=args.kms_region,
        kms_route=parse_address(args.kms_route),
        credentials=parse_address(args.kms_credentials),
        store=parse_address(args.sealed_key_store),
        ca_bundle=args.kms_ca_bundle,
    )


def _run_enclave(args: argparse.Namespace) -> int:
    from enclave_net.jsonlog import json_logging

    with json_logging(args.log_level, names=("enclave_net", "oracle_example")):
        return _enclave(args)


def _enclave(args: argparse.Namespace) -> int:
    from enclave_net.address import parse_address
    from enclave_net.egress import EgressConfig, forbid_dns
    from nsm.client import Nsm
    from nsm.errors import NsmError
    from oracle_example.api import serve
    from oracle_example.config import OracleConfig
    from oracle_example.oracle import EnclaveOptions, Oracle, default_routes

    log = logging.getLogger("oracle_example.cli")
    if args.clock_offset and not args.dev:
        print("nitro-oracle enclave: --clock-offset needs --dev", file=sys.stderr)
        return 2
    config = (
        OracleConfig.from_json(json.loads(args.config.read_text()))
        if args.config
        else OracleConfig()
    )
    routes = args.route or ([] if args.connect else list(default_routes(config)))
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
        sealed_key=_sealed_key(args),
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
        except (OracleExampleError, EnclaveNetError, NsmError) as exc:
            log.error("cannot open the NSM: %s", exc)
            return 2
        with module:
            oracle = Oracle(module, options, emulated=emulated)
            try:
                oracle.boot()
            except OracleExampleError as exc:
                log.error("boot refused: %s", exc, extra={"fields": {"code": exc.code}})
                return 2

            async def main() -> None:
                stop = asyncio.Event()
                stop_on_signals(stop)
                await serve(oracle, options.listen, stop)

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
        "--min-sources",
        type=int,
        default=None,
        metavar="N",
        help="fewest sources to accept (default 3, the enclave's default quorum)",
    )
    p.add_argument("--max-age", type=float, default=120.0, metavar="SECONDS", help="report age")
    p.add_argument("--allow-debug", action="store_true", help="accept debug documents (unsafe)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per HTTP request")
    p.add_argument("--json", action="store_true", help="print the verified report as JSON")
    p.set_defaults(func=_run_get)


def _run_get(args: argparse.Namespace) -> int:
    from attestation import Verifier, load_pem_roots
    from oracle_example.client import failure_json, get_report, result_json, summary
    from oracle_example.config import OracleConfig
    from oracle_example.errors import ClientError, ReportVerificationError

    if not args.pcr:
        raise UsageError("pin at least PCR0 with --pcr 0=HEX")
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
        hint = _GET_HINTS.get(exc.code)
        if args.json:
            print(dump(failure_json(args.feed, exc, hint=hint)))
        else:
            print(f"{args.feed}  NOT VERIFIED: {exc} [{exc.code}]")
            if hint:
                print(f"hint: {hint}")
        return 2 if isinstance(exc, ClientError) else 1
    if args.json:
        print(dump(result_json(result)))
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
        "Uses live exchanges when they answer, else a local HTTPS replay (said loudly). The "
        "enclave runs with --sealed-key against a KMS double and is restarted once: the signer "
        "address must stay the same.",
    )
    p.add_argument("--out", type=Path, default=Path("oracle-demo"), metavar="DIR")
    p.add_argument("--seed", type=int, default=None, help="deterministic emulator PKI and PCRs")
    p.add_argument("--replay", action="store_true", help="skip the live probe, use the replay")
    p.add_argument(
        "--no-netns", action="store_true", help="run the enclave as a plain process even as root"
    )
    p.add_argument(
        "--no-sealed-key",
        action="store_true",
        help="a new key every boot, no KMS double and no restart step",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from oracle_example.demo import run_demo

    return run_demo(
        args.out,
        seed=args.seed,
        force_replay=args.replay,
        netns=False if args.no_netns else None,
        sealed_key=not args.no_sealed_key,
    )


# --- doctor ---------------------------------------------------------------------------------------


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from enclave_net.doctor import add_arguments

    p = sub.add_parser(
        "doctor",
        help="check every link of the egress path, with the oracle's exchange probes",
        description="`enclave-net doctor` with the oracle's probes: each exchange's time "
        "endpoint (documented JSON, server clock) and the freshness of its ticker. Each line "
        "is ok / warn / fail with a cause and a remedy; exit status 1 if anything failed.",
    )
    add_arguments(p)
    p.add_argument(
        "--oracle-config",
        type=Path,
        metavar="JSON",
        help="the OracleConfig whose sources to probe (default: the built-in one)",
    )
    p.add_argument(
        "--max-source-age",
        type=float,
        metavar="SECONDS",
        help="fail when an exchange's own ticker timestamp is older than this "
        "(default: the config's maxSourceAgeMs, 30)",
    )
    p.set_defaults(func=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from enclave_net.doctor import run
    from oracle_example.config import OracleConfig
    from oracle_example.probes import oracle_probes

    config = (
        OracleConfig.from_json(json.loads(args.oracle_config.read_text()))
        if args.oracle_config
        else OracleConfig()
    )
    max_age = None if args.max_source_age is None else timedelta(seconds=args.max_source_age)
    return run(args, probes=oracle_probes(config, max_age=max_age))


# --- wiring ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from oracle_example.relay import add_chain_commands

    parser = CliParser(
        prog="nitro-oracle",
        description="The reference Nitro enclave price oracle. Networking tools (egress "
        "proxy, gateway, fetch) are `enclave-net`'s.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
    _add_enclave(sub)
    _add_get(sub)
    _add_doctor(sub)
    _add_demo(sub)
    # deploy, register, relay; errors are handled centrally by run_command, so no guard
    add_chain_commands(sub, pcr=_pcr)
    epilog_everywhere(parser, _EXIT_CODES)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(
        build_parser(), argv, errors=(OracleExampleError, EnclaveNetError, OSError, ValueError)
    )


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
