"""On-chain cost: gas per `PriceFeed.submit` (first and steady state), per registration, renewal.

    .venv/bin/python bench/onchain.py [--updates 100] [--history 64] [--json]

Starts anvil (the pinned npm package) on 127.0.0.1, deploys `OracleRegistry` and a `PriceFeed`
(BTC/USD, 8 decimals, quorum 3) compiled by the pinned solcjs, registers an enclave signer and
renews it (a second `register` with a later expiry and new evidence), and submits `--updates`
consecutive reports, each signed by the enclave's Python code for the feed's domain and sent by
a relay key as an EIP-1559 transaction. Gas is the receipt's `gasUsed`: the
whole transaction (21,000 intrinsic + calldata + execution), what the relay pays for.

"First" is the first report on a fresh feed; "steady" are the rest, which include a pass over
the whole history ring (`--updates` > `--history` makes the ring wrap at least once).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import coincurve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oracle_example.chain import Anvil, Wallet, gas_used  # noqa: E402
from oracle_example.config import OracleConfig  # noqa: E402
from oracle_example.eth import Eip712Domain, keccak256  # noqa: E402
from oracle_example.onchain import (  # noqa: E402
    deploy_feed,
    deploy_registry,
    feed_domain,
    submit_args,
)
from oracle_example.solc import SOLC_VERSION  # noqa: E402
from tests.oracle_example.chain_support import sign_report  # noqa: E402

TARGET_GAS = 60_000


def measure(updates: int, history: int) -> dict[str, Any]:
    enclave = coincurve.PrivateKey(keccak256(b"bench enclave"))
    owner = Wallet(coincurve.PrivateKey(keccak256(b"bench owner")))
    relayer = Wallet(coincurve.PrivateKey(keccak256(b"bench relayer")))
    with Anvil() as anvil:
        for wallet in (owner, relayer):
            anvil.fund(wallet.address)
        rpc = anvil.rpc
        registry = deploy_registry(rpc, owner)
        feed = deploy_feed(
            rpc,
            owner,
            registry=registry.address,
            symbol="BTC/USD",
            decimals=8,
            min_sources=3,
            history=history,
        )
        domain = feed_domain(anvil.chain_id, feed.address)
        config = OracleConfig(min_sources=3, domains=(Eip712Domain(), domain))
        pcrs = [bytes([i + 1]) * 48 for i in range(4)]
        registration = registry.transact(
            owner,
            "register",
            Wallet(enclave).address,
            *pcrs,
            keccak256(b"attestation document"),
            rpc.block_timestamp() + 86_400,
        )
        anvil.mine(rpc.block_timestamp() + 60)
        renewal = registry.transact(
            owner,
            "register",
            Wallet(enclave).address,
            *pcrs,
            keccak256(b"a fresher attestation document"),
            rpc.block_timestamp() + 2 * 86_400,
        )
        gas: list[int] = []
        for _ in range(updates):
            anvil.mine(rpc.block_timestamp() + 1)
            report = sign_report(
                config=config, key=enclave, domain=domain, now=rpc.block_timestamp()
            )
            receipt = feed.transact(relayer, "submit", *submit_args(report))
            gas.append(gas_used(receipt))
        assert registry.deploy_receipt is not None and feed.deploy_receipt is not None
        deploy_registry_gas = gas_used(registry.deploy_receipt)
        deploy_feed_gas = gas_used(feed.deploy_receipt)
    steady = gas[1:]
    return {
        "solc": SOLC_VERSION,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "history": history,
        "updates": updates,
        "deploy_registry": deploy_registry_gas,
        "deploy_feed": deploy_feed_gas,
        "registration": gas_used(registration),
        "renewal": gas_used(renewal),
        "first_update": gas[0],
        "steady_min": min(steady),
        "steady_median": int(statistics.median(steady)),
        "steady_max": max(steady),
        "target": TARGET_GAS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--history", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.updates < 2:
        parser.error("--updates must be at least 2 (a first and a steady-state update)")
    result = measure(args.updates, args.history)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"solc {result['solc']}, {result['machine']}, history {result['history']}")
    print("| what | gas |")
    print("|---|---|")
    print(f"| deploy OracleRegistry | {result['deploy_registry']:,} |")
    print(f"| deploy PriceFeed (history {result['history']}) | {result['deploy_feed']:,} |")
    print(f"| register a signer (OracleRegistry.register) | {result['registration']:,} |")
    print(f"| renew it (register again, new expiry and evidence) | {result['renewal']:,} |")
    print(f"| first report update (PriceFeed.submit) | {result['first_update']:,} |")
    print(
        f"| steady report update, {result['updates'] - 1} updates: min / median / max | "
        f"{result['steady_min']:,} / {result['steady_median']:,} / {result['steady_max']:,} |"
    )
    worst = max(result["first_update"], result["steady_max"])
    verdict = "within" if worst <= TARGET_GAS else "OVER"
    print(f"worst update {worst:,} gas: {verdict} the {TARGET_GAS:,} target")


if __name__ == "__main__":
    main()
