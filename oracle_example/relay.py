"""`nitro-oracle deploy | register | relay`: the parent-side chain tools, and the demo leg.

- `deploy` (the registry owner): `OracleRegistry` and a `PriceFeed`; prints the feed's EIP-712
  domain for the enclave config.
- `register` (the registry owner): fetch a fresh nonce-bound attestation from the gateway (or
  read one from a file), verify it with this project's verifier from the pinned root to
  user_data (`onchain.verify_registration`), and only then send `OracleRegistry.register`.
- `relay` (anyone): poll the gateway for the report signed under the feed's EIP-712 domain and
  submit it when it is due (a newer round, and the price moved `--deviation-bps` or the
  `--heartbeat` passed), with its own transaction key, never the enclave's. Every submission is
  first simulated with `eth_call`; a report the contract would reject is logged with the
  contract's error name and never sent.

`add_chain_commands(subparsers)` adds the three to the `nitro-oracle` parser; `chain_demo` is the
demo's chain leg (deploy, register, relay two rounds, read `latestRoundData`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from oracle_example.aggregate import should_publish
from oracle_example.chain import (
    ChainError,
    Contract,
    RevertError,
    RpcClient,
    Wallet,
    gas_used,
)
from oracle_example.client import NONCE_BYTES, http_get
from oracle_example.config import OracleConfig
from oracle_example.errors import ClientError, OracleExampleError
from oracle_example.eth import Eip712Domain, to_checksum_address
from oracle_example.onchain import (
    DEFAULT_HISTORY,
    DEFAULT_MAX_AGE,
    artifacts,
    deploy_feed,
    deploy_registry,
    feed_domain,
    register_signer,
    submit_args,
    verify_registration,
)
from oracle_example.report import OracleError, PriceReport, SignedReport

__all__ = [
    "GatewaySource",
    "OnChainRound",
    "Relay",
    "RelayOutcome",
    "ReportSource",
    "add_chain_commands",
]

log = logging.getLogger(__name__)

#: Simulated-then-sent attempts per report; a transport error or a dropped transaction is retried
#: after a pause that doubles, a revert is not (the state changed: the report is no longer due).
DEFAULT_RETRIES = 3
_RETRY_PAUSE_S = 1.0


class ReportSource(Protocol):
    def latest(self, symbol: str, domain: Eip712Domain) -> SignedReport:
        """The latest report for `symbol`, signed under `domain`."""
        ...


class GatewaySource:
    """Reports from the parent's gateway (`GET /v1/price/BASE-QUOTE?domain=I`)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._index: dict[Eip712Domain, int] = {}

    def latest(self, symbol: str, domain: Eip712Domain) -> SignedReport:
        path = "/v1/price/" + quote(symbol.replace("/", "-"))
        index = self._index.get(domain, 0)
        answer = http_get(self.url, f"{path}?domain={index}", timeout=self.timeout)
        report = SignedReport.from_json(answer)
        if report.domain != domain:
            if domain not in report.domains:
                raise ChainError(
                    f"the enclave does not sign for chain {domain.chain_id} contract "
                    f"{to_checksum_address(domain.verifying_contract)}"
                )
            self._index[domain] = report.domains.index(domain)
            return self.latest(symbol, domain)
        return report


@dataclass(frozen=True)
class OnChainRound:
    round_id: int
    answer: int
    updated_at: int


@dataclass(frozen=True)
class RelayOutcome:
    """What one relay step did: `submitted` with the receipt's gas, or why it did not."""

    submitted: bool
    reason: str
    round_id: int | None = None
    gas_used: int | None = None


