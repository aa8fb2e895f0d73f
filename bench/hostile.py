"""Hostile clients against the verifier service: oversized heads, slowloris, pipelining.

Each attack runs on loopback against a service subprocess whose descriptor limit is 1,024
(`RLIMIT_NOFILE`, as on a default Linux shell), bounded in connections, bytes and time. Per
attack it prints the server's peak resident memory during the attack (`VmHWM`, reset before
each attack through `/proc/PID/clear_refs`, summed over the server's processes), whether fresh
`GET /healthz` probes, sent every 2 seconds while the attack holds its connections, were all
answered within 1 s, and what the attacker saw (status line, connections the server closed).

Server modes, to compare the choices (`--mode`, repeatable):

- `serve` (default): `nitro-attest serve`, i.e. the shipped settings (docs/deployment.md);
- `uvicorn-default`: the app under `uvicorn.run` with uvicorn's defaults (httptools parser, no
  limits), how `nitro-attest serve` ran before;
- `uvicorn-h11`: uvicorn's defaults with the h11 parser (16 KiB head limit), nothing else;
- `hypercorn` (h11, 10 s per-read timeout) and `granian` (Rust, hyper; 10 s header read
  timeout), each with a backlog of 128: not dependencies of this project; run the bench with
  an interpreter that has them (`pip install hypercorn granian` in another virtualenv).

Run: `.venv/bin/python bench/hostile.py` (all attacks, `serve` mode), `--mode uvicorn-default
--mode serve` to compare, `--attack slowloris-idle` for one, `--write-docs` to replace the
"Hostile clients" section of docs/benchmarks.md. Sections are functions in `ATTACKS`; another
server (the gateway) can add its own list and its own server starter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import machine, replace_section  # noqa: E402

DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Hostile clients"
SERVER_NOFILE = 1024
SLOW_CONNECTIONS = 1100
PROBE_EVERY = 2.0
PROBE_TIMEOUT = 1.0
MODES = ("serve", "uvicorn-default", "uvicorn-h11", "hypercorn", "granian")


# --- the server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _limit_fds() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, SERVER_NOFILE))


class Server:
    """The service in a subprocess, limited to 1,024 descriptors."""

    def __init__(self, mode: str, config: Path, log: Path) -> None:
        self.port = _free_port()
        listen = f"127.0.0.1:{self.port}"
        # hypercorn and granian load `hostile_app:app` (written next to the config by `_config`).
        factory = "hostile_app:app"
        if mode == "serve":
            argv = ["-m", "attestation.service", "--config", str(config), "--listen", listen]
        elif mode == "hypercorn":  # h11 (16 KiB incomplete-head limit), per-read timeout
            argv = ["-m", "hypercorn", "--bind", listen, "--read-timeout", "10"]
            argv += ["--keep-alive", "5", "--backlog", "128", factory]
        elif mode == "granian":  # Rust (hyper): header read timeout, buffer limit
            argv = ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
            argv += ["--port", str(self.port), "--http1-header-read-timeout"]
            argv += ["10000", "--backlog", "128", "--workers", "1", factory]
        else:
            argv = [__file__, "--run-uvicorn", mode, str(config), str(self.port)]
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            preexec_fn=_limit_fds,
            # no threads in this process yet (preexec_fn)
            env={
                **os.environ,
                "NITRO_ATTEST_SERVICE_CONFIG": str(config),
                "PYTHONPATH": os.pathsep.join([str(REPO), str(config.parent)]),
            },
        )
        deadline = time.monotonic() + 30
        while asyncio.run(probe(self.port, timeout=1.0)) is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"service did not start:\n{tail}")
            time.sleep(0.2)

    def _pids(self) -> list[int]:
        """The server and its descendants (hypercorn and granian serve from child processes)."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        tree = [self.process.pid]
        for pid in tree:
            tree.extend(child for child, parent in parents.items() if parent == pid)
        return tree

    def _status(self, key: str) -> int:
        """`key` (kB) summed over the server's processes."""
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
                total += int(match.group(1)) if match else 0
        return total

    def reset_peak(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak_mib(self) -> float:
        return self._status("VmHWM") / 1024

    def rss_mib(self) -> float:
        return self._status("VmRSS") / 1024

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def run_uvicorn(mode: str, config: str, port: int) -> None:
    """The comparison servers: the same app, uvicorn with its defaults (no bound of ours)."""
    import uvicorn

    from attestation.service import create_app, load_config

    app = create_app(load_config(config))
    http = "h11" if mode == "uvicorn-h11" else "auto"
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, access_log=False, log_config=None)


