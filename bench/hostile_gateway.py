"""Hostile clients against the parent's gateway in front of the enclave API: idle connections
and a crowd. Loopback only, bounded in count and time.

    .venv/bin/python bench/hostile_gateway.py [--idle 64 256] [--crowd 200] [--json]

Runs the demo's stack (NSM emulator, replay exchanges, egress proxy, the enclave app as a child
process, in a network namespace when root) and, in front of the enclave's API socket, the real
`enclave-net gateway` as its own process, so its memory is its own.

Idle case, per count N: N TCP connections to the gateway that send nothing, held open; while they
are held, one fresh `GET /v1/price/BTC-USD` and one `GET /v1/health`, each timed; then the
gateway's peak RSS (VmHWM) and its RSS while the connections are held. "Answered within 1 s"
means a complete HTTP answer within 1 s of connecting.

Crowd case: C clients at once, each one `GET` on its own connection; how many got a 200, a 503
(with Retry-After), another status, an empty reply, or a reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oracle_example.demo import OracleStack  # noqa: E402

#: Every fresh request must be answered within this to count as served.
ANSWER_BUDGET = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class GatewayProcess:
    """`enclave-net gateway` as a child process, in front of `enclave` (an address)."""

    def __init__(self, enclave: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enclave_net._cli", "gateway", *self._args(enclave)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(20):
            self.close()
            raise RuntimeError("the gateway did not start")

    def _args(self, enclave: str) -> list[str]:
        return ["--listen", f"tcp:127.0.0.1:{self.port}", "--enclave", enclave]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if '"ready"' in line:
                self._ready.set()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _timed_get(port: int, path: str) -> dict[str, Any]:
    started = time.monotonic()
    data = b""
    error = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    status = int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None
    return {
        "path": path,
        "status": status,
        "seconds": round(seconds, 4),
        "answered_within_1s": status is not None and seconds <= ANSWER_BUDGET,
        "error": error,
    }


def idle_case(gateway: GatewayProcess, count: int) -> dict[str, Any]:
    before = _status_kb(gateway.proc.pid)
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(count)]
    try:
        time.sleep(0.5)  # let the gateway accept them all (and, before the fix, dial the enclave)
        fresh = [_timed_get(gateway.port, p) for p in ("/v1/price/BTC-USD", "/v1/health")]
        held = _status_kb(gateway.proc.pid)
    finally:
        for sock in idle:
            sock.close()
    return {
        "idle_connections": count,
        "fresh": fresh,
        "gateway_rss_kib_before": before["VmRSS"],
        "gateway_rss_kib_while_held": held["VmRSS"],
        "gateway_peak_rss_kib": held["VmHWM"],
    }


async def _client(port: int, index: int) -> str:
    path = "/v1/health" if index % 2 else "/v1/price/BTC-USD"
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    except (ConnectionError, OSError):
        return "reset"
    if not data:
        return "empty"
    head = data.partition(b"\r\n\r\n")[0]
    status = head.split()[1].decode() if head.startswith(b"HTTP/1.1 ") else "garbled"
    if status == "503" and b"\r\nretry-after:" not in head.lower():
        return "503 without Retry-After"
    return status


def crowd_case(gateway: GatewayProcess, clients: int) -> dict[str, Any]:
    async def crowd() -> list[str]:
        return await asyncio.gather(*(_client(gateway.port, i) for i in range(clients)))

    started = time.monotonic()
    outcomes = asyncio.run(crowd())
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return {
        "clients": clients,
        "outcomes": dict(sorted(counts.items())),
        "seconds": round(time.monotonic() - started, 3),
        "gateway_peak_rss_kib": _status_kb(gateway.proc.pid)["VmHWM"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--crowd", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if max([*args.idle, args.crowd]) > 1000:
        parser.error("at most 1000 connections per case (bounded by design)")
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "idle": [],
    }
    with OracleStack(seed=7, replay=True, interval=1.0) as stack:
        stack.start()
        stack.wait_ready(timeout=60)
        gateway = GatewayProcess(f"unix:{stack.enclave_socket}")
        try:
            for count in args.idle:
                results["idle"].append(idle_case(gateway, count))
                time.sleep(1.5)  # the gateway cuts what is left of them; start clean
            results["crowd"] = crowd_case(gateway, args.crowd)
        finally:
            gateway.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(results["machine"])
    for case in results["idle"]:
        fresh = ", ".join(
            f"{f['path']} {f['status']} in {f['seconds'] * 1000:.0f} ms"
            f"{'' if f['answered_within_1s'] else ' (NOT within 1 s)'}"
            for f in case["fresh"]
        )
        print(
            f"idle {case['idle_connections']:>4}: {fresh}; gateway RSS "
            f"{case['gateway_rss_kib_before'] / 1024:.1f} -> "
            f"{case['gateway_rss_kib_while_held'] / 1024:.1f} MiB, "
            f"peak {case['gateway_peak_rss_kib'] / 1024:.1f} MiB"
        )
    crowd = results["crowd"]
    print(
        f"crowd {crowd['clients']}: {crowd['outcomes']} in {crowd['seconds']} s; gateway peak "
        f"RSS {crowd['gateway_peak_rss_kib'] / 1024:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
