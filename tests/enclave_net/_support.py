"""Test doubles for the outside world: a test CA, exchanges as local HTTPS servers, the parent
proxy as a subprocess, and network namespaces standing in for the enclave."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_net.address import UnixAddress, parse_host_port
from enclave_net.proxy_config import Pin, ProxyConfig, ProxyRoute
from enclave_net.tls_server import QuietHandler, ThreadingTLSServer
from oracle_example.replay._pki import (
    issue_server_certificate,
    self_signed_ca,
    write_certificate,
    write_key,
)
from tests.output_contract import check

REPO = Path(__file__).resolve().parents[2]
# Named network namespaces the tests create (with pid and a random part: concurrent runs never
# share one). Tests that check what is left behind tell these apart by prefix.
_ENCLAVE_NETNS = "oe-enc-"
_PROBE_NETNS = "oe-probe-"
TEST_NETNS_PREFIXES = (_ENCLAVE_NETNS, _PROBE_NETNS)
#: Seconds a stand-in exchange waits for a client's TLS handshake.
HANDSHAKE_BUDGET = 60


@dataclass
class CertAuthority:
    directory: Path
    ca_pem: Path
    _ca_key: ec.EllipticCurvePrivateKey
    _ca_cert: x509.Certificate

    @classmethod
    def create(cls, directory: Path) -> CertAuthority:
        now = datetime.datetime.now(datetime.UTC)
        key, cert = self_signed_ca(
            "nsm-attestation test CA",
            not_before=now - datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=30),
        )
        ca_pem = directory / "ca.pem"
        write_certificate(ca_pem, cert)
        return cls(directory, ca_pem, key, cert)

    def issue(self, hostname: str, *, expired: bool = False) -> tuple[Path, Path]:
        now = datetime.datetime.now(datetime.UTC)
        key, cert = issue_server_certificate(
            self._ca_key,
            self._ca_cert,
            [hostname],
            not_before=now - datetime.timedelta(days=10 if expired else 1),
            not_after=now - datetime.timedelta(days=1)
            if expired
            else now + datetime.timedelta(days=10),
        )
        tag = f"{hostname}{'-expired' if expired else ''}"
        cert_path = self.directory / f"{tag}.pem"
        key_path = self.directory / f"{tag}.key"
        write_certificate(cert_path, cert)
        write_key(key_path, key)
        return cert_path, key_path


class _Handler(QuietHandler):
    server: _Server

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.server.owner.paths.append(self.path)
        if parts.path.startswith("/status/"):
            status = int(parts.path.rsplit("/", 1)[1])
            body = json.dumps({"code": status, "msg": f"test status {status}"}).encode()
            extra = {"Retry-After": "120"} if status in (418, 429) else {}
        elif parts.path == "/bytes":
            status, extra = 200, {}
            body = b"x" * int(parse_qs(parts.query)["n"][0])
        elif parts.path == "/api/v3/time":
            status, extra = 200, {"X-MBX-USED-WEIGHT-1M": "2"}  # used so far, this minute
            now_ms = int((time.time() + self.server.owner.clock_offset) * 1000)
            body = json.dumps({"serverTime": now_ms}).encode()
        elif parts.path == "/api/v3/ticker/24hr":  # Binance MINI ticker: closeTime in ms
            status, extra = 200, {"X-MBX-USED-WEIGHT-1M": "3"}
            owner = self.server.owner
            close_ms = int((time.time() + owner.clock_offset - owner.data_age) * 1000)
            symbol = parse_qs(parts.query).get("symbol", ["BTCUSDT"])[0]
            body = json.dumps(
                {"symbol": symbol, "lastPrice": "64000.01000000", "closeTime": close_ms}
            ).encode()
        elif parts.path == "/portal":  # a captive portal / wrong route: 200, not the API
            self.send_response(200)
            page = b"<html><body>Please sign in to the network</body></html>"
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        else:
            status, extra = 200, {"X-MBX-USED-WEIGHT-1M": "2"}
            symbol = parse_qs(parts.query).get("symbol", ["BTCUSDT"])[0]
            body = json.dumps(
                {"symbol": symbol, "price": "64000.01000000", "host": self.server.owner.hostname}
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingTLSServer):
    owner: HttpsExchange
    # socketserver's default listen backlog is 5: with its accept thread starved on a loaded
    # machine, a burst (the doctor opens 4 tunnels at once, beside other connections) overflows
    # it, and the dropped handshakes cost 1, 3, 7 s of SYN retries, past a 10 s connect timeout.
    request_queue_size = 128


@dataclass
class HttpsExchange:
    """A stand-in for one exchange: HTTPS on 127.0.0.1, a test-CA certificate for `hostname`."""

    hostname: str
    cert: Path
    key: Path
    sni: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)
    port: int = 0
    clock_offset: float = 0.0
    """Seconds added to the time this exchange states (serverTime, closeTime)."""
    data_age: float = 0.0
    """How old the ticker's closeTime is, in seconds (a stale market or a delaying parent)."""

    def __post_init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(self.cert, self.key)
        self.context.sni_callback = lambda s, name, c: self.sni.append(name)
        self._server = _Server(
            ("127.0.0.1", 0),
            _Handler,
            self.context,
            # The clock starts at TCP accept: through a CONNECT tunnel, before the client (a
            # fresh process) has even read the proxy's 200. Generous, so that a loaded machine
            # does not turn a working path into "closed during the TLS handshake".
            timeout=HANDSHAKE_BUDGET,
            on_handshake_error=lambda exc: self.handshake_errors.append(repr(exc)),
        )
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def short_tempdir() -> Path:
    # sun_path is 108 bytes: pytest's tmp_path can be longer than that.
    return Path(tempfile.mkdtemp(prefix="en-", dir="/tmp"))


