"""Oracle benchmark: how long a round takes against its slowest source, and how many reports per
second the enclave serves from its cache through the gateway.

    .venv/bin/python bench/oracle.py [--rounds 20] [--seconds 5] [--json]

Runs the demo's stack (NSM emulator, replay exchanges over HTTPS with a demo CA, the egress
proxy, the enclave as a child process, in a network namespace when root, and the gateway).

Round latency: one exchange (Kraken) is made slow by D ms in the replay; the enclave logs, per
round, the slowest source's HTTPS latency (as its egress client saw it) and the round's total
(fetch of 8 (feed, source) pairs concurrently + aggregation + EIP-712 signing). Overhead =
total - slowest source: what the oracle adds on top of the exchanges it waits for.

Cache throughput: clients GET /v1/price/BTC-USD through the gateway (one request per TCP
connection, as the API serves) for `--seconds`, at concurrency 1 and 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oracle_example.client import http_get  # noqa: E402
from oracle_example.demo import OracleStack  # noqa: E402
from oracle_example.replay import Rule  # noqa: E402

DELAYS_MS = (0, 100, 300)


def _rounds(stack: OracleStack, after: int) -> list[dict[str, Any]]:
    return [
        line
        for line in stack.enclave_lines()
        if line.get("event") == "round" and line.get("round", 0) > after
    ]


def round_latency(stack: OracleStack, delay_ms: int, rounds: int) -> dict[str, Any]:
    assert stack.replay is not None
    stack.replay.clear_rules()
    if delay_ms:
        stack.replay.add_rule(Rule(host="api.kraken.com", delay=delay_ms / 1000))
    start = stack.health()["rounds"] + 1  # skip the round in flight
    deadline = time.monotonic() + 60
    while len(_rounds(stack, start)) < rounds and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = _rounds(stack, start)[:rounds]
    slowest = [float(x["slowest_source_ms"]) for x in lines]
    total = [float(x["total_ms"]) for x in lines]
    overhead = [t - s for t, s in zip(total, slowest, strict=True)]
    return {
        "delay_ms": delay_ms,
        "rounds": len(lines),
        "slowest_source_p50_ms": round(statistics.median(slowest), 2),
        "round_total_p50_ms": round(statistics.median(total), 2),
        "overhead_p50_ms": round(statistics.median(overhead), 2),
        "overhead_max_ms": round(max(overhead), 2),
    }


def cache_throughput(stack: OracleStack, seconds: float, concurrency: int) -> dict[str, Any]:
    url = stack.gateway_url
    counts = [0] * concurrency
    errors = [0] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                http_get(url, "/v1/price/BTC-USD", timeout=5)
            except Exception:
                errors[i] += 1
                continue
            latencies[i].append((time.perf_counter() - t0) * 1000)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    flat = sorted(x for lat in latencies for x in lat)
    return {
        "concurrency": concurrency,
        "reports_per_s": round(sum(counts) / elapsed, 1),
        "p50_ms": round(flat[len(flat) // 2], 3) if flat else None,
        "p99_ms": round(flat[int(len(flat) * 0.99)], 3) if flat else None,
        "errors": sum(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
    }
    with OracleStack(seed=1, replay=True, interval=0.25) as stack:
        stack.start()
        stack.wait_ready()
        results["netns"] = stack.netns
        results["round_latency"] = [round_latency(stack, d, args.rounds) for d in DELAYS_MS]
        if stack.replay is not None:
            stack.replay.clear_rules()
        results["cache"] = [cache_throughput(stack, args.seconds, c) for c in (1, 8)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(results["machine"], "| enclave in netns:", results["netns"])
    print("slow source (ms) | slowest p50 | round total p50 | overhead p50 / max (ms)")
    for r in results["round_latency"]:
        print(
            f"{r['delay_ms']:>16} | {r['slowest_source_p50_ms']:>11} | "
            f"{r['round_total_p50_ms']:>15} | {r['overhead_p50_ms']} / {r['overhead_max_ms']}"
        )
    print("concurrency | reports/s | p50 / p99 (ms) | errors")
    for c in results["cache"]:
        print(
            f"{c['concurrency']:>11} | {c['reports_per_s']:>9} | {c['p50_ms']} / {c['p99_ms']} "
            f"| {c['errors']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
