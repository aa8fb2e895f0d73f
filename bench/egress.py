"""Egress benchmark: HTTPS GET latency through the parent proxy vs direct, and bulk relay
throughput of the proxy vs socat, on loopback, in one run.

    .venv/bin/python bench/egress.py [--requests 400] [--megabytes 512] [--json]

Latency: the enclave-side client (`EgressClient`) fetches a small JSON document from a local
HTTPS server (test CA, separate process), either straight over TCP ("direct") or through
`enclave-net egress` in route mode over a Unix socket (the stand-in for vsock), separate
process. Measured both with a fresh connection per request (TCP + TLS handshake each time) and
over one keep-alive connection. Added latency = p50(proxy) - p50(direct).

Throughput: a source process writes N MiB as fast as it can; the client reads it through the
relay (our proxy in route mode, or `socat UNIX-LISTEN,fork TCP`). Best of 3 runs each.
Targets (docs/benchmarks.md): at most 1 ms added at p50; at least 50% of socat's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from enclave_net.address import TcpAddress, UnixAddress, parse_host_port  # noqa: E402
from enclave_net.egress import EgressClient, EgressConfig, Timeouts  # noqa: E402
from tests.enclave_net._support import CertAuthority, HttpsExchange  # noqa: E402

URL = "https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT"
CHUNK = 1 << 20


def _https_server(directory: str, pipe: Connection) -> None:
    pki = CertAuthority.create(Path(directory))
    server = HttpsExchange("api.binance.com", *pki.issue("api.binance.com"))
    pipe.send((str(pki.ca_pem), server.port))
    pipe.recv()  # until told to stop
    server.close()


def _source(port_pipe: Connection, total: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port_pipe.send(listener.getsockname()[1])
    block = b"\xa5" * CHUNK
    while True:
        conn, _ = listener.accept()
        with conn:
            sent = 0
            try:
                while sent < total:
                    conn.sendall(block)
                    sent += len(block)
            except OSError:
                pass


def _wait_for(path: Path) -> None:
    for _ in range(500):
        if path.exists():
            return
        time.sleep(0.01)
    raise RuntimeError(f"{path} never appeared")


def _start_proxy(listen: Path, upstream_port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave_net._cli",
            "egress",
            "--log-level",
            "warning",
            "--route",
            f"unix:{listen}=upstream.test:{upstream_port}",
            "--resolve",
            "upstream.test=127.0.0.1",
            "--allow-private",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(listen)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "n": len(ordered),
    }


def _latency(
    direct: EgressConfig, proxied: EgressConfig, requests: int, *, keepalive: bool
) -> tuple[list[float], list[float]]:
    """Alternate direct and proxied requests so that drift on a busy machine hits both alike.

    The client is async (the one egress implementation); the whole run is one event loop."""
    return asyncio.run(_alternate((direct, proxied), requests, keepalive=keepalive))


async def _alternate(
    configs: tuple[EgressConfig, EgressConfig], requests: int, *, keepalive: bool
) -> tuple[list[float], list[float]]:
    clients = [EgressClient(c) for c in configs]
    samples: tuple[list[float], list[float]] = ([], [])
    try:
        for _ in range(20):  # warm-up: imports, first handshakes, caches
            for client in clients:
                await client.get(URL)
        for _ in range(requests):
            for i, config in enumerate(configs):
                if not keepalive:
                    await clients[i].aclose()
                    clients[i] = EgressClient(config)
                started = time.perf_counter()
                response = await clients[i].get(URL)
                samples[i].append(time.perf_counter() - started)
                assert response.status == 200
    finally:
        for client in clients:
            await client.aclose()
    return samples


def _throughput(connect: Callable[[], socket.socket], total: int) -> float:
    best = 0.0
    buffer = bytearray(CHUNK)
    for _ in range(3):
        with connect() as sock:
            received = 0
            started = time.perf_counter()
            while received < total:
                n = sock.recv_into(buffer)
                if not n:
                    break
                received += n
            elapsed = time.perf_counter() - started
        if received < total:
            raise RuntimeError(f"short read: {received} of {total}")
        best = max(best, received / elapsed / 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("socat") is None:
        print("needs socat (apt-get install socat)", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    workdir = Path(tempfile.mkdtemp(prefix="oe-bench-", dir="/tmp"))
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "command": " ".join(["bench/egress.py", *sys.argv[1:]]),
    }
    mine, theirs = ctx.Pipe()
    server = ctx.Process(target=_https_server, args=(str(workdir), theirs), daemon=True)
    server.start()
    ca_pem, https_port = mine.recv()
    timeouts = Timeouts(connect=10, read=10, write=10, pool=10)
    upstream = parse_host_port("api.binance.com:443")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proxy_sock = workdir / "https.sock"
        procs.append(_start_proxy(proxy_sock, https_port))
        direct = EgressConfig(
            routes={upstream: TcpAddress("127.0.0.1", https_port)},
            ca_bundle=Path(ca_pem),
            timeouts=timeouts,
        )
        proxied = EgressConfig(
            routes={upstream: UnixAddress(str(proxy_sock))},
            ca_bundle=Path(ca_pem),
            timeouts=timeouts,
        )
        latency: dict[str, object] = {}
        for keepalive in (True, False):
            label = "keepalive" if keepalive else "new_connection"
            d_samples, p_samples = _latency(direct, proxied, args.requests, keepalive=keepalive)
            d, p = _percentiles(d_samples), _percentiles(p_samples)
            latency[label] = {
                "direct": d,
                "proxy": p,
                "added_p50_ms": round(p["p50_ms"] - d["p50_ms"], 3),
                "added_p99_ms": round(p["p99_ms"] - d["p99_ms"], 3),
            }
        results["latency"] = latency

        total = args.megabytes * CHUNK
        port_mine, port_theirs = ctx.Pipe()
        source = ctx.Process(target=_source, args=(port_theirs, total), daemon=True)
        source.start()
        source_port = port_mine.recv()
        bulk_proxy = workdir / "bulk-proxy.sock"
        bulk_socat = workdir / "bulk-socat.sock"
        bulk_socat_big = workdir / "bulk-socat-64k.sock"
        procs.append(_start_proxy(bulk_proxy, source_port))
        procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{bulk_socat},fork", f"TCP:127.0.0.1:{source_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        # socat's default buffer is 8 KiB; our proxy reads 64 KiB at a time. Report socat both
        # ways so the comparison is not won by a buffer size alone.
        procs.append(
            subprocess.Popen(
                [
                    "socat",
                    "-b",
                    str(64 * 1024),
                    f"UNIX-LISTEN:{bulk_socat_big},fork",
                    f"TCP:127.0.0.1:{source_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for(bulk_socat)
        _wait_for(bulk_socat_big)

        def via(path: Path) -> Callable[[], socket.socket]:
            def connect() -> socket.socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(path))
                return sock

            return connect

        direct_mbs = _throughput(
            lambda: socket.create_connection(("127.0.0.1", source_port)), total
        )
        socat_mbs = _throughput(via(bulk_socat), total)
        socat_big_mbs = _throughput(via(bulk_socat_big), total)
        proxy_mbs = _throughput(via(bulk_proxy), total)
        results["throughput_MBps"] = {
            "megabytes": args.megabytes,
            "direct_tcp": round(direct_mbs, 1),
            "socat": round(socat_mbs, 1),
            "socat_b64k": round(socat_big_mbs, 1),
            "proxy": round(proxy_mbs, 1),
            "proxy_vs_socat": round(proxy_mbs / socat_mbs, 3),
            "proxy_vs_socat_b64k": round(proxy_mbs / socat_big_mbs, 3),
        }
        source.kill()
    finally:
        for proc in procs:
            _stop(proc)
        mine.send("stop")
        server.join(5)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {results['machine']}")
        for label, row in latency.items():
            assert isinstance(row, dict)
            print(
                f"HTTPS GET, {label}: direct p50 {row['direct']['p50_ms']} ms "
                f"p99 {row['direct']['p99_ms']} ms | proxy p50 {row['proxy']['p50_ms']} ms "
                f"p99 {row['proxy']['p99_ms']} ms | added p50 {row['added_p50_ms']} ms"
            )
        t = results["throughput_MBps"]
        assert isinstance(t, dict)
        print(
            f"bulk {t['megabytes']} MiB: direct {t['direct_tcp']} MB/s, socat {t['socat']} "
            f"MB/s, socat -b 64k {t['socat_b64k']} MB/s, proxy {t['proxy']} MB/s "
            f"({t['proxy_vs_socat']:.0%} of socat, {t['proxy_vs_socat_b64k']:.0%} of "
            "socat -b 64k)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
