"""`make demo`'s chain leg: deploy on a local anvil, register the enclave's key after verifying
its attestation, relay rounds, read `latestRoundData()` back.

The same steps as `nitro-oracle deploy`, `register` and `relay` (relay.py), run in one process
against the demo's enclave; the tests use `chain_demo` with their own report source.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import coincurve

from oracle_example.chain import Anvil, ChainError, Contract, RpcClient, Wallet, gas_used
from oracle_example.config import OracleConfig
from oracle_example.errors import OracleExampleError
from oracle_example.eth import Eip712Domain, to_checksum_address
from oracle_example.onchain import (
    DEFAULT_SIGNER_VALIDITY,
    deploy_feed,
    deploy_registry,
    feed_domain,
    register_signer,
    verify_registration,
)
from oracle_example.relay import GatewaySource, Relay, ReportSource

__all__ = ["ChainDeployment", "DemoChain", "chain_demo", "deploy_demo_feed"]


@dataclass(frozen=True)
class ChainDeployment:
    registry: Contract
    feed: Contract
    domain: Eip712Domain
    symbol: str


def deploy_demo_feed(
    rpc: RpcClient, owner: Wallet, *, symbol: str, decimals: int, min_sources: int
) -> ChainDeployment:
    """Registry and feed; add `domain` to the enclave's config before it boots."""
    registry = deploy_registry(rpc, owner)
    feed = deploy_feed(
        rpc,
        owner,
        registry=registry.address,
        symbol=symbol,
        decimals=decimals,
        min_sources=min_sources,
    )
    return ChainDeployment(
        registry=registry,
        feed=feed,
        domain=feed_domain(rpc.chain_id(), feed.address),
        symbol=symbol,
    )


def chain_demo(
    deployment: ChainDeployment,
    *,
    owner: Wallet,
    relayer: Wallet,
    source: ReportSource,
    attestation: bytes,
    verifier: Any,
    policy: Any,
    config: OracleConfig,
    rounds: int = 2,
    timeout: float = 60.0,
    out: Callable[[str], None] = print,
) -> tuple[int, int, int, int, int]:
    """Register the enclave after verifying its attestation, relay `rounds` rounds, read back.

    Returns `latestRoundData()`. Raises `ReportVerificationError` if the attestation does not
    verify (nothing is registered then) and `ChainError` if rounds do not land within `timeout`.
    """
    now = _dt.datetime.now(_dt.UTC)
    registration = verify_registration(
        attestation,
        verifier=verifier,
        policy=policy,
        at=now,
        config=config,
        domain=deployment.domain,
    )
    expires = int((now + DEFAULT_SIGNER_VALIDITY).timestamp())
    receipt = register_signer(deployment.registry, owner, registration, expires_at=expires)
    out(
        f"registered signer {to_checksum_address(registration.signer)} in OracleRegistry "
        f"{deployment.registry.checksum} ({gas_used(receipt)} gas)"
    )
    # Heartbeat 0: every newer round is due, so the demo shows consecutive rounds landing.
    relay = Relay(
        feed=deployment.feed,
        wallet=relayer,
        source=source,
        symbol=deployment.symbol,
        heartbeat=_dt.timedelta(0),
    )
    landed = 0
    deadline = time.monotonic() + timeout
    while landed < rounds:
        outcome = relay.step()
        if outcome.submitted:
            landed += 1
            out(f"relayed round {outcome.round_id} to PriceFeed ({outcome.gas_used} gas)")
            continue
        if time.monotonic() > deadline:
            raise ChainError(f"only {landed} of {rounds} rounds landed: {outcome.reason}")
        time.sleep(0.5)
    data = deployment.feed.call("latestRoundData")
    round_id, answer, started, updated, answered = data
    decimals = deployment.feed.call("decimals")[0]
    when = _dt.datetime.fromtimestamp(updated, _dt.UTC).isoformat()
    out(
        f"latestRoundData() = roundId {round_id}, answer {answer} "
        f"({Decimal(answer).scaleb(-decimals)} {deployment.symbol}), updatedAt {when}"
    )
    return round_id, answer, started, updated, answered


class DemoChain:
    """`make demo`'s chain: a local anvil with a registry and a `symbol` feed, fresh keys.

    Start it before the enclave: `domain` must be in the enclave's config (and so in PCR16)
    before it boots. `close()` stops anvil. The owner and relayer keys are random per run,
    funded on the local chain only, and never printed.
    """

    def __init__(self, *, symbol: str, decimals: int, min_sources: int) -> None:
        self.anvil = Anvil()
        try:
            self.owner = Wallet(coincurve.PrivateKey())
            self.relayer = Wallet(coincurve.PrivateKey())
            for wallet in (self.owner, self.relayer):
                self.anvil.fund(wallet.address)
            self.deployment = deploy_demo_feed(
                self.anvil.rpc,
                self.owner,
                symbol=symbol,
                decimals=decimals,
                min_sources=min_sources,
            )
        except BaseException:
            self.anvil.close()
            raise

    @property
    def domain(self) -> Eip712Domain:
        return self.deployment.domain

    def run(
        self,
        *,
        gateway: str,
        attestation: bytes,
        verifier: Any,
        policy: Any,
        config: OracleConfig,
        out: Callable[[str], None],
    ) -> bool:
        """`chain_demo` against the enclave's gateway; False (said on `out`) if it failed."""
        d = self.deployment
        out(
            f"chain            anvil {self.anvil.url} (chain id {self.anvil.chain_id}): "
            f"OracleRegistry {d.registry.checksum}, PriceFeed {d.feed.checksum} ({d.symbol})"
        )
        try:
            chain_demo(
                d,
                owner=self.owner,
                relayer=self.relayer,
                source=GatewaySource(gateway),
                attestation=attestation,
                verifier=verifier,
                policy=policy,
                config=config,
                out=out,
            )
        except OracleExampleError as exc:
            out(f"chain leg FAILED: {exc}")
            return False
        return True

    def close(self) -> None:
        self.anvil.close()
