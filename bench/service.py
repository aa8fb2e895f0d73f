"""Benchmark the verifier service: one uvicorn worker on loopback under load, against the library.

What it measures, in one run:

1. **Library warm throughput**: `Verifier.verify` of one real AWS document in a loop, in this
   process, cache warm (the ceiling a single-threaded service could reach).
2. **Service throughput and latency**: `nitro-attest serve` (one uvicorn process, one event loop)
   answering `POST /v1/verify` with that document as `application/cbor`, verified at its own
   time through the `at` override (allowed by the bench's config), under wrk on loopback (or the
   built-in asyncio client). Reports requests/s, p50/p99 latency, and the ratio to (1)
   (target: at least 0.70).
3. **Soak**: mixed valid and invalid traffic (valid CBOR, valid JSON, a bit-flipped signature,
   garbage, unknown policy, wrong content type, oversize body) for `--soak` seconds, sampling
   the server's resident memory; growth after the warm-up must stay under 10%.

Run: `.venv/bin/python bench/service.py` (add `--write-docs` to update the "Verifier service"
section of docs/benchmarks.md; `--soak 20 --rounds 2` for a quick run). The machine may be
shared, so (1) and (2) alternate in `--rounds` windows of `--seconds` each and the median ratio
is reported, next to the same ratio per CPU-second. wrk comes from Debian (`apt-get
install wrk`); without it, `--client asyncio` is used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attestation import AttestationDocument, Policy, Verifier  # noqa: E402
from vectors.corpus import REAL_DIR  # noqa: E402

# A production document (PCR0 not zero) from 2026: the newest chain shape AWS issues.
DOCUMENT = "2026-02-06_ap-southeast-2_prod_epsilon-nitro-verify_1ad417fa.cbor"
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Verifier service"
RATIO_TARGET = 0.70  # target: at least 70% of the library's warm throughput
RSS_GROWTH_LIMIT = 0.10  # target: resident memory grows less than 10% after warm-up
# One connection keeps the single worker busy only between round trips; a handful of
# keep-alive connections keeps its queue non-empty without measuring mostly queueing.
CONNECTIONS = 8


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- 1. the library ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    per_second: float
    """Operations per wall-clock second."""
    per_cpu_second: float
    """Operations per second of CPU time of the process doing them."""


def library_throughput(data: bytes, policy: Policy, at: datetime, seconds: float) -> Rate:
    verifier = Verifier.aws()
    for _ in range(50):  # warm the chain cache and the interpreter
        verifier.verify(data, policy=policy, at=at)
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            verifier.verify(data, policy=policy, at=at)
        count += 50
    return Rate(count / elapsed, count / (time.process_time() - cpu_start))


# --- the server -----------------------------------------------------------------------------------


class Server:
    def __init__(self, config: Path, port: int, log: Path, kind: str = "serve") -> None:
        self.port = port
        self._log = log.open("wb")
        listen = f"127.0.0.1:{port}"
        argv = ["-m", "attestation.service", "--config", str(config), "--listen", listen]
        if kind != "serve":  # the same app under uvicorn's defaults, to compare (bench/hostile.py)
            argv = [
                str(REPO / "bench" / "hostile.py"),
                "--run-uvicorn",
                kind,
                str(config),
                str(port),
            ]
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"service did not start; see {log}") from None
                time.sleep(0.1)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            text: str = response.read().decode()
            return text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


# --- the requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    name: str
    path: str
    content_type: str
    body: bytes
    expect: int


def requests(data: bytes, at: datetime) -> list[Request]:
    at_text = _iso(at)
    flipped = data[:-1] + bytes([data[-1] ^ 1])  # the signature's last byte
    as_json = json.dumps(
        {"document": base64.b64encode(data).decode(), "policy": "bench", "at": at_text}
    ).encode()
    query = f"/v1/verify?policy=bench&at={at_text}"
    return [
        Request("valid-cbor", query, "application/cbor", data, 200),
        Request("valid-json", "/v1/verify", "application/json", as_json, 200),
        Request("bad-signature", query, "application/cbor", flipped, 422),
        Request("garbage", query, "application/cbor", os.urandom(600), 422),
        Request("truncated", query, "application/cbor", data[: len(data) // 2], 422),
        Request(
            "unknown-policy", f"/v1/verify?policy=nope&at={at_text}", "application/cbor", data, 400
        ),
        Request("wrong-type", query, "text/plain", data, 415),
        Request("oversize", query, "application/cbor", b"\0" * (17 * 1024), 413),
    ]


# Soak mix: mostly valid documents, every kind of refusal present.
SOAK_WEIGHTS = {
    "valid-cbor": 10,
    "valid-json": 4,
    "bad-signature": 2,
    "garbage": 1,
    "truncated": 1,
    "unknown-policy": 1,
    "wrong-type": 1,
    "oversize": 1,
}


# --- 2. load generators ---------------------------------------------------------------------------

_WRK_SCRIPT = r"""
local requests = {}
local index = 0
function init(args)
  local f = assert(io.open(args[1], "rb"))
  for line in f:lines() do
    local path, ctype, bodyfile = line:match("^(%S+) (%S+) (%S+)$")
    local b = assert(io.open(bodyfile, "rb"))
    local body = b:read("*a")
    b:close()
    requests[#requests + 1] = wrk.format("POST", path, {["Content-Type"] = ctype}, body)
  end
  f:close()
  index = math.random(#requests) - 1
end
function request()
  index = index % #requests + 1
  return requests[index]
end
function done(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"errors\": %d, \"status\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


def run_wrk(server: Server, mix: list[Request], seconds: float, work: Path) -> Load:
    listing = []
    for i, request in enumerate(mix):
        body = work / f"body-{i}.bin"
        body.write_bytes(request.body)
        listing.append(f"{request.path} {request.content_type} {body}")
    (work / "requests.txt").write_text("\n".join(listing) + "\n")
    script = work / "mix.lua"
    script.write_text(_WRK_SCRIPT)
    # One wrk thread: the other core runs the server, which is the thing being measured.
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            server.url("/"),
            "--",
            str(work / "requests.txt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    result = json.loads(line[5:])
    return Load(
        requests_per_s=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        requests=result["requests"],
        non_2xx=result["status"],
        errors=result["errors"],
    )


async def _asyncio_load(server: Server, mix: list[Request], seconds: float) -> Load:
    raw = [
        (
            f"POST {r.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {r.content_type}\r\n"
            f"Content-Length: {len(r.body)}\r\n\r\n"
        ).encode()
        + r.body
        for r in mix
    ]
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}
    stop = time.perf_counter() + seconds

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        index = offset
        try:
            while time.perf_counter() < stop:
                payload = raw[index % len(raw)]
                index += 1
                start = time.perf_counter()
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if not head.startswith(b"HTTP/1.1 2"):
                    counts["non_2xx"] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return Load(
        requests_per_s=len(ordered) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[int(len(ordered) * 0.99)] * 1000,
        requests=len(ordered),
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
    )


def load(client: str, server: Server, mix: list[Request], seconds: float, work: Path) -> Load:
    if client == "wrk":
        return run_wrk(server, mix, seconds, work)
    return asyncio.run(_asyncio_load(server, mix, seconds))


# --- 3. soak ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    seconds: float
    load: Load
    rss_start_kib: int
    rss_warm_kib: int
    rss_end_kib: int
    rss_max_after_warm_kib: int
    outcomes: dict[str, int]

    @property
    def growth(self) -> float:
        return (self.rss_end_kib - self.rss_warm_kib) / self.rss_warm_kib


def soak(client: str, server: Server, catalogue: list[Request], seconds: float, work: Path) -> Soak:
    by_name = {r.name: r for r in catalogue}
    mix = [by_name[name] for name, weight in SOAK_WEIGHTS.items() for _ in range(weight)]
    # Interleave so consecutive requests on a connection differ.
    mix = mix[::2] + mix[1::2]
    rss_start = server.rss_kib()
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        began = time.monotonic()
        while not done.wait(0.5):
            samples.append((time.monotonic() - began, server.rss_kib()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = load(client, server, mix, seconds, work)
    finally:
        done.set()
        sampler.join()
    # Warm-up: the first fifth of the soak (at least 5 s) fills caches, allocator arenas and
    # the interpreter's free lists; growth is measured from its end.
    warm_until = max(5.0, seconds / 5)
    warm = [rss for t, rss in samples if t <= warm_until] or [rss_start]
    after = [rss for t, rss in samples if t > warm_until] or [warm[-1]]
    outcomes: dict[str, int] = {}
    for line in server.metrics().splitlines():
        if line.startswith("nitro_attest_requests_total{") and 'route="/v1/verify"' in line:
            labels, value = line.rsplit(" ", 1)
            key = re.search(r'status="(\d+)".*code="([^"]*)"', labels)
            assert key is not None
            outcomes[f"{key.group(1)} {key.group(2)}"] = int(float(value))
    return Soak(
        seconds=seconds,
        load=result,
        rss_start_kib=rss_start,
        rss_warm_kib=warm[-1],
        rss_end_kib=after[-1],
        rss_max_after_warm_kib=max(after),
        outcomes=outcomes,
    )


def server_stack(kind: str = "serve") -> str:
    # `serve` always parses with h11 (attestation/service/_server.py); uvicorn's "auto" choices
    # are httptools and uvloop when installed, else h11 and asyncio.
    import importlib.metadata as metadata
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if kind != "uvicorn-default":
        http = "h11, with nitro-attest serve's bounds" if kind == "serve" else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {metadata.version('uvicorn')} (HTTP parser {http}, event loop {loop})"


# --- report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    library: Rate
    service: Load
    service_rate: Rate

    @property
    def ratio(self) -> float:
        return self.service.requests_per_s / self.library.per_second

    @property
    def cpu_ratio(self) -> float:
        return self.service_rate.per_cpu_second / self.library.per_cpu_second

    @property
    def overhead_us(self) -> float:
        """Server CPU per request minus library CPU per verification: the service's own cost."""
        return (1 / self.service_rate.per_cpu_second - 1 / self.library.per_cpu_second) * 1e6


def render(
    *,
    command: str,
    client: str,
    rounds: list[Round],
    soak_result: Soak,
    document: str,
    access_log: bool,
    load_average: str,
    stack: str,
) -> str:
    ratio = statistics.median(r.ratio for r in rounds)
    cpu_ratio = statistics.median(r.cpu_ratio for r in rounds)
    verdict = "meets" if ratio >= RATIO_TARGET else "MISSES"
    growth = soak_result.growth
    soak_verdict = "meets" if growth < RSS_GROWTH_LIMIT else "MISSES"
    warm_seconds = max(5.0, soak_result.seconds / 5)
    wrk_threads = ", one wrk thread" if client == "wrk" else ""
    log_state = "on (one JSON line per request, to a file)" if access_log else "off"
    lines = [
        SECTION,
        "",
        f"Written by `bench/service.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"load average {load_average} when the run started (the machine is shared, so the "
        "throughput rounds alternate library and service windows and the median is reported). "
        f"Server: {stack}, one worker (one process, one event loop) on 127.0.0.1; "
        f"load from `{client}` ({CONNECTIONS} keep-alive connections{wrk_threads}); "
        f"access log {log_state}. Document: `{document}` (real, AWS-signed, production), "
        "verified at its own timestamp through the `at` override that the bench's config enables.",
        "",
        "| round | library warm verify /s | service req/s | p50 / p99 ms | ratio | "
        "ratio per CPU-second | service CPU per request beyond the library | server CPU |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {i} | {r.library.per_second:,.0f} | {r.service.requests_per_s:,.0f} | "
            f"{r.service.p50_ms:.2f} / {r.service.p99_ms:.2f} | {r.ratio:.2f} | "
            f"{r.cpu_ratio:.2f} | {r.overhead_us:,.0f} µs | "
            f"{r.service.requests_per_s / r.service_rate.per_cpu_second:.0%} |"
            for i, r in enumerate(rounds, 1)
        ),
        "",
        f"- **Median ratio service / library: {ratio:.2f}** (target >= {RATIO_TARGET:.2f}: "
        f"{verdict} it). Per CPU-second (requests per second of the server's CPU time over "
        f"verifications per second of the library loop's CPU time, less sensitive to other "
        f"load on the machine): {cpu_ratio:.2f}.",
        f"- Spread: ratio {min(r.ratio for r in rounds):.2f} to {max(r.ratio for r in rounds):.2f}"
        " over the rounds. Other processes share the CPUs, so a library window and the service "
        "window after it can see very different contention; the per-CPU-second ratio and the "
        "service's own CPU per request (median "
        f"{statistics.median(r.overhead_us for r in rounds):,.0f} µs: HTTP parsing, routing, "
        "reading the body, the JSON answer, metrics and the access log line) move less.",
        f"- Requests in the throughput rounds: {sum(r.service.requests for r in rounds):,}, "
        f"non-2xx {sum(r.service.non_2xx for r in rounds)}, "
        f"socket errors {sum(r.service.errors for r in rounds)}.",
        "",
        f"Soak: {soak_result.seconds:.0f} s of mixed traffic (weights: "
        + ", ".join(f"{name} {weight}" for name, weight in SOAK_WEIGHTS.items())
        + f"), {soak_result.load.requests_per_s:,.0f} req/s, "
        f"p99 {soak_result.load.p99_ms:.2f} ms, {soak_result.load.errors} socket errors.",
        "",
        "| resident memory of the server | KiB |",
        "|---|---|",
        f"| at the start of the soak (after the rounds) | {soak_result.rss_start_kib:,} |",
        f"| after warm-up (first {warm_seconds:.0f} s) | {soak_result.rss_warm_kib:,} |",
        f"| at the end | {soak_result.rss_end_kib:,} |",
        f"| highest after warm-up | {soak_result.rss_max_after_warm_kib:,} |",
        f"| **growth after warm-up** (limit < {RSS_GROWTH_LIMIT:.0%}) "
        f"| **{growth:+.1%}** ({soak_verdict} the limit) |",
        "",
        "Answers by status and code over the whole server run (from its `/metrics`):",
        "",
        "| status code | count |",
        "|---|---|",
        *(f"| {key} | {count:,} |" for key, count in sorted(soak_result.outcomes.items())),
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    # Re-read just before writing: other benches own other sections of the same file.
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(SECTION))
        end = len(text) if following == -1 else following + 1
        before = text[:start].rstrip("\n") + "\n\n" if start else ""
        text = before + section + ("\n" + text[end:] if following != -1 else "")
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=5, help="length of each library and service window"
    )
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds (default 6)")
    parser.add_argument("--soak", type=float, default=120, help="soak duration (default 120)")
    parser.add_argument(
        "--client",
        choices=["wrk", "asyncio"],
        default=None,
        help="load generator (default: wrk if installed)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="turn the access log off")
    parser.add_argument(
        "--server",
        choices=["serve", "uvicorn-default", "uvicorn-h11"],
        default="serve",
        help="nitro-attest serve (default), or the app under uvicorn's defaults to compare",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    client = args.client or ("wrk" if shutil.which("wrk") else "asyncio")
    command = ".venv/bin/python bench/service.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )

    load_average = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    data = (REAL_DIR / DOCUMENT).read_bytes()
    parsed = AttestationDocument.parse(data)
    at = parsed.timestamp
    pcrs = {i: parsed.pcrs[i] for i in (0, 1, 2)}
    policy = Policy(pcrs=pcrs, max_age=timedelta(minutes=5))

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        work = Path(tmp)
        config = work / "service.toml"
        table = ", ".join(f'{i} = "{v.hex()}"' for i, v in pcrs.items())
        config.write_text(
            "[service]\nallow_at_override = true\n"
            f"access_log = {'false' if args.no_access_log else 'true'}\n"
            f"[policies.bench]\npcrs = {{ {table} }}\nmax_age_seconds = 300\n"
        )
        server = Server(config, _free_port(), work / "server.log", args.server)
        try:
            catalogue = requests(data, at)
            check_answers(server, catalogue)
            valid = [catalogue[0]]
            load(client, server, valid, 3, work)  # warm-up, not reported
            rounds = []
            for number in range(1, args.rounds + 1):
                library = library_throughput(data, policy, at, args.seconds)
                cpu_before, wall_before = server.cpu_seconds(), time.perf_counter()
                service = load(client, server, valid, args.seconds, work)
                server_cpu = server.cpu_seconds() - cpu_before
                wall = time.perf_counter() - wall_before
                result = Round(
                    library, service, Rate(service.requests / wall, service.requests / server_cpu)
                )
                rounds.append(result)
                print(
                    f"round {number}: library {library.per_second:,.0f}/s, service "
                    f"{service.requests_per_s:,.0f} req/s (p99 {service.p99_ms:.2f} ms), "
                    f"ratio {result.ratio:.2f}, per CPU-second {result.cpu_ratio:.2f}",
                    flush=True,
                )
            print(f"soak: {args.soak:.0f} s of mixed traffic ...", flush=True)
            soak_result = soak(client, server, catalogue, args.soak, work)
        finally:
            server.stop()

    section = render(
        command=command,
        client=client,
        rounds=rounds,
        soak_result=soak_result,
        document=DOCUMENT,
        access_log=not args.no_access_log,
        load_average=load_average,
        stack=server_stack(args.server),
    )
    print(section)
    if args.write_docs:
        write_section(section)
        print(f"updated {DOCS.relative_to(REPO)}")
    failed = sum(r.service.non_2xx + r.service.errors for r in rounds)
    ok = statistics.median(r.ratio for r in rounds) >= RATIO_TARGET
    return 0 if ok and soak_result.growth < RSS_GROWTH_LIMIT and failed == 0 else 1


def check_answers(server: Server, catalogue: list[Request]) -> None:
    """Every request kind gets the answer it should before anything is timed."""
    for request in catalogue:
        http = urllib.request.Request(
            server.url(request.path),
            data=request.body,
            method="POST",
            headers={"Content-Type": request.content_type},
        )
        try:
            with urllib.request.urlopen(http, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        if status != request.expect:
            raise SystemExit(f"{request.name}: got {status}, expected {request.expect}")


if __name__ == "__main__":
    sys.exit(main())
