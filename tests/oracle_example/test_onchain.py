"""The contracts on a real EVM (anvil), fed by reports the enclave's Python signing code made.

Reports come from the enclave's own path (chain_support.sign_report); a rejection test changes
one field of such a message before signing, so the signature is good and only the checked rule
fails. Every time is relative to the chain's latest block, never the wall clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import coincurve
import pytest

from oracle_example.chain import (
    Anvil,
    ChainError,
    Contract,
    RevertError,
    Wallet,
    abi_decode,
    abi_encode,
    rlp_encode,
)
from oracle_example.config import OracleConfig
from oracle_example.eth import Eip712Domain, keccak256
from oracle_example.onchain import (
    deploy_feed,
    deploy_registry,
    feed_domain,
    submit_args,
)
from oracle_example.report import (
    PRICE_REPORT_TYPE,
    PriceReport,
    SignedReport,
    typed_data_digest,
)
from oracle_example.solc import CompileError, compile_contracts
from tests.oracle_example.chain_support import sign_report

ENCLAVE_KEY = coincurve.PrivateKey(keccak256(b"test enclave key"))
OWNER = Wallet(coincurve.PrivateKey(keccak256(b"test registry owner")))
RELAYER = Wallet(coincurve.PrivateKey(keccak256(b"test relayer")))
PCRS = [bytes([i + 1]) * 48 for i in range(4)]
MIN_SOURCES = 3
MAX_AGE = 60


@dataclasses.dataclass
class Chain:
    anvil: Anvil
    registry: Contract
    feed: Contract
    eth_feed: Contract
    config: OracleConfig

    def now(self) -> int:
        return self.anvil.rpc.block_timestamp()


@pytest.fixture(scope="module")
def chain(anvil: Anvil) -> Iterator[Chain]:
    for wallet in (OWNER, RELAYER):
        anvil.fund(wallet.address)
    registry = deploy_registry(anvil.rpc, OWNER)

    def feed(symbol: str) -> Contract:
        return deploy_feed(
            anvil.rpc,
            OWNER,
            registry=registry.address,
            symbol=symbol,
            decimals=8,
            min_sources=MIN_SOURCES,
            max_age=timedelta(seconds=MAX_AGE),
            history=8,
        )

    btc, eth = feed("BTC/USD"), feed("ETH/USD")
    config = OracleConfig(
        min_sources=MIN_SOURCES,
        domains=(
            Eip712Domain(),
            feed_domain(anvil.chain_id, btc.address),
            feed_domain(anvil.chain_id, eth.address),
        ),
    )
    yield Chain(anvil=anvil, registry=registry, feed=btc, eth_feed=eth, config=config)


def register(chain: Chain, key: coincurve.PrivateKey, *, lifetime: int = 86_400) -> bytes:
    signer = Wallet(key).address
    chain.registry.transact(
        OWNER, "register", signer, *PCRS, keccak256(b"document"), chain.now() + lifetime
    )
    return signer


@pytest.fixture(scope="module")
def enclave_signer(chain: Chain) -> bytes:
    return register(chain, ENCLAVE_KEY)


def make_report(
    chain: Chain,
    *,
    key: coincurve.PrivateKey = ENCLAVE_KEY,
    domain: Eip712Domain | None = None,
    **kw: Any,
) -> SignedReport:
    """A report for the BTC feed's domain unless told otherwise, one chain second later.

    A block one second later is mined first, so consecutive reports observe strictly later.
    """
    chain.anvil.mine(chain.now() + 1)
    target = domain or feed_domain(chain.anvil.chain_id, chain.feed.address)
    return sign_report(config=chain.config, key=key, domain=target, now=chain.now(), **kw)


def submit(chain: Chain, report: SignedReport, feed: Contract | None = None) -> dict[str, Any]:
    return (feed or chain.feed).transact(RELAYER, "submit", *submit_args(report))


def rejected(chain: Chain, report: SignedReport, feed: Contract | None = None) -> RevertError:
    before = (feed or chain.feed).call("latestRoundData") if has_round(chain) else None
    with pytest.raises(RevertError) as info:
        submit(chain, report, feed)
    if before is not None:
        assert chain.feed.call("latestRoundData") == before  # nothing stored
    return info.value


def has_round(chain: Chain) -> bool:
    try:
        chain.feed.call("latestRoundData")
    except RevertError:
        return False
    return True


# --- cross-checks of the plumbing -------------------------------------------------------------


def test_contract_typehash_and_digest_are_the_enclaves(chain: Chain) -> None:
    (typehash,) = chain.feed.call("PRICE_REPORT_TYPEHASH")
    assert typehash == keccak256(PRICE_REPORT_TYPE.encode())
    report = make_report(chain)
    struct, _, _, _ = submit_args(report)
    (digest,) = chain.feed.call("digest", struct)
    assert digest == report.digest == typed_data_digest(report.message, report.domain)


@pytest.mark.crosscheck
def test_abi_encoding_matches_eth_abi() -> None:
    # eth-abi comes with eth-account: the cross-check environment only (make test-newest has none).
    from eth_abi.abi import encode as eth_abi_encode

    params: list[dict[str, Any]] = [
        {"type": "address"},
        {"type": "bytes"},
        {"type": "string"},
        {"type": "int256"},
        {"type": "tuple", "components": [{"type": "uint8"}, {"type": "bytes32"}]},
    ]
    values = [b"\x07" * 20, b"\x01\x02\x03", "BTC / USD", -5, (8, b"\x11" * 32)]
    ours = abi_encode(params, values)
    assert ours == eth_abi_encode(
        ["address", "bytes", "string", "int256", "(uint8,bytes32)"],
        ["0x" + "07" * 20, b"\x01\x02\x03", "BTC / USD", -5, (8, b"\x11" * 32)],
    )
    assert abi_decode(params, ours) == (
        b"\x07" * 20,
        b"\x01\x02\x03",
        "BTC / USD",
        -5,
        (8, b"\x11" * 32),
    )
    with pytest.raises(ChainError, match="does not fit"):
        abi_encode([{"type": "uint8"}], [256])


@pytest.mark.crosscheck
def test_transaction_signature_matches_eth_account() -> None:
    import rlp  # type: ignore[import-untyped]
    from eth_account import Account

    raw = OWNER.sign_1559(
        chain_id=31337,
        nonce=7,
        max_priority_fee=10**9,
        max_fee=3 * 10**9,
        gas=100_000,
        to=b"\x42" * 20,
        value=0,
        data=b"\xde\xad",
    )
    expected = Account.sign_transaction(
        {
            "type": 2,
            "chainId": 31337,
            "nonce": 7,
            "maxPriorityFeePerGas": 10**9,
            "maxFeePerGas": 3 * 10**9,
            "gas": 100_000,
            "to": "0x" + "42" * 20,
            "value": 0,
            "data": b"\xde\xad",
            "accessList": [],
        },
        OWNER.key.secret,
    )
    assert raw == bytes(expected.raw_transaction)
    # Long strings and lists take the length-of-length form (>= 56 bytes).
    item: list[Any] = [b"", 0, 1024, b"\x7f", b"\x80", b"a" * 56, [b"b" * 60]]
    assert rlp_encode(item) == rlp.encode(item)


# --- the accepted path ----------------------------------------------------------------------------


def test_enclave_report_is_accepted_and_read_through_aggregator_v3(
    chain: Chain, enclave_signer: bytes
) -> None:
    report = make_report(chain)
    message = report.message
    assert isinstance(message, PriceReport)
    receipt = submit(chain, report)
    assert int(receipt["status"], 16) == 1
    round_id, answer, started, updated, answered = chain.feed.call("latestRoundData")
    assert (round_id, answer, answered) == (message.round_id, message.price, message.round_id)
    assert started == updated == message.observations_timestamp
    assert answer == 10_000_025_000_000  # median of the four, 8 decimals
    assert chain.feed.call("getRoundData", message.round_id) == (
        round_id,
        answer,
        started,
        updated,
        answered,
    )
    assert chain.feed.call("decimals") == (8,)
    assert chain.feed.call("description") == ("BTC / USD",)
    assert chain.feed.call("version") == (1,)
    # The Chainlink event, with the answer and the round indexed.
    (log,) = receipt["logs"]
    assert int(log["topics"][1], 16) == message.price
    assert int(log["topics"][2], 16) == message.round_id


def test_history_is_a_ring_and_old_rounds_end_as_round_not_found(
    chain: Chain, enclave_signer: bytes
) -> None:
    first = make_report(chain)
    submit(chain, first)
    for _ in range(8):  # history=8: the ninth newer round takes the first one's slot
        submit(chain, make_report(chain))
    with pytest.raises(RevertError) as info:
        chain.feed.call("getRoundData", first.message.round_id)
    assert info.value.name == "RoundNotFound"
    with pytest.raises(RevertError) as info:
        chain.feed.call("getRoundData", 0)
    assert info.value.name == "RoundNotFound"


# --- every rejection, by name ---------------------------------------------------------------------


def test_unregistered_signer(chain: Chain, enclave_signer: bytes) -> None:
    stranger = coincurve.PrivateKey(keccak256(b"not registered"))
    error = rejected(chain, make_report(chain, key=stranger))
    assert error.name == "UnknownSigner"
    assert error.args_ == (Wallet(stranger).address,)


def test_expired_signer(chain: Chain, enclave_signer: bytes) -> None:
    key = coincurve.PrivateKey(keccak256(b"short-lived enclave"))
    register(chain, key, lifetime=30)
    chain.anvil.mine(chain.now() + 31)
    error = rejected(chain, make_report(chain, key=key))
    assert error.name == "SignerExpired"


def test_revoked_signer(chain: Chain, enclave_signer: bytes) -> None:
    key = coincurve.PrivateKey(keccak256(b"revoked enclave"))
    signer = register(chain, key)
    chain.registry.transact(OWNER, "revoke", signer)
    assert rejected(chain, make_report(chain, key=key)).name == "SignerRevoked"
    with pytest.raises(RevertError) as info:
        chain.registry.transact(OWNER, "revoke", signer)
    assert info.value.name == "AlreadyRevoked"
    # Revoked stays revoked: no renewal brings the signer back.
    with pytest.raises(RevertError) as info:
        register(chain, key)
    assert info.value.name == "AlreadyRevoked"


def test_wrong_chain_id(chain: Chain, enclave_signer: bytes) -> None:
    domain = feed_domain(1, chain.feed.address)  # mainnet, same contract address
    error = rejected(chain, make_report(chain, domain=domain))
    assert error.name == "SignatureMismatch"
    assert error.args_[1] == enclave_signer


def test_wrong_verifying_contract(chain: Chain, enclave_signer: bytes) -> None:
    # Signed for the ETH feed's contract, submitted to the BTC feed: same chain, other address.
    domain = feed_domain(chain.anvil.chain_id, chain.eth_feed.address)
    assert rejected(chain, make_report(chain, domain=domain)).name == "SignatureMismatch"


def test_other_feed(chain: Chain, enclave_signer: bytes) -> None:
    eth = make_report(chain, symbol="ETH/USD", prices=("3000", "3001", "2999", "3000"))
    error = rejected(chain, eth)
    assert error.name == "WrongFeed"
    assert error.args_ == (keccak256(b"ETH/USD"), keccak256(b"BTC/USD"))


def test_replayed_and_older_rounds(chain: Chain, enclave_signer: bytes) -> None:
    older = make_report(chain)
    newer = make_report(chain)
    submit(chain, newer)
    assert rejected(chain, newer).name == "RoundNotNewer"  # the same report again
    assert rejected(chain, older).name == "RoundNotNewer"
    # A newer round id that observed no later than the stored round is refused too.
    late = make_report(chain)
    assert isinstance(newer.message, PriceReport)
    same_time = make_report(
        chain, observations_timestamp=newer.message.observations_timestamp, round_id=10**15
    )
    assert rejected(chain, same_time).name == "ObservationNotNewer"
    submit(chain, late)


def test_expired_report(chain: Chain, enclave_signer: bytes) -> None:
    report = make_report(chain)
    assert isinstance(report.message, PriceReport)
    chain.anvil.mine(report.message.expires_at + 1)
    error = rejected(chain, report)
    assert error.name == "ReportExpired"


def test_stale_report(chain: Chain, enclave_signer: bytes) -> None:
    # Unexpired (expiresAt is the enclave time + 120 s) but observed more than MAX_AGE ago.
    now = chain.now()
    report = make_report(chain, observations_timestamp=now - MAX_AGE - 5)
    error = rejected(chain, report)
    assert error.name == "StaleReport"
    assert error.args_[2] == MAX_AGE


def test_below_quorum(chain: Chain, enclave_signer: bytes) -> None:
    assert rejected(chain, make_report(chain, min_sources=2, num_sources=2)).name == "BelowQuorum"
    # A report claiming a quorum it did not meet is refused as well.
    assert rejected(chain, make_report(chain, num_sources=2)).name == "BelowQuorum"


def test_other_field_rules(chain: Chain, enclave_signer: bytes) -> None:
    now = chain.now()
    assert rejected(chain, make_report(chain, valid_from=now + 60)).name == "NotYetValid"
    assert rejected(chain, make_report(chain, decimals=18)).name == "WrongDecimals"
    assert rejected(chain, make_report(chain, price=0)).name == "InvalidPrice"
    # s above n/2 (the malleable half; EIP-2098's compact form cannot even carry a full twin)
    # and r = 0 are refused before recovery.
    report = make_report(chain)
    struct, signer, r, _ = submit_args(report)
    half_n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2
    for bad_r, bad_vs in ((r, half_n + 1), (b"\x00" * 32, 1)):
        with pytest.raises(RevertError) as info:
            chain.feed.transact(
                RELAYER, "submit", struct, signer, bad_r, bad_vs.to_bytes(32, "big")
            )
        assert info.value.name == "InvalidSignature"


def test_registry_is_owner_only_and_refuses_debug_pcrs(chain: Chain) -> None:
    signer = Wallet(coincurve.PrivateKey(keccak256(b"x"))).address
    expiry = chain.now() + 3600
    with pytest.raises(RevertError) as info:
        chain.registry.transact(RELAYER, "register", signer, *PCRS, b"\x00" * 32, expiry)
    assert info.value.name == "NotOwner"
    zeros = [bytes(48)] * 4
    with pytest.raises(RevertError) as info:
        chain.registry.transact(OWNER, "register", signer, *zeros, b"\x00" * 32, expiry)
    assert info.value.name == "AllZeroPcrs"
    with pytest.raises(RevertError) as info:
        chain.registry.transact(
            OWNER, "register", signer, b"\x01" * 32, *PCRS[1:], b"\x00" * 32, expiry
        )
    assert info.value.name == "BadPcrLength"
    assert chain.registry.call("status", signer) == (0, 0, False)


def test_solc_errors_are_typed_and_artifacts_cached(tmp_path: Path) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    head = "// SPDX-License-Identifier: Apache-2.0\npragma solidity 0.8.37;\n"
    (sources / "Broken.sol").write_text(head + "contract Broken { uint x = ; }\n")
    with pytest.raises(CompileError, match=r"Broken\.sol"):
        compile_contracts(contracts_dir=sources, build_dir=tmp_path / "build")
    (sources / "Broken.sol").write_text(head + "contract Fine { uint public x = 1; }\n")
    first = compile_contracts(contracts_dir=sources, build_dir=tmp_path / "build")
    (cached,) = (tmp_path / "build").glob("*.json")
    assert first["Fine"].bytecode and cached.stat().st_size > 0
    # The second call is served from the cache: the same artifact, no new file.
    assert compile_contracts(contracts_dir=sources, build_dir=tmp_path / "build") == first
    assert list((tmp_path / "build").glob("*.json")) == [cached]
