"""The doctor names each failure, including the previous team's chain rebuilt in namespaces:
`lo` down, resolv.conf -> 127.0.0.1, socat UDP:53 -> stream -> proxy -> a TCP DNS server."""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclave_net._cli import main
from enclave_net.address import UnixAddress, parse_host_port
from enclave_net.proxy_config import Pin, ProxyConfig, ProxyRoute
from nsm._server import EmulatorServer
from nsm.emulator import Emulator
from tests.enclave_net._support import (
    CertAuthority,
    Enclave,
    HttpsExchange,
    ProxyProcess,
    ProxyThread,
    cli,
    doctor_findings,
    doctor_via,
    relay_args,
    run_doctor,
    stop_accepting,
)


class TcpDnsServer:
    """An RFC 1035 §4.2.2 TCP DNS server that records what it was sent and never answers
    an incomplete message (like a real one, until its idle timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple[int, int]] = []  # (declared length, bytes that arrived)
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            slot = len(self.seen)
            try:
                while len(data) < 2 or len(data) - 2 < int.from_bytes(data[:2], "big"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) >= 2:  # record as it arrives: the wait is the point
                        entry = (int.from_bytes(data[:2], "big"), len(data) - 2)
                        if slot < len(self.seen):
                            self.seen[slot] = entry
                        else:
                            self.seen.append(entry)
            except OSError:
                pass

    def close(self) -> None:
        stop_accepting(self.sock, [self._acceptor])


@pytest.fixture
def legacy_chain(
    enclave: Enclave, sockdir: Path, start_proxy: Callable[..., ProxyProcess]
) -> Iterator[tuple[Enclave, Path, TcpDnsServer]]:
    if shutil.which("socat") is None:
        pytest.skip("needs socat (Debian package socat) to rebuild the previous chain")
    dns = TcpDnsServer()
    relay = sockdir / "dns.sock"  # stands in for vsock 3:53
    # Parent: "vsock-proxy 53 <dns> 53", TCP-only, like AWS's.
    start_proxy(*relay_args(relay, "dns.test", dns.port))
    # Enclave: `socat UDP4-LISTEN:53,fork,reuseaddr VSOCK-CONNECT:3:53 &`, Unix for vsock.
    enclave.spawn(["socat", "UDP4-LISTEN:53,fork,reuseaddr", f"UNIX-CONNECT:{relay}"])
    resolv = sockdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    yield enclave, resolv, dns
    dns.close()


def _wait_udp_53(enclave: Enclave) -> None:
    for _ in range(100):
        if ":0035 " in enclave.run(["cat", "/proc/net/udp"]).stdout:
            return
        time.sleep(0.05)
    raise AssertionError("socat never bound UDP 53")


# The doctor's --timeout bounds every connect and TLS handshake. Tests of a failure keep it short
# (the timeout is what they wait for); tests of a working path give it room, since a loaded
# machine (2 CPUs, run queue ~10) can stretch a first handshake in a fresh process past 2 s.
FAILURE_BUDGET = "2"
SUCCESS_BUDGET = "30"


def _doctor(
    enclave: Enclave, *args: str, budget: str = FAILURE_BUDGET
) -> tuple[int, dict[str, dict[str, str]]]:
    done = enclave.run(cli("doctor", "--json", "--timeout", budget, *args), timeout=300)
    assert done.stdout, done.stderr
    return done.returncode, doctor_findings(done.stdout)


@pytest.mark.root
def test_previous_chain_with_lo_down(
    legacy_chain: tuple[Enclave, Path, TcpDnsServer], sockdir: Path
) -> None:
    enclave, resolv, _ = legacy_chain
    _wait_udp_53(enclave)  # binding 0.0.0.0:53 works with lo down: socat *looks* healthy
    code, found = _doctor(
        enclave,
        "--resolv-conf",
        str(resolv),
        "--route",
        f"api.binance.com:443=unix:{sockdir}/no-proxy.sock",
    )
    assert code == 1
    assert found["lo"]["status"] == "warn"
    assert "lo DOWN" in found["lo"]["message"] and "ENETUNREACH" in found["lo"]["message"]
    assert found["resolv.conf"]["status"] == "fail"
    assert "127.0.0.1 but lo is DOWN" in found["resolv.conf"]["message"]
    assert found["dns-relay"]["status"] == "fail"
    assert "socat UDP4-LISTEN:53" in found["dns-relay"]["message"]
    assert "RFC 1035" in found["dns-relay"]["remedy"]
    route = found["egress api.binance.com:443"]
    assert route["status"] == "fail"
    assert "no listener on parent" in route["message"]
    assert "allowlist" in route["remedy"]


@pytest.mark.root
def test_previous_chain_with_lo_up(legacy_chain: tuple[Enclave, Path, TcpDnsServer]) -> None:
    enclave, resolv, dns = legacy_chain
    enclave.lo_up()
    _wait_udp_53(enclave)
    code, found = _doctor(enclave, "--resolv-conf", str(resolv))
    assert code == 1
    assert found["lo"]["status"] == "ok"
    assert found["dns"]["status"] == "fail"
    assert "UDP DNS forwarded into a TCP-only proxy" in found["dns"]["message"]
    # And the TCP DNS server really did misread the datagram: the query ID became a length.
    assert dns.seen, "the query never reached the TCP DNS server"
    declared, arrived = dns.seen[0]
    assert declared > arrived


@pytest.mark.root
def test_sealed_enclave_with_a_working_route_is_healthy(
    enclave: Enclave,
    pki: CertAuthority,
    binance: HttpsExchange,
    sockdir: Path,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    listen = sockdir / "b.sock"
    start_proxy(*relay_args(listen, "api.binance.com", binance.port))
    missing = sockdir / "resolv.conf"  # dangling, as in a real enclave
    missing.symlink_to("/run/resolvconf/resolv.conf-does-not-exist")
    code, found = _doctor(
        enclave,
        "--resolv-conf",
        str(missing),
        "--lo-up",
        "--route",
        f"api.binance.com:443=unix:{listen}",
        "--ca-bundle",
        str(pki.ca_pem),
        budget=SUCCESS_BUDGET,
    )
    assert found["lo"]["status"] == "ok"  # --lo-up brought it up with the ioctl
    assert "dangling" in found["resolv.conf"]["message"]
    egress = found["egress api.binance.com:443"]
    concurrency = found["concurrency api.binance.com:443"]
    assert egress["status"] == "ok", egress  # the message says why, if not
    assert found["http api.binance.com"]["status"] == "ok", found["http api.binance.com"]
    assert "X-MBX-USED-WEIGHT-1M 2" in found["http api.binance.com"]["message"]
    # Without the app's probes the clock comes from the HTTP Date header (1 s steps), and no
    # app-level check (the oracle's freshness) runs: tests/oracle_example/test_doctor_probes.py.
    assert found["clock"]["status"] == "ok"
    assert "api.binance.com Date header" in found["clock"]["message"]
    assert concurrency["status"] == "ok", concurrency
    assert not any(check.startswith("freshness") for check in found)
    assert found["attestation"]["status"] == "warn"  # no NSM here: development mode
    assert code == (1 if any(f["status"] == "fail" for f in found.values()) else 0)
    assert not [f for f in found.values() if f["status"] == "fail"]


@pytest.mark.parametrize(
    ("status", "verdict", "words"),
    [
        (451, "fail", "refuses this egress IP's jurisdiction"),
        (429, "fail", "rate limited (Retry-After 120s)"),
        (418, "fail", "banned"),
        (403, "fail", "WAF"),
        (503, "warn", "server is failing"),
    ],
)
def test_http_status_is_explained(
    status: int,
    verdict: str,
    words: str,
    binance_route: UnixAddress,
    pki: CertAuthority,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, found = doctor_via(
        main,
        capsys,
        binance_route,
        pki,
        "--probe",
        f"https://api.binance.com/status/{status}",
    )
    finding = found["http api.binance.com"]
    assert finding["status"] == verdict
    assert words in finding["message"]
    assert finding["remedy"]
    assert code == (1 if verdict == "fail" else 0)


def test_misrouted_port_is_named(
    kraken_route: UnixAddress, pki: CertAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    code, found = doctor_via(main, capsys, kraken_route, pki)
    assert code == 1
    finding = found["egress api.binance.com:443"]
    assert "proxied to a different host" in finding["message"]


def test_connect_refusal_is_named(
    pki: CertAuthority, sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = UnixAddress(str(sockdir / "c.sock"))
    proxy = ProxyThread(
        ProxyConfig(connect=listen, allow=frozenset({parse_host_port("api.kraken.com:443")}))
    )
    try:
        code, found = run_doctor(
            main,
            capsys,
            "--connect",
            str(listen),
            "--allow",
            "api.binance.com:443",
            "--ca-bundle",
            str(pki.ca_pem),
        )
    finally:
        proxy.close()
    assert code == 1
    finding = found["egress api.binance.com:443"]
    assert "refused" in finding["message"] and "allow list" in finding["remedy"]


def test_accept_then_close_is_named(
    pki: CertAuthority, sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # vsock-proxy's worker panics when its upstream connect fails (aws/aws-nitro-enclaves-cli#549):
    # the enclave sees the stream close during the handshake. Our proxy in route mode does the
    # same on a dead port.
    listen = UnixAddress(str(sockdir / "d.sock"))
    proxy = ProxyThread(
        ProxyConfig(
            routes=(ProxyRoute(listen, parse_host_port("api.binance.com:9")),),
            pins={"api.binance.com": Pin("127.0.0.1")},
            allow_private=True,
        )
    )
    try:
        code, found = doctor_via(main, capsys, listen, pki)
    finally:
        proxy.close()
    assert code == 1
    assert "closed during the TLS handshake" in found["egress api.binance.com:443"]["message"]


def test_proxy_variables_are_flagged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://10.0.0.1:3128")
    code, found = run_doctor(main, capsys)
    assert found["proxy-env"]["status"] == "warn"
    assert "HTTPS_PROXY" in found["proxy-env"]["message"]
    assert code == 0


def test_text_output_has_status_and_remedy(
    capsys: pytest.CaptureFixture[str], sockdir: Path
) -> None:
    code = main(
        [
            "doctor",
            "--resolv-conf",
            "/nonexistent",
            "--route",
            f"api.binance.com:443=unix:{sockdir}/none.sock",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "\nfail  egress api.binance.com:443: no listener on parent" in out
    assert "      remedy: the proxy is not running" in out


def test_parent_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "egress.toml"
    config.write_text(
        '[[route]]\nlisten = "unix:/nonexistent/egress.sock"\nupstream = "api.binance.com:443"\n'
        '[resolve]\n"api.binance.com" = "169.254.169.254"\n'
    )
    yaml = tmp_path / "vsock-proxy.yaml"
    yaml.write_text('allowlist:\n- {address: api.binance.com, port: "443"}\n')
    # A process that looks like the previous team's `vsock-proxy 53 8.8.8.8 53`.
    decoy = subprocess.Popen(
        [
            "bash",
            "-c",
            f'exec -a vsock-proxy {sys.executable} -c "$0" "$@"',
            "import time; time.sleep(30)",
            "53",
            "8.8.8.8",
            "53",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cmdline = Path(f"/proc/{decoy.pid}/cmdline")
    for _ in range(200):
        if cmdline.read_bytes().startswith(b"vsock-proxy\0"):
            break
        time.sleep(0.01)
    try:
        code = main(
            [
                "doctor",
                "--parent",
                "--json",
                "--config",
                str(config),
                "--vsock-proxy-config",
                str(yaml),
            ]
        )
    finally:
        decoy.kill()
        decoy.wait()
    found = doctor_findings(capsys.readouterr().out)
    assert code == 1
    assert "relays vsock to port 53 over TCP" in found["parent-dns-proxy"]["message"]
    assert "non-integer port" in found["vsock-proxy allowlist"]["message"]
    assert "metadata service" in found["parent dns api.binance.com"]["message"]
    assert found["listener unix:/nonexistent/egress.sock"]["status"] == "fail"


# --- Concurrency ------------------------------------------------------------------------------


class WorkerPoolRelay:
    """vsock-proxy's model: `workers` threads, each serving one connection at a time from a
    shared listening socket; further connections wait in the backlog, accepted by the kernel."""

    def __init__(self, listen: Path, upstream_port: int, workers: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(listen))
        self.sock.listen(64)
        self.upstream_port = upstream_port
        self._workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(workers)]
        for worker in self._workers:
            worker.start()

    def _worker(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            # A plain connect to an IP: the doctor forbids name lookups in this process.
            up = socket.socket()
            with client, up:
                up.connect(("127.0.0.1", self.upstream_port))
                pair = {client: up, up: client}
                done = False
                while not done:
                    ready, _, _ = select.select(list(pair), [], [], 10)
                    if not ready:
                        break
                    for sock in ready:
                        try:
                            data = sock.recv(65536)
                            if data:
                                pair[sock].sendall(data)
                        except OSError:
                            data = b""
                        if not data:
                            done = True

    def close(self) -> None:
        stop_accepting(self.sock, self._workers)


def test_concurrency_stall_names_num_workers(
    binance: HttpsExchange, pki: CertAuthority, sockdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = sockdir / "w.sock"
    relay = WorkerPoolRelay(listen, binance.port, workers=2)
    try:
        code, found = run_doctor(
            main,
            capsys,
            "--route",
            f"api.binance.com:443=unix:{listen}",
            "--ca-bundle",
            str(pki.ca_pem),
            "--concurrency",
            "3",
            "--timeout",
            "3",  # one handshake alone must pass within it, on a loaded machine too
        )
    finally:
        relay.close()
    assert found["egress api.binance.com:443"]["status"] == "ok"  # one at a time works
    finding = found["concurrency api.binance.com:443"]
    assert finding["status"] == "fail"
    assert "1 of 3 simultaneous streams stalled" in finding["message"]
    # Confirmed by its cause: the waiting stream was served once the held ones were closed.
    assert "1 of them got it as soon as those closed" in finding["message"]
    assert "--num_workers" in finding["remedy"]
    assert code == 1


def test_concurrency_through_our_proxy_is_ok(
    binance_route: UnixAddress, pki: CertAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    code, found = doctor_via(main, capsys, binance_route, pki, "--concurrency", "16")
    finding = found["concurrency api.binance.com:443"]
    assert finding["status"] == "ok"
    assert "16 streams at once" in finding["message"]
    assert code == 0


# --- Attestation ------------------------------------------------------------------------------


@pytest.fixture
def nsm_emulator(sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    servers: list[EmulatorServer] = []

    def start(**options: Any) -> Path:
        path = sockdir / f"nsm{len(servers)}.sock"
        server = EmulatorServer(path, Emulator(**options))
        server.serve_in_thread()
        servers.append(server)
        monkeypatch.setenv("NSM_EMULATOR", f"unix:{path}")
        return path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_attestation_ok_with_the_emulator(
    nsm_emulator: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    nsm_emulator(seed=1)
    code, found = run_doctor(main, capsys)
    finding = found["attestation"]
    assert finding["status"] == "ok", finding
    assert "DescribeNSM works, a fresh document with our nonce parses, PCR0 " in finding["message"]
    assert "not debug mode" in finding["message"]
    assert code == 0
    # Production refuses the emulator, as the enclave's boot does.
    code, found = run_doctor(main, capsys, "--production")
    assert found["attestation"]["status"] == "fail"
    assert "emulated NSM attests nothing" in found["attestation"]["message"]
    assert code == 1


def test_attestation_debug_mode_warns(
    nsm_emulator: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    nsm_emulator(seed=1, debug=True)
    code, found = run_doctor(main, capsys)
    finding = found["attestation"]
    assert finding["status"] == "warn"
    assert "PCR0 is all zero" in finding["message"] and "debug mode" in finding["message"]
    assert "--debug-mode" in finding["remedy"]
    assert code == 0


def test_attestation_without_nsm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sockdir: Path
) -> None:
    if Path("/dev/nsm").exists():
        pytest.skip("a real NSM is present")
    monkeypatch.delenv("NSM_EMULATOR", raising=False)
    code, found = run_doctor(main, capsys)
    assert found["attestation"]["status"] == "warn"
    assert "no NSM" in found["attestation"]["message"]
    assert code == 0
    code, found = run_doctor(main, capsys, "--production")
    assert found["attestation"]["status"] == "fail"
    assert code == 1
    # An emulator named but not running: unreachable, with the path in the message.
    monkeypatch.setenv("NSM_EMULATOR", f"unix:{sockdir}/absent.sock")
    code, found = run_doctor(main, capsys)
    assert found["attestation"]["status"] == "fail"
    assert "unusable" in found["attestation"]["message"]
    assert code == 1