class Relay:
    """Submits due reports for one `PriceFeed`. Needs no trust: the contract checks everything.

    Due means `aggregate.should_publish` (the one implementation of the publish policy): a newer
    round whose price moved `deviation_bps` from the stored one, or `heartbeat` after it. With
    `config` (the enclave's attested config) both come from its `heartbeat` and
    `publishDeviationBps` unless given, and a report signed under another config is not sent.
    """

    def __init__(
        self,
        *,
        feed: Contract,
        wallet: Wallet,
        source: ReportSource,
        symbol: str,
        heartbeat: _dt.timedelta | None = None,
        deviation_bps: int | None = None,
        config: OracleConfig | None = None,
        retries: int = DEFAULT_RETRIES,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        policy = config or OracleConfig()
        self.feed = feed
        self.wallet = wallet
        self.source = source
        self.symbol = symbol
        self.config_hash = None if config is None else config.config_hash
        self.heartbeat = policy.heartbeat if heartbeat is None else heartbeat
        self.deviation_bps = (
            policy.publish_deviation_bps if deviation_bps is None else deviation_bps
        )
        self.retries = retries
        self._pause = pause
        self.domain = feed_domain(feed.rpc.chain_id(), feed.address)

    def latest_on_chain(self) -> OnChainRound | None:
        try:
            round_id, answer, _, updated_at, _ = self.feed.call("latestRoundData")
        except RevertError as exc:
            if exc.name == "RoundNotFound":
                return None
            raise
        return OnChainRound(round_id=round_id, answer=answer, updated_at=updated_at)

    def step(self) -> RelayOutcome:
        """Fetch the latest report; submit it if due and the contract would accept it."""
        report = self.source.latest(self.symbol, self.domain)
        message = report.message
        if isinstance(message, OracleError):
            return RelayOutcome(
                submitted=False,
                reason=f"OracleError code {message.code}",
                round_id=message.round_id,
            )
        if report.recover() == self.wallet.address:
            raise ChainError("the relay key is the enclave key: use a separate transaction key")
        if self.config_hash is not None and message.config_hash != self.config_hash:
            return RelayOutcome(submitted=False, reason="other config", round_id=message.round_id)
        latest = self.latest_on_chain()
        if latest is not None:
            if message.round_id <= latest.round_id:
                return RelayOutcome(submitted=False, reason="not newer", round_id=message.round_id)
            if not should_publish(
                last_price=latest.answer,
                last_timestamp=latest.updated_at,
                price=message.price,
                timestamp=message.observations_timestamp,
                deviation_bps=self.deviation_bps,
                heartbeat=self.heartbeat,
            ):
                return RelayOutcome(submitted=False, reason="not due", round_id=message.round_id)
        return self._submit(report, message)

    def _submit(self, report: SignedReport, message: PriceReport) -> RelayOutcome:
        args = submit_args(report)
        pause = _RETRY_PAUSE_S
        for attempt in range(1, self.retries + 1):
            try:
                # The simulation: the contract's own checks, on the pending block.
                self.feed.call("submit", *args, sender=self.wallet.address)
                receipt = self.feed.transact(self.wallet, "submit", *args)
            except RevertError as exc:
                log.warning("round %d not submitted: %s", message.round_id, exc)
                return RelayOutcome(
                    submitted=False, reason=exc.name or str(exc), round_id=message.round_id
                )
            except ChainError as exc:
                log.warning("round %d attempt %d failed: %s", message.round_id, attempt, exc)
                if attempt == self.retries:
                    return RelayOutcome(
                        submitted=False, reason=f"gave up: {exc}", round_id=message.round_id
                    )
                self._pause(pause)
                pause *= 2
                continue
            used = gas_used(receipt)
            log.info("round %d submitted, %d gas", message.round_id, used)
            return RelayOutcome(
                submitted=True, reason="submitted", round_id=message.round_id, gas_used=used
            )
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


# --- CLI ------------------------------------------------------------------------------------------


def _address(text: str) -> bytes:
    from oracle_example.eth import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _wallet(args: argparse.Namespace) -> Wallet:
    """The transaction key from --key-file, else $NITRO_ORACLE_TX_KEY; never printed."""
    if args.key_file is not None:
        text = Path(args.key_file).read_text(encoding="ascii")
    else:
        text = os.environ.get("NITRO_ORACLE_TX_KEY", "")
        if not text:
            raise ChainError("give the transaction key: --key-file FILE or $NITRO_ORACLE_TX_KEY")
    return Wallet.from_hex(text)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", required=True, metavar="URL", help="the chain's JSON-RPC endpoint")
    p.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="hex transaction key (default: $NITRO_ORACLE_TX_KEY); never the enclave's key",
    )
    p.add_argument("--rpc-timeout", type=float, default=10.0, metavar="SECONDS")