# --- clients ----------------------------------------------------------------------------------


async def probe(port: int, *, timeout: float = PROBE_TIMEOUT) -> float | None:
    """Seconds until a fresh connection's `GET /healthz` got `200`, or None (not in `timeout`)."""
    start = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
            line = await reader.readline()
            if not line.startswith(b"HTTP/1.1 200"):
                return None
    except (TimeoutError, OSError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - start


@dataclass
class Result:
    attack: str
    mode: str
    baseline_mib: float = 0.0
    peak_mib: float = 0.0
    probes: list[float | None] = field(default_factory=list)
    seen: str = ""
    server_died: bool = False

    @property
    def fresh_ok(self) -> bool:
        return bool(self.probes) and all(p is not None and p <= PROBE_TIMEOUT for p in self.probes)

    @property
    def worst_probe(self) -> str:
        if any(p is None for p in self.probes):
            return "no answer"
        return f"{max(p for p in self.probes if p is not None) * 1000:.0f} ms"


async def _probing(port: int, result: Result, stop: asyncio.Event) -> None:
    while not stop.is_set():
        result.probes.append(await probe(port))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY)


async def _drain_status(reader: asyncio.StreamReader, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
    except (TimeoutError, OSError):
        return "no answer"
    return line.decode("latin-1").strip() or "closed without an answer"


async def _flood_head(port: int, head: bytes, filler: bytes, total: int, seconds: float) -> str:
    """Send `head`, then `filler` up to `total` bytes; what the server answered and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    start = time.perf_counter()
    outcome = "sent everything"
    try:
        writer.write(head)
        while sent < total and time.perf_counter() - start < seconds:
            writer.write(filler)
            sent += len(filler)
            await asyncio.wait_for(writer.drain(), timeout=max(0.1, seconds))
            if reader.at_eof() or writer.is_closing():
                break
        else:
            outcome = f"stopped after {seconds:.0f} s" if sent < total else outcome
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except (OSError, TimeoutError):
        outcome = "connection closed by the server"
    status = await _drain_status(reader, 5)
    writer.close()
    return f"{status} after {sent / 2**20:.1f} MiB ({outcome})"


async def header_line(port: int, result: Result) -> None:
    """One header line of up to 200 MiB."""
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: "
    result.seen = await _flood_head(port, head, b"a" * 2**20, 200 * 2**20, 30)


async def many_headers(port: int, result: Result) -> None:
    """Up to 4 million small headers."""
    head = b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
    batch = b"a: b\r\n" * 10_000
    result.seen = await _flood_head(port, head, batch, 4_000_000 * 6, 30)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_many(port: int, count: int) -> list[Connection]:
    connections = []
    for _ in range(count):
        try:
            # A server that stops accepting lets the kernel queue fill; then connect() waits.
            connection = asyncio.open_connection("127.0.0.1", port)
            connections.append(await asyncio.wait_for(connection, timeout=2))
        except (OSError, TimeoutError):
            break
    return connections


async def _slow(
    port: int, result: Result, first: bytes, drip: bytes | None, seconds: float
) -> None:
    """`SLOW_CONNECTIONS` connections send `first`, then `drip` one byte a second, for `seconds`."""
    connections = await _open_many(port, SLOW_CONNECTIONS)
    for _, writer in connections:
        if first:
            writer.write(first)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await asyncio.sleep(1)
        for _, writer in connections:
            if drip is not None and not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write(drip)
    fates = await asyncio.gather(*(_fate(reader) for reader, _ in connections))
    counts = {fate: fates.count(fate) for fate in sorted(set(fates))}
    shown = ", ".join(f"{n} {fate}" for fate, n in counts.items())
    result.seen = f"{len(connections)} opened; after {seconds:.0f} s: {shown}"
    for _, writer in connections:
        writer.close()


async def _fate(reader: asyncio.StreamReader) -> str:
    """What became of a slow connection: still open, or how the server ended it."""
    try:
        data = await asyncio.wait_for(reader.read(), timeout=0.5)
    except TimeoutError:
        return "still open"
    except OSError:
        return "reset by the server"
    if data.startswith(b"HTTP/1.1 "):
        return f"answered {data[9:12].decode('latin-1')} and closed"
    return "closed by the server"


async def slowloris_idle(port: int, result: Result, seconds: float) -> None:
    """1,100 connections that send nothing."""
    await _slow(port, result, b"", None, seconds)


async def slowloris_head(port: int, result: Result, seconds: float) -> None:
    """1,100 connections trickling a request head, one byte a second."""
    await _slow(port, result, b"POST /v1/verify?policy=bench HTTP/1.1\r\nx-a: ", b"a", seconds)


async def slowloris_body(port: int, result: Result, seconds: float) -> None:
    """1,100 connections with a complete head, trickling the body one byte a second."""
    head = (
        b"POST /v1/verify?policy=bench HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/cbor\r\ncontent-length: 10000\r\n\r\n"
    )
    await _slow(port, result, head, b"\x00", seconds)


async def pipelining(port: int, result: Result, seconds: float) -> None:
    """20 connections each pipelining 20,000 requests without reading an answer."""
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    connections = await _open_many(port, 20)

    async def push(writer: asyncio.StreamWriter) -> int:
        sent = 0
        with contextlib.suppress(OSError, TimeoutError):
            for _ in range(20):  # 20 x 1,000 requests
                writer.write(request * 1000)
                await asyncio.wait_for(writer.drain(), timeout=seconds)
                sent += 1000
        return sent

    pushed = await asyncio.wait_for(
        asyncio.gather(*(push(w) for _, w in connections)), timeout=seconds * 2
    )
    await asyncio.sleep(seconds)
    blocked = " (the rest blocked: the server stopped reading)" if sum(pushed) < 400_000 else ""
    result.seen = f"{len(connections)} connections, {sum(pushed):,} requests written{blocked}"
    for _, writer in connections:
        writer.close()


Attack = Callable[[int, Result, float], Awaitable[None]]


async def _header_line(port: int, result: Result, seconds: float) -> None:
    await header_line(port, result)


async def _many_headers(port: int, result: Result, seconds: float) -> None:
    await many_headers(port, result)


#: The verifier service's section: name -> (attack, what it sends).
ATTACKS: dict[str, tuple[Attack, str]] = {
    "header-line": (_header_line, "one header line of up to 200 MiB"),
    "many-headers": (_many_headers, "up to 4,000,000 headers `a: b`"),
    "slowloris-idle": (slowloris_idle, "1,100 connections sending nothing"),
    "slowloris-head": (slowloris_head, "1,100 connections trickling a head, 1 byte/s"),
    "slowloris-body": (slowloris_body, "1,100 complete heads, body trickled 1 byte/s"),
    "pipelining": (pipelining, "20 connections x 20,000 pipelined requests, never read"),
}


def run_attack(server: Server, mode: str, name: str, seconds: float) -> Result:
    attack, _ = ATTACKS[name]
    result = Result(name, mode, baseline_mib=server.rss_mib())
    server.reset_peak()

    async def attack_and_probe() -> None:
        stop = asyncio.Event()
        prober = asyncio.create_task(_probing(server.port, result, stop))
        try:
            await attack(server.port, result, seconds)
        finally:
            stop.set()
            await prober

    asyncio.run(attack_and_probe())
    result.peak_mib = server.peak_mib()
    result.server_died = not server.alive()
    time.sleep(1)  # let the server close what the attack left
    return result


_SERVERS = (
    "Servers: `uvicorn-default` is how `nitro-attest serve` ran before (uvicorn's defaults, "
    "httptools parser); `uvicorn-h11` the same with uvicorn's h11 parser and nothing else; "
    "`hypercorn` (h11, `--read-timeout 10`, a timeout per read) and `granian` (hyper, in "
    "Rust, `--http1-header-read-timeout 10000`), each with a backlog of 128, the other "
    "servers measured and not chosen (not dependencies: run the bench with an interpreter "
    "that has them; this table came from a virtualenv with the same packages as `.venv` plus "
    "hypercorn 0.18.0 and granian 2.8.9); `serve` the shipped `nitro-attest serve` (h11 plus "
    'the service\'s deadlines and connection cap, docs/deployment.md "Hostile clients"). Peak '
    "RSS is summed over the server's processes (hypercorn and granian serve from child "
    "processes). The app is the same in every row, including its 431 for complete heads over "
    "16 KiB or 100 headers; what differs is the server. Every server but httptools bounds the"
    " heads, and none but httptools grows with pipelining. None of the others keeps a fresh "
    "request answered while 1,100 slow connections are held: uvicorn and hypercorn run out of"
    " descriptors (hypercorn's per-read timeout closes idle and trickling heads after 10 s, "
    "but a body trickled a byte a second resets it every time), and granian stops accepting "
    "past its backpressure limit (backlog / workers, 128), so the kernel queue fills and new "
    "connections wait. Only `serve`'s deadlines and its cap, which evicts the longest-waiting"
    ' slow connection when full, do. For the oversized heads, "no answer" means the server '
    "answered 400 and closed while the attacker was still sending, so the attacker's kernel "
    "discarded the answer on the reset (the tests check the answer with heads that fit in one"
    " write). The trickled bodies were held 15 s, less than the 30 s body deadline: under "
    "`serve` those connections were still open, and a fresh request was still answered, "
    "because the cap had closed the oldest ones."
)


def render(results: list[Result], command: str, seconds: float) -> str:
    info = machine()
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (server limited to {SERVER_NOFILE} descriptors, loopback, "
        f"slow attacks held {seconds:.0f} s, a fresh `GET /healthz` every {PROBE_EVERY:.0f} s "
        f"with a {PROBE_TIMEOUT:.0f} s limit). Machine: {info.get('cpu', '?')}, "
        f"Python {info.get('python', '?')}.",
        "",
        _SERVERS,
        "",
        "| attack | server | RSS before | peak RSS | fresh request < 1 s | slowest probe "
        "| what the attacker saw |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        died = " (server died)" if r.server_died else ""
        lines.append(
            f"| {ATTACKS[r.attack][1]} | {r.mode} | {r.baseline_mib:.0f} MiB | "
            f"{r.peak_mib:.0f} MiB | {'yes' if r.fresh_ok else 'no'} | {r.worst_probe} | "
            f"{r.seen}{died} |"
        )
    return "\n".join(lines) + "\n"


def _config(work: Path) -> Path:
    config = work / "service.toml"
    config.write_text(
        '[service]\naccess_log = false\n[policies.bench]\npcrs = { 0 = "' + "ab" * 48 + '" }\n'
    )
    (work / "hostile_app.py").write_text(
        "from attestation.service import app_from_environment\napp = app_from_environment()\n"
    )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=MODES, help="server (repeatable)")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS), help="repeatable")
    parser.add_argument("--seconds", type=float, default=15, help="how long slow attacks hold")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    # The attacker side needs more than 1,100 descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    python = ".venv/bin/python"
    if {"hypercorn", "granian"} & set(args.mode or ()):
        python = "python"  # another virtualenv: the project, hypercorn and granian
    command = f"{python} bench/hostile.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        work = Path(tmp)
        config = _config(work)
        for mode in args.mode or ["serve"]:
            for name in args.attack or list(ATTACKS):
                # A fresh server per attack: one attack's leftovers must not count for the next.
                server = Server(mode, config, work / f"{mode}-{name}.log")
                try:
                    result = run_attack(server, mode, name, args.seconds)
                finally:
                    server.stop()
                results.append(result)
                print(
                    f"{mode:16} {name:15} peak {result.peak_mib:6.0f} MiB  fresh<1s "
                    f"{'yes' if result.fresh_ok else 'no ':3}  {result.worst_probe:>9}  "
                    f"{result.seen}",
                    flush=True,
                )
    section = render(results, command, args.seconds)
    print(section)
    if args.write_docs:
        replace_section(DOCS, SECTION, section)
        print(f"updated {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--run-uvicorn":
        run_uvicorn(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
