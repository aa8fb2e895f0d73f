"""The oracle's contracts from Python: deploy, register a verified enclave signer, submit reports.

- `deploy_registry` / `deploy_feed`: `OracleRegistry` and one `PriceFeed` per feed symbol.
- `verify_registration`: what the registry owner checks before registering a signer (the
  attestation from the AWS root to user_data, with this project's verifier; the config and
  PCR16 it implies; that the enclave signs for this feed's EIP-712 domain).
- `register_signer`: the owner's transaction.
- `submit_args`: a `SignedReport` as `PriceFeed.submit` takes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from oracle_example.binding import AttestedDocument, Binding, DocumentVerifier, verify_attestation
from oracle_example.chain import ChainError, Contract, RpcClient, Wallet
from oracle_example.config import OracleConfig
from oracle_example.errors import ReportVerificationError
from oracle_example.eth import Eip712Domain, keccak256
from oracle_example.oracle import expected_pcr16
from oracle_example.report import PriceReport, SignedReport, domains_hash, feed_id
from oracle_example.solc import Artifact, compile_contracts

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_MAX_AGE",
    "DEFAULT_SIGNER_VALIDITY",
    "REGISTERED_PCRS",
    "Registration",
    "deploy_feed",
    "deploy_registry",
    "feed_domain",
    "register_signer",
    "submit_args",
    "verify_registration",
]

#: The PCRs a registration records: the image (0), kernel and boot (1), application (2), and the
#: runtime config the enclave extended into PCR16 at boot.
REGISTERED_PCRS = (0, 1, 2, 16)
#: Rounds `getRoundData` can still return; each costs one 22,100-gas slot at deployment.
DEFAULT_HISTORY = 64
#: Oldest acceptable observation, as Chainlink consumers bound `updatedAt` by the heartbeat.
DEFAULT_MAX_AGE = timedelta(minutes=5)
#: An enclave key lives until the enclave restarts; re-register at least daily so a key that
#: leaked through a bug stops counting on its own.
DEFAULT_SIGNER_VALIDITY = timedelta(hours=24)
_HIGH_BIT = 1 << 255


def artifacts() -> dict[str, Artifact]:
    return compile_contracts()


def deploy_registry(rpc: RpcClient, wallet: Wallet, *, owner: bytes | None = None) -> Contract:
    registry, _ = Contract.deploy(
        rpc, wallet, artifacts()["OracleRegistry"], wallet.address if owner is None else owner
    )
    return registry


def deploy_feed(
    rpc: RpcClient,
    wallet: Wallet,
    *,
    registry: bytes,
    symbol: str,
    decimals: int,
    min_sources: int,
    max_age: timedelta = DEFAULT_MAX_AGE,
    history: int = DEFAULT_HISTORY,
) -> Contract:
    """A `PriceFeed` for `symbol`; its description is the symbol, as Chainlink's ("BTC / USD")."""
    feed, _ = Contract.deploy(
        rpc,
        wallet,
        artifacts()["PriceFeed"],
        registry,
        feed_id(symbol),
        decimals,
        symbol.replace("/", " / "),
        min_sources,
        int(max_age.total_seconds()),
        history,
    )
    return feed


def feed_domain(chain_id: int, feed_address: bytes) -> Eip712Domain:
    """The EIP-712 domain `PriceFeed` verifies under: its chain id and its own address."""
    return Eip712Domain(chain_id=chain_id, verifying_contract=feed_address)


def submit_args(report: SignedReport) -> tuple[tuple[Any, ...], bytes, bytes, bytes]:
    """(report struct, signer, r, vs) for `PriceFeed.submit`; vs is EIP-2098's compact s."""
    message = report.message
    if not isinstance(message, PriceReport):
        raise ChainError("only a PriceReport goes on-chain; an OracleError is for monitors")
    struct = tuple(getattr(message, attr) for attr, _, _ in PriceReport.FIELDS)
    signature = report.signature
    s = int.from_bytes(signature[32:64], "big")
    vs = s | (_HIGH_BIT if signature[64] == 28 else 0)
    return struct, report.recover(), signature[:32], vs.to_bytes(32, "big")


@dataclass(frozen=True, kw_only=True)
class Registration:
    """A signer the owner verified, and what goes on-chain for it."""

    signer: bytes
    pcrs: Mapping[int, bytes]
    attestation_hash: bytes
    """keccak256 of the attestation document's bytes (the COSE_Sign1 as the NSM returned it)."""
    binding: Binding
    document: AttestedDocument


def _refuse(code: str, message: str) -> ReportVerificationError:
    return ReportVerificationError(message, step="registration", code=code)


def verify_registration(
    document_bytes: bytes,
    *,
    verifier: DocumentVerifier,
    policy: Any,
    at: datetime,
    config: OracleConfig | None = None,
    domain: Eip712Domain | None = None,
) -> Registration:
    """Everything the registry owner checks before `register_signer`, or a typed refusal.

    1. `verify_attestation`: AWS root (or the root the owner pinned) -> certificate chain ->
       COSE signature -> policy (PCRs, age, nonce, no debug) -> public_key -> user_data.
    2. With `config`: the config hash and the domain list in user_data are this config's, and
       PCR16 is the config hash extended into a fresh PCR (the enclave does that at boot).
    3. With `domain`: the enclave signs for it (it is in `config.domains` and the attested
       domainsHash is that list's), so its reports can verify on this feed.
    """
    doc, address, binding = verify_attestation(
        document_bytes, verifier=verifier, policy=policy, at=at, config=config
    )
    pcrs = {i: doc.pcrs.get(i) for i in REGISTERED_PCRS}
    missing = [i for i, v in pcrs.items() if v is None or len(v) != 48]
    if missing:
        raise _refuse("register.pcrs", f"the document lacks 48-byte PCR(s) {missing}")
    if config is not None and pcrs[16] != expected_pcr16(config):
        raise _refuse("register.pcr16", "PCR16 is not this config's hash extended at boot")
    if domain is not None:
        if config is None:
            raise _refuse("register.domain", "checking the domain needs the enclave's config")
        if domain not in config.domains or domains_hash(config.domains) != binding.domains_hash:
            raise _refuse(
                "register.domain",
                f"the enclave does not sign for chain {domain.chain_id} contract "
                f"0x{domain.verifying_contract.hex()}: add it to the config's domains",
            )
    return Registration(
        signer=address,
        pcrs={i: v for i, v in pcrs.items() if v is not None},
        attestation_hash=keccak256(document_bytes),
        binding=binding,
        document=doc,
    )


def register_signer(
    registry: Contract, owner: Wallet, registration: Registration, *, expires_at: int
) -> dict[str, Any]:
    """The owner's `OracleRegistry.register` transaction; its receipt."""
    return registry.transact(
        owner,
        "register",
        registration.signer,
        *(registration.pcrs[i] for i in REGISTERED_PCRS),
        registration.attestation_hash,
        expires_at,
    )