_Run = Callable[[argparse.Namespace], int]


def add_chain_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    pcr: Callable[[str], tuple[int, bytes]],
    guard: Callable[[_Run], _Run] | None = None,
) -> None:
    """Add `deploy`, `register` and `relay` to the `nitro-oracle` parser.

    `pcr` parses `--pcr I=HEX`; `guard`, if given, wraps each command (the CLI's error-to-exit-2
    wrapper). Both are the CLI's own, passed in, so this module never imports the CLI.
    """
    _pcr = pcr

    def _guarded(run: _Run) -> _Run:
        return run if guard is None else guard(run)

    p = sub.add_parser(
        "deploy",
        help="deploy OracleRegistry (unless --registry) and a PriceFeed; print the feed's domain",
        description="Deploys with the owner key. Add the printed domain to the enclave config's "
        "`domains` before the enclave boots: the domain list is in the config hash (PCR16), so "
        "the enclave signs for exactly the feeds it was attested for.",
    )
    _add_common(p)
    p.add_argument("--symbol", required=True, metavar="BASE/QUOTE", help="e.g. BTC/USD")
    p.add_argument("--registry", type=_address, metavar="ADDRESS", help="reuse this registry")
    p.add_argument("--decimals", type=int, default=8)
    p.add_argument("--min-sources", type=int, default=3, metavar="N", help="the feed's quorum")
    p.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE.total_seconds(),
        metavar="SECONDS",
        help="oldest observation accepted",
    )
    p.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="ROUNDS")
    p.set_defaults(func=_guarded(_run_deploy))

    p = sub.add_parser(
        "register",
        help="verify an enclave's attestation, then register its signer in OracleRegistry",
        description="Verifies root -> certificate chain -> document -> PCRs (pinned with --pcr) "
        "-> public_key -> user_data -> config hash, domains and PCR16 (--config), and that the "
        "enclave signs for --feed's domain; only then sends OracleRegistry.register from the "
        "owner key. Exit 0: registered (or verified, with --dry-run); 1: verification refused; "
        "2: bad arguments or chain errors.",
    )
    _add_common(p)
    p.add_argument("--registry", required=True, type=_address, metavar="ADDRESS")
    p.add_argument(
        "--feed", type=_address, metavar="ADDRESS", help="check the enclave signs for it"
    )
    p.add_argument("--config", required=True, type=Path, metavar="JSON", help="the enclave config")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gateway", metavar="URL", help="fetch a fresh nonce-bound attestation")
    source.add_argument("--attestation", type=Path, metavar="FILE", help="a document (CBOR)")
    p.add_argument("--pcr", action="append", type=_pcr, default=[], metavar="I=HEX")
    p.add_argument(
        "--root", type=Path, metavar="PEM", help="trust this root instead of AWS's (emulator)"
    )
    p.add_argument("--max-age", type=float, default=300.0, metavar="SECONDS", help="document age")
    p.add_argument("--valid-for", type=float, default=24.0, metavar="HOURS", help="signer expiry")
    p.add_argument("--dry-run", action="store_true", help="verify only, send nothing")
    p.set_defaults(func=_guarded(_run_register))

    p = sub.add_parser(
        "relay",
        help="submit the enclave's due reports to a PriceFeed (permissionless)",
        description="Polls the gateway for the report signed under the feed's EIP-712 domain; "
        "submits a newer round when the price moved --deviation-bps or --heartbeat passed "
        "(by default the publishDeviationBps and heartbeat of --config, the attested config). "
        "Each submission is simulated first; a report the contract would reject is never sent.",
    )
    _add_common(p)
    p.add_argument("--feed", required=True, type=_address, metavar="ADDRESS")
    p.add_argument("--gateway", required=True, metavar="URL", help="http://HOST:PORT")
    p.add_argument("--symbol", metavar="BASE/QUOTE", help="default: the feed's description")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="the enclave's config: its publish policy"
    )
    p.add_argument("--heartbeat", type=float, metavar="SECONDS", help="override the config's")
    p.add_argument("--deviation-bps", type=int, metavar="BPS", help="override the config's")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N")
    p.add_argument("--once", action="store_true", help="one step, then exit")
    p.set_defaults(func=_guarded(_run_relay))