def cli(*args: str) -> list[str]:
    """`enclave-net ARGS` as a child process's argv (the module, so no install is needed)."""
    return [sys.executable, "-m", "enclave_net._cli", *args]


def relay_args(listen: Path, host: str, port: int) -> tuple[str, ...]:
    """`enclave-net egress` arguments that relay `unix:listen` to a local stand-in for `host`."""
    return (
        *("--route", f"unix:{listen}={host}:{port}"),
        *("--resolve", f"{host}=127.0.0.1", "--allow-private"),
    )


class ProxyProcess:
    """`enclave-net egress ...` as a child process; waits for its "ready" log line."""

    def __init__(self, args: Sequence[str], *, netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen(
            [*prefix, *cli("egress", *args)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            self.stop()
            raise RuntimeError(f"egress proxy did not start: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "raw", "text": line.rstrip()}
            self.lines.append(record)
            if record.get("event") == "ready":
                self._ready.set()
        self._ready.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r.get("event") == name]

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in list(self.lines) if predicate(r)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no matching log line; got {self.lines[-20:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def namespaces_unavailable() -> str | None:
    """A reason to skip, or None if root network namespaces work here."""
    if os.geteuid() != 0:
        return "needs root for network namespaces (CI runs as root)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2 / util-linux)"
    probe = f"{_PROBE_NETNS}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


class Enclave:
    """A network namespace like an enclave's: only `lo`, DOWN; no routes, no DNS.

    Unix sockets on the shared filesystem still connect across namespaces, standing in for
    vsock to the parent.
    """

    def __init__(self) -> None:
        self.name = f"{_ENCLAVE_NETNS}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self._children: list[subprocess.Popen[str]] = []

    def run(
        self, args: Sequence[str], *, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def spawn(self, args: Sequence[str]) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._children.append(child)
        return child

    def lo_up(self) -> None:
        self.run(["ip", "link", "set", "lo", "up"]).check_returncode()

    def close(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
            if child.stderr is not None:
                child.stderr.close()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


def wait_for_path(path: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


#: How long `stop_accepting` waits for a listener's threads: longer than any of them blocks
#: outside accept() (WorkerPoolRelay's relay loop gives up after 10 s of silence).
ACCEPTOR_STOP_BUDGET = 20.0


def stop_accepting(listener: socket.socket, threads: Iterable[threading.Thread]) -> None:
    """Stop the threads that loop on `listener.accept()`, then close it.

    `close()` alone frees the descriptor number while a thread still waits in accept() on it
    (Linux does not wake that thread). When a signal interrupts the wait (SIGCHLD from an
    exiting child while the main thread has all signals blocked to spawn another one), the
    kernel restarts accept4() with the same number, which by then may belong to the next
    test's HTTPS stand-in: the stale thread steals that test's connections. shutdown() wakes
    every accept() on the socket (EINVAL) and fails any later one while the number is still
    ours; once the threads have returned, nothing uses the number and closing is safe."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + ACCEPTOR_STOP_BUDGET
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
        if thread.is_alive():
            # Leave the (shut down) socket open: closing it now would re-create the race.
            raise AssertionError(
                f"{thread.name} still running {ACCEPTOR_STOP_BUDGET:g}s after shutdown"
            )
    listener.close()


@contextlib.contextmanager
def closing_all(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in things:
            thing.close()


class ProxyThread:
    """An in-process `EgressProxy` on its own event loop thread, for tests that inspect it."""

    def __init__(self, config: Any) -> None:
        import asyncio

        from enclave_net.proxy import EgressProxy

        self.loop = asyncio.new_event_loop()
        self.proxy = EgressProxy(config)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def doctor_findings(output: str) -> dict[str, dict[str, str]]:
    """The doctor's `--json` output, by check name (checked against its published schema)."""
    report = check("doctor", json.loads(output))
    return {f["check"]: f for f in report["findings"]}


def run_doctor(
    main: Callable[[list[str]], int], capsys: Any, *args: str
) -> tuple[int, dict[str, dict[str, str]]]:
    """`main(["doctor", "--json", ...])` in process (enclave-net's or an app's), no resolv.conf."""
    code = main(["doctor", "--json", "--resolv-conf", "/nonexistent", *args])
    return code, doctor_findings(capsys.readouterr().out)


def doctor_via(
    main: Callable[[list[str]], int],
    capsys: Any,
    route: UnixAddress,
    ca: CertAuthority,
    *args: str,
    upstream: str = "api.binance.com:443",
) -> tuple[int, dict[str, dict[str, str]]]:
    """The doctor with one route to `upstream` and the test CA."""
    return run_doctor(
        main, capsys, "--route", f"{upstream}={route}", "--ca-bundle", str(ca.ca_pem), *args
    )


def route_to(host: str, exchange: HttpsExchange, listen: UnixAddress) -> ProxyThread:
    """Our proxy relaying `listen` to the local server standing in for `host`."""
    return ProxyThread(
        ProxyConfig(
            routes=(ProxyRoute(listen, parse_host_port(f"{host}:{exchange.port}")),),
            pins={host: Pin("127.0.0.1")},
            allow_private=True,
        )
    )
