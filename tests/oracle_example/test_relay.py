"""`register` (verify, then register) and `relay` (simulate, then submit) against a real anvil.

Attestation documents are signed by the emulator's synthetic PKI (attestation.testing), as the
other oracle tests do: the registry tool accepts that root only when told to (`--root`).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import coincurve
import pytest

from attestation import Policy, Verifier, load_pem_roots
from attestation.testing import DocumentFactory, default_pcrs
from oracle_example._cli import main
from oracle_example.binding import Binding, public_key_bytes
from oracle_example.chain import Anvil, RevertError, Wallet
from oracle_example.config import OracleConfig
from oracle_example.demo_chain import ChainDeployment, chain_demo
from oracle_example.errors import ReportVerificationError
from oracle_example.eth import Eip712Domain, keccak256, to_checksum_address
from oracle_example.onchain import (
    deploy_feed,
    deploy_registry,
    feed_domain,
    verify_registration,
)
from oracle_example.oracle import expected_pcr16
from oracle_example.relay import Relay
from oracle_example.report import SignedReport
from tests.oracle_example.chain_support import sign_report

ENCLAVE_KEY = coincurve.PrivateKey(keccak256(b"relay test enclave"))
OWNER = Wallet(coincurve.PrivateKey(keccak256(b"relay test owner")))
RELAYER = Wallet(coincurve.PrivateKey(keccak256(b"relay test relayer")))


@pytest.fixture(scope="module")
def factory() -> DocumentFactory:
    # No fixed not_before: the chain is valid now, as the tools verify at the current time.
    return DocumentFactory.create(seed=11)


@pytest.fixture(scope="module")
def deployment(anvil: Anvil) -> ChainDeployment:
    for wallet in (OWNER, RELAYER):
        anvil.fund(wallet.address)
    registry = deploy_registry(anvil.rpc, OWNER)
    feed = deploy_feed(
        anvil.rpc, OWNER, registry=registry.address, symbol="BTC/USD", decimals=8, min_sources=3
    )
    return ChainDeployment(
        registry=registry,
        feed=feed,
        domain=feed_domain(anvil.chain_id, feed.address),
        symbol="BTC/USD",
    )


@pytest.fixture(scope="module")
def config(deployment: ChainDeployment) -> OracleConfig:
    return OracleConfig(min_sources=3, domains=(Eip712Domain(), deployment.domain))


def attestation(
    factory: DocumentFactory,
    config: OracleConfig,
    *,
    key: coincurve.PrivateKey = ENCLAVE_KEY,
    nonce: bytes | None = None,
    pcr16: bytes | None = None,
) -> bytes:
    pub = public_key_bytes(key)
    pcrs = default_pcrs(factory.pki.instance_id)
    pcrs[16] = expected_pcr16(config) if pcr16 is None else pcr16
    return factory.document(
        public_key=pub,
        user_data=Binding.for_key(pub, config).encode(),
        nonce=nonce,
        pcrs=pcrs,
        timestamp=datetime.now(UTC),
    )


def pin(factory: DocumentFactory) -> dict[int, bytes]:
    return {i: default_pcrs(factory.pki.instance_id)[i] for i in (0, 1, 2)}


class ChainSource:
    """The enclave as a report source: each call signs a new round one chain second later."""

    def __init__(self, anvil: Anvil, config: OracleConfig, **changes: Any) -> None:
        self.anvil = anvil
        self.config = config
        self.changes = changes
        self.calls = 0

    def latest(self, symbol: str, domain: Eip712Domain) -> SignedReport:
        self.calls += 1
        self.anvil.mine(self.anvil.rpc.block_timestamp() + 1)
        return sign_report(
            config=self.config,
            key=ENCLAVE_KEY,
            domain=domain,
            now=self.anvil.rpc.block_timestamp(),
            symbol=symbol,
            **self.changes,
        )


# --- verify_registration ------------------------------------------------------------------


def test_registration_verifies_root_pcrs_key_user_data_config_domain(
    factory: DocumentFactory, config: OracleConfig, deployment: ChainDeployment
) -> None:
    verifier = Verifier(roots=load_pem_roots(factory.root_pem))
    now = datetime.now(UTC)
    doc = attestation(factory, config)
    good = verify_registration(
        doc,
        verifier=verifier,
        policy=Policy(pcrs=pin(factory)),
        at=now,
        config=config,
        domain=deployment.domain,
    )
    assert good.signer == Wallet(ENCLAVE_KEY).address
    assert good.pcrs[16] == expected_pcr16(config)
    assert good.attestation_hash == keccak256(doc)

    def refused(document: bytes, **kw: Any) -> ReportVerificationError:
        args: dict[str, Any] = {
            "verifier": verifier,
            "policy": Policy(pcrs=pin(factory)),
            "at": now,
            "config": config,
            "domain": deployment.domain,
        }
        args.update(kw)
        with pytest.raises(ReportVerificationError) as info:
            verify_registration(document, **args)
        return info.value

    # The AWS root does not sign emulator documents.
    assert refused(doc, verifier=Verifier.aws()).step == "document"
    # Another image (PCR0).
    assert refused(doc, policy=Policy(pcrs={0: bytes(range(48))})).step == "document"
    # PCR16 that is not this config's.
    assert refused(attestation(factory, config, pcr16=b"\x07" * 48)).code == "register.pcr16"
    # An enclave running another config (so other domains).
    other = OracleConfig(min_sources=3)
    assert refused(attestation(factory, other)).code == "verify.config_hash"
    # A feed the enclave does not sign for.
    stranger = Eip712Domain(chain_id=31337, verifying_contract=b"\x05" * 20)
    assert refused(doc, domain=stranger).code == "register.domain"


# --- the CLI, through a stand-in gateway ----------------------------------------------------------


class Gateway:
    """/v1/attestation?nonce= (a fresh emulator document) and /v1/price/BTC-USD?domain=I."""

    def __init__(self, factory: DocumentFactory, config: OracleConfig) -> None:
        self.reports: dict[int, dict[str, Any]] = {}
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/v1/attestation":
                    doc = attestation(factory, config, nonce=bytes.fromhex(query["nonce"]))
                    body: dict[str, Any] = {"document": base64.b64encode(doc).decode()}
                elif parts.path == "/v1/price/BTC-USD":
                    body = gateway.reports[int(query.get("domain", "0"))]
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def gateway(factory: DocumentFactory, config: OracleConfig) -> Iterator[Gateway]:
    server = Gateway(factory, config)
    yield server
    server.close()


def test_register_cli_needs_the_root_it_is_told_to_trust(
    tmp_path: Path,
    factory: DocumentFactory,
    config: OracleConfig,
    deployment: ChainDeployment,
    gateway: Gateway,
    anvil: Anvil,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = tmp_path / "owner.key"
    key_file.write_text(OWNER.key.secret.hex())
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_json()))
    root = tmp_path / "root.pem"
    root.write_bytes(factory.root_pem)
    pins = [f"--pcr={i}={v.hex()}" for i, v in pin(factory).items()]
    args = [
        "register",
        "--rpc",
        anvil.url,
        "--registry",
        deployment.registry.checksum,
        "--feed",
        deployment.feed.checksum,
        "--config",
        str(config_file),
        "--gateway",
        gateway.url,
        "--key-file",
        str(key_file),
        *pins,
    ]
    signer = Wallet(ENCLAVE_KEY).address
    # From a file, verification only: --dry-run sends nothing.
    document = tmp_path / "attestation.cbor"
    document.write_bytes(attestation(factory, config))
    from_file = [a if a != "--gateway" else "--attestation" for a in args]
    from_file[from_file.index(gateway.url)] = str(document)
    assert main([*from_file, "--root", str(root), "--dry-run"]) == 0
    assert f"verified signer {to_checksum_address(signer)}" in capsys.readouterr().out
    assert deployment.registry.call("status", signer)[1] == 0
    # Without --root the AWS root is pinned: the emulator's document is refused, nothing sent.
    assert main(args) == 1
    assert "NOT REGISTERED" in capsys.readouterr().out
    assert deployment.registry.call("status", signer)[1] == 0
    # Told to trust the emulator root, it verifies and registers.
    assert main([*args, "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"registered {to_checksum_address(signer)}" in out
    expires, registered, revoked = deployment.registry.call("status", signer)
    assert registered > 0 and not revoked and expires > registered
    evidence = deployment.registry.call("evidence", signer)
    assert evidence[0] != b"\x00" * 32
    # Registering again (a fresh attestation, a later expiry) renews the same signer.
    anvil.mine(anvil.rpc.block_timestamp() + 5)
    assert main([*args, "--root", str(root), "--valid-for", "48"]) == 0
    assert capsys.readouterr().out.count("registered") == 1
    renewed, again, _ = deployment.registry.call("status", signer)
    assert renewed > expires and again == registered


def test_relay_cli_submits_once_then_waits_for_a_newer_round(
    tmp_path: Path,
    config: OracleConfig,
    deployment: ChainDeployment,
    gateway: Gateway,
    anvil: Anvil,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _ensure_registered(anvil, deployment)
    source = ChainSource(anvil, config)
    for index, domain in enumerate(config.domains):
        gateway.reports[index] = source.latest("BTC/USD", domain).to_json()
    key_file = tmp_path / "relayer.key"
    key_file.write_text("0x" + RELAYER.key.secret.hex())
    args = [
        "relay",
        "--rpc",
        anvil.url,
        "--feed",
        deployment.feed.checksum,
        "--gateway",
        gateway.url,
        "--key-file",
        str(key_file),
        "--once",
    ]
    assert main(args) == 0
    assert "submitted" in capsys.readouterr().out
    round_id = deployment.feed.call("latestRoundData")[0]
    assert round_id == SignedReport.from_json(gateway.reports[1]).message.round_id
    assert main(args) == 0  # the same report again: not sent
    assert "not newer" in capsys.readouterr().out


# --- the relay never sends what the contract would reject ----------------------------------------


def test_relay_simulates_and_never_sends_a_rejected_report(
    anvil: Anvil, config: OracleConfig, deployment: ChainDeployment
) -> None:
    _ensure_registered(anvil, deployment)
    thin = ChainSource(anvil, config, min_sources=2, num_sources=2)
    relay = Relay(
        feed=deployment.feed, wallet=RELAYER, source=thin, symbol="BTC/USD", heartbeat=timedelta(0)
    )
    nonce = anvil.rpc.nonce(RELAYER.address)
    outcome = relay.step()
    assert (outcome.submitted, outcome.reason) == (False, "BelowQuorum")
    assert anvil.rpc.nonce(RELAYER.address) == nonce  # no transaction was sent
    # Whatever is on-chain now, a price 5 % away from both test prices is due by deviation.
    moved = ChainSource(anvil, config, prices=("105000",) * 4)
    good = Relay(
        feed=deployment.feed,
        wallet=RELAYER,
        source=moved,
        symbol="BTC/USD",
        heartbeat=timedelta(hours=1),
        deviation_bps=50,
    )
    first = good.step()
    assert first.submitted and first.gas_used is not None
    # Same price again, heartbeat an hour away: a newer round is not due.
    assert good.step().reason == "not due"
    assert anvil.rpc.nonce(RELAYER.address) == nonce + 1


def test_relay_takes_its_publish_policy_from_the_attested_config(
    anvil: Anvil, config: OracleConfig, deployment: ChainDeployment
) -> None:
    _ensure_registered(anvil, deployment)
    relay = Relay(
        feed=deployment.feed, wallet=RELAYER, source=ChainSource(anvil, config), symbol="BTC/USD"
    )
    assert (relay.heartbeat, relay.deviation_bps) == (timedelta(seconds=60), 50)
    slow = dataclasses.replace(config, heartbeat=timedelta(hours=2), publish_deviation_bps=900)
    source = ChainSource(anvil, slow, prices=("100000",) * 4)
    relay = Relay(
        feed=deployment.feed, wallet=RELAYER, source=source, symbol="BTC/USD", config=slow
    )
    assert (relay.heartbeat, relay.deviation_bps) == (timedelta(hours=2), 900)
    nonce = anvil.rpc.nonce(RELAYER.address)
    first = relay.step()  # due or not depends on what earlier tests stored; then never again
    again = relay.step()
    assert again.reason == "not due"  # same price, heartbeat two hours away
    assert anvil.rpc.nonce(RELAYER.address) == nonce + (1 if first.submitted else 0)
    # a report signed under another config than the one the relay was given is not sent
    other = Relay(
        feed=deployment.feed,
        wallet=RELAYER,
        source=ChainSource(anvil, config, prices=("120000",) * 4),
        symbol="BTC/USD",
        config=slow,
    )
    assert other.step().reason == "other config"
    assert anvil.rpc.nonce(RELAYER.address) == nonce + (1 if first.submitted else 0)


def test_relay_refuses_to_use_the_enclave_key(
    anvil: Anvil, config: OracleConfig, deployment: ChainDeployment
) -> None:
    relay = Relay(
        feed=deployment.feed,
        wallet=Wallet(ENCLAVE_KEY),
        source=ChainSource(anvil, config),
        symbol="BTC/USD",
    )
    with pytest.raises(Exception, match="enclave key"):
        relay.step()


def _ensure_registered(anvil: Anvil, deployment: ChainDeployment) -> None:
    signer = Wallet(ENCLAVE_KEY).address
    if deployment.registry.call("status", signer)[1] == 0:
        deployment.registry.transact(
            OWNER,
            "register",
            signer,
            *(bytes([i + 1]) * 48 for i in range(4)),
            b"\x00" * 32,
            anvil.rpc.block_timestamp() + 86_400,
        )


# --- the demo's chain leg -------------------------------------------------------------------------


def test_chain_demo_registers_relays_two_rounds_and_reads_back(
    anvil: Anvil, factory: DocumentFactory
) -> None:
    from oracle_example.demo_chain import deploy_demo_feed

    demo = deploy_demo_feed(anvil.rpc, OWNER, symbol="BTC/USD", decimals=8, min_sources=3)
    config = OracleConfig(min_sources=3, domains=(Eip712Domain(), demo.domain))
    source = ChainSource(anvil, config)
    lines: list[str] = []
    verifier = Verifier(roots=load_pem_roots(factory.root_pem))
    # The wrong root first: nothing registered, nothing relayed.
    with pytest.raises(ReportVerificationError):
        chain_demo(
            demo,
            owner=OWNER,
            relayer=RELAYER,
            source=source,
            attestation=attestation(factory, config),
            verifier=Verifier.aws(),
            policy=Policy(pcrs=pin(factory)),
            config=config,
            out=lines.append,
        )
    assert source.calls == 0 and not lines
    round_id, answer, started, updated, answered = chain_demo(
        demo,
        owner=OWNER,
        relayer=RELAYER,
        source=source,
        attestation=attestation(factory, config),
        verifier=verifier,
        policy=Policy(pcrs=pin(factory)),
        config=config,
        out=lines.append,
    )
    assert answer == 10_000_025_000_000 and round_id == answered and started == updated
    assert [line.split()[0] for line in lines] == [
        "registered",
        "relayed",
        "relayed",
        "latestRoundData()",
    ]
    with pytest.raises(RevertError, match="RoundNotFound"):
        demo.feed.call("getRoundData", round_id + 1)


def test_deploy_cli_prints_the_domain_the_config_needs(
    tmp_path: Path, anvil: Anvil, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "owner.key"
    key_file.write_text(OWNER.key.secret.hex())
    args = ["deploy", "--rpc", anvil.url, "--key-file", str(key_file), "--symbol", "ETH/USD"]
    assert main([*args, "--min-sources", "4", "--history", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    feed_address = bytes.fromhex(out[1].split()[1][2:])
    domain = Eip712Domain.from_json(json.loads(out[2].split(": ", 1)[1]))
    assert domain == feed_domain(anvil.chain_id, feed_address)
    from oracle_example.chain import Contract
    from oracle_example.onchain import artifacts

    feed = Contract(anvil.rpc, feed_address, artifacts()["PriceFeed"].abi)
    assert feed.call("description") == ("ETH / USD",)
    assert feed.call("MIN_SOURCES") == (4,)
    assert feed.call("FEED_ID") == (keccak256(b"ETH/USD"),)
    # A history of 0 is refused by the constructor, by name.
    assert main([*args, "--history", "0"]) == 2
    assert "BadConstructorArgument" in capsys.readouterr().err


def test_a_new_domain_is_a_new_config_hash_and_pcr16(config: OracleConfig) -> None:
    # A feed added later is a config change: a new PCR16, a new attestation, a new registration.
    extra = Eip712Domain(chain_id=8453, verifying_contract=b"\x09" * 20)
    grown = OracleConfig(min_sources=3, domains=(*config.domains, extra))
    assert grown.config_hash != config.config_hash
    assert expected_pcr16(grown) != expected_pcr16(config)
    assert grown.domains_hash != config.domains_hash