def _run_deploy(args: argparse.Namespace) -> int:
    import json

    rpc = RpcClient(args.rpc, timeout=args.rpc_timeout)
    owner = _wallet(args)
    registry = args.registry or deploy_registry(rpc, owner).address
    feed = deploy_feed(
        rpc,
        owner,
        registry=registry,
        symbol=args.symbol,
        decimals=args.decimals,
        min_sources=args.min_sources,
        max_age=_dt.timedelta(seconds=args.max_age),
        history=args.history,
    )
    print(f"OracleRegistry {to_checksum_address(registry)}")
    print(f"PriceFeed {feed.checksum} ({args.symbol})")
    print(
        "domain for the enclave config: "
        + json.dumps(feed_domain(rpc.chain_id(), feed.address).to_json())
    )
    return 0


def _read_config(path: Path) -> OracleConfig:
    import json

    return OracleConfig.from_json(json.loads(path.read_text(encoding="utf-8")))


def _run_register(args: argparse.Namespace) -> int:

    from attestation import Policy, Verifier, load_pem_roots
    from oracle_example.errors import ReportVerificationError

    if not args.pcr:
        raise ChainError("pin at least PCR0 with --pcr 0=HEX: without it any enclave passes")
    config = _read_config(args.config)
    verifier = Verifier(roots=load_pem_roots(args.root.read_bytes())) if args.root else None
    nonce: bytes | None = None
    if args.gateway:
        nonce = os.urandom(NONCE_BYTES)
        answer = http_get(args.gateway, f"/v1/attestation?nonce={nonce.hex()}", timeout=10.0)
        try:
            document = base64.b64decode(answer["document"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ClientError("/v1/attestation: no base64 document in the answer") from exc
    else:
        document = args.attestation.read_bytes()
    rpc = RpcClient(args.rpc, timeout=args.rpc_timeout)
    domain = feed_domain(rpc.chain_id(), args.feed) if args.feed else None
    policy = Policy(pcrs=dict(args.pcr), nonce=nonce, max_age=_dt.timedelta(seconds=args.max_age))
    try:
        registration = verify_registration(
            document,
            verifier=verifier or Verifier.aws(),
            policy=policy,
            at=_dt.datetime.now(_dt.UTC),
            config=config,
            domain=domain,
        )
    except ReportVerificationError as exc:
        print(f"NOT REGISTERED: {exc} [{exc.code}]")
        return 1
    signer = to_checksum_address(registration.signer)
    print(f"verified signer {signer} (attestation 0x{registration.attestation_hash.hex()})")
    if args.dry_run:
        return 0
    registry = Contract(rpc, args.registry, artifacts()["OracleRegistry"].abi)
    expires = int(time.time() + args.valid_for * 3600)
    receipt = register_signer(registry, _wallet(args), registration, expires_at=expires)
    when = _dt.datetime.fromtimestamp(expires, _dt.UTC).isoformat()
    print(f"registered {signer} until {when} ({gas_used(receipt)} gas)")
    return 0


def _run_relay(args: argparse.Namespace) -> int:
    rpc = RpcClient(args.rpc, timeout=args.rpc_timeout)
    feed = Contract(rpc, args.feed, artifacts()["PriceFeed"].abi)
    symbol = args.symbol or str(feed.call("description")[0]).replace(" / ", "/")
    relay = Relay(
        feed=feed,
        wallet=_wallet(args),
        source=GatewaySource(args.gateway),
        symbol=symbol,
        heartbeat=None if args.heartbeat is None else _dt.timedelta(seconds=args.heartbeat),
        deviation_bps=args.deviation_bps,
        config=None if args.config is None else _read_config(args.config),
        retries=args.retries,
    )
    while True:
        try:
            outcome = relay.step()
        except OracleExampleError as exc:
            if args.once:
                raise
            log.warning("relay step failed: %s", exc)
        else:
            shown = f"round {outcome.round_id}: {outcome.reason}"
            print(shown + (f" ({outcome.gas_used} gas)" if outcome.gas_used else ""), flush=True)
            if args.once:
                return 0 if outcome.submitted or outcome.reason in ("not newer", "not due") else 1
        time.sleep(args.interval)
