"""`nitro-oracle demo` (`make demo`): the whole oracle on one machine, verified end to end.

`OracleStack` starts, in order: the NSM emulator (Unix socket, in this process), the exchanges
(live through the parent's DNS, or the local HTTPS replay with a demo CA), the parent egress
proxy (route mode, one Unix socket per exchange standing in for vsock ports), the enclave app as
a child process (as root: in a fresh network namespace with no interface up, `unshare --net`,
so its only way out is those Unix sockets; otherwise a plain process; DNS is guarded off in the
enclave process either way), and the gateway on 127.0.0.1. `close()` stops all of it in reverse
order, and `run_demo` calls it on success, failure, Ctrl-C and SIGTERM alike.

The tests drive the same stack (tests/oracle_example/test_enclave.py and friends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

from cryptography import x509

from attestation import AttestationDocument, Verifier, load_pem_roots
from enclave_net.address import HostPort, TcpAddress, UnixAddress
from enclave_net.gateway import Gateway
from enclave_net.jsonlog import json_logging
from enclave_net.proxy import EgressProxy
from enclave_net.proxy_config import Pin, ProxyConfig, ProxyRoute
from nsm._server import EmulatorServer, write_root_pem
from nsm.emulator import Emulator
from oracle_example.client import GetResult, get_report, http_get, summary
from oracle_example.config import OracleConfig
from oracle_example.errors import ClientError, ReportVerificationError
from oracle_example.kms_parent import SealedKeyParent
from oracle_example.oracle import expected_pcr16
from oracle_example.probes import probe_live
from oracle_example.replay import DemoCertificates, ReplayExchange

__all__ = ["OracleStack", "probe_live", "run_demo"]

_LOGGERS = ("enclave_net", "oracle_example")

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: Long enough for a cold Python start, boot and the first round on a slow 2-core machine.
READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@dataclass(frozen=True)
class _Loop:
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def _cancel_remaining() -> None:
    """Cancel and await every task left on the loop (connection handlers), as asyncio.run does,
    so no stream is garbage-collected after its loop is closed."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class OracleStack:
    """Everything the demo runs. `start()`, then use `gateway_url`; `close()` always."""

    def __init__(
        self,
        *,
        config: OracleConfig | None = None,
        seed: int | None = None,
        replay: bool = True,
        netns: bool | None = None,
        emulator_debug: bool = False,
        interval: float = 2.0,
        enclave_args: Sequence[str] = (),
        workdir: Path | None = None,
        sealed: bool = False,
    ) -> None:
        self.config = config or OracleConfig()
        self.replay_mode = replay
        self.netns = _netns_available() if netns is None else netns
        self.interval = interval
        self.enclave_args = tuple(enclave_args)
        # sun_path is 108 bytes: keep socket paths short.
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="oe-demo-", dir="/tmp"))
        self._own_dir = workdir is None
        self.emulator = Emulator(seed=seed, debug=emulator_debug)
        self.root_pem = self.emulator.root_pem
        self.replay: ReplayExchange | None = None
        self.certs: DemoCertificates | None = None
        self.enclave: subprocess.Popen[bytes] | None = None
        self.enclave_log = self.dir / "enclave.log"
        self.gateway: Gateway | None = None
        self.proxy: EgressProxy | None = None
        self._emulator_server: EmulatorServer | None = None
        self._loop: _Loop | None = None
        self._log_file: TextIO | None = None
        self.stopped: list[str] = []
        # --sealed-key: the KMS double, credentials and blob store, and the parent's KMS route.
        self.sealed = sealed
        self.kms: SealedKeyParent | None = None
        self.kms_proxy: EgressProxy | None = None

    # --- addresses -------------------------------------------------------------------------

    @property
    def nsm_socket(self) -> Path:
        return self.dir / "nsm.sock"

    @property
    def enclave_socket(self) -> Path:
        return self.dir / "enclave.sock"

    @property
    def _kms_route(self) -> UnixAddress:
        return UnixAddress(str(self.dir / "egress-kms.sock"))

    def egress_socket(self, source: str) -> Path:
        return self.dir / f"egress-{source}.sock"

    @property
    def gateway_url(self) -> str:
        if self.gateway is None or not isinstance(self.gateway.bound, TcpAddress):
            raise RuntimeError("the gateway is not running")
        return f"http://{self.gateway.bound.host}:{self.gateway.bound.port}"

    @property
    def pinned_pcrs(self) -> dict[int, bytes]:
        """What a consumer pins: PCR0-2 as `nitro-cli build-enclave` prints them, and PCR16."""
        pcrs = {i: self.emulator.pcr(i) for i in (0, 1, 2)}
        pcrs[16] = expected_pcr16(self.config)
        return pcrs

    def verifier(self) -> Verifier:
        return Verifier(roots=load_pem_roots(self.root_pem))

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._emulator_server = EmulatorServer(self.nsm_socket, self.emulator)
        self._emulator_server.serve_in_thread()
        pins: dict[str, Pin] = {}
        if self.replay_mode:
            self.certs = DemoCertificates.create(self.dir)
            self.replay = ReplayExchange(self.certs)
            pins = {s.host: Pin("127.0.0.1", self.replay.port) for s in self.config.sources}
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="demo-parent", daemon=True)
        thread.start()
        self._loop = _Loop(loop, thread)
        routes = tuple(
            ProxyRoute(UnixAddress(str(self.egress_socket(s.id))), HostPort(s.host, 443))
            for s in self.config.sources
        )
        self.proxy = EgressProxy(
            ProxyConfig(routes=routes, pins=pins, allow_private=self.replay_mode)
        )
        self._loop.run(self.proxy.start())
        if self.sealed:
            self.kms = SealedKeyParent(
                self.dir,
                root_pem=self.root_pem,
                pcr0=self.emulator.pcr(0),
                pcr16=expected_pcr16(self.config),
            ).start()
            self.kms_proxy = EgressProxy(self.kms.proxy_config(self._kms_route))
            self._loop.run(self.kms_proxy.start())
        self._start_enclave()
        self._wait_for_socket(self.enclave_socket)
        self.gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0), enclave=UnixAddress(str(self.enclave_socket))
        )
        self._loop.run(self.gateway.start())

    def enclave_command(self) -> list[str]:
        config_path = self.dir / "oracle-config.json"
        config_path.write_text(json.dumps(self.config.to_json(), indent=1))
        args = [
            sys.executable,
            "-m",
            "oracle_example._cli",
            "enclave",
            "--dev",
            "--nsm",
            f"unix:{self.nsm_socket}",
            "--listen",
            f"unix:{self.enclave_socket}",
            "--config",
            str(config_path),
            "--interval",
            str(self.interval),
        ]
        for source in self.config.sources:
            args += ["--route", f"{source.host}:443=unix:{self.egress_socket(source.id)}"]
        if self.certs is not None:
            args += ["--ca-bundle", str(self.certs.ca_pem)]
        if self.kms is not None:
            args += self.kms.enclave_args(self._kms_route)
        args += self.enclave_args
        # `unshare --net` execs the command in a new network namespace: only `lo`, DOWN, no
        # routes. It dies with the process, so nothing is left to delete afterwards.
        return (["unshare", "--net", "--"] if self.netns else []) + args

    def restart_enclave(self) -> None:
        """Stop the enclave and launch it again, as on a relaunch of the same EIF: the NSM's
        PCRs 16 and up are fresh, everything else (image, instance, parent) is the same."""
        self._stop_enclave()
        self.emulator.restart()
        self._start_enclave(log_mode="a")
        self._wait_for_socket(self.enclave_socket)

    def _start_enclave(self, log_mode: Literal["w", "a"] = "w") -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.pop("NSM_EMULATOR", None)  # the enclave is told explicitly, with --nsm
        self._log_file = self.enclave_log.open(log_mode)
        self.enclave = subprocess.Popen(
            self.enclave_command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: a Ctrl-C in the terminal reaches us, and we stop it.
            start_new_session=True,
        )

    def _wait_for_socket(self, path: Path, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.enclave is not None and self.enclave.poll() is not None:
                raise RuntimeError(
                    f"the enclave exited with {self.enclave.returncode}:\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the enclave never listened on {path}\n{self.log_tail()}")
            time.sleep(0.05)

    def enclave_lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in self.enclave_log.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "raw", "text": line})
        return out

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        result: dict[str, Any] = http_get(self.gateway_url, "/v1/health", timeout=timeout)
        return result

    def wait_ready(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll health until every feed has a report (or `predicate` holds)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.enclave is not None and self.enclave.poll() is not None:
                raise RuntimeError(
                    f"the enclave exited with {self.enclave.returncode}:\n" + self.log_tail()
                )
            try:
                health = self.health()
                last = health
                ok = predicate(health) if predicate else health.get("status") == "ok"
                if ok:
                    return health
            except ClientError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"enclave not ready after {timeout} s (last: {last})\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.enclave_log.read_text().splitlines()[-n:])
        return ""

    def get(self, feed: str, **kwargs: Any) -> GetResult:
        options: dict[str, Any] = {
            "verifier": self.verifier(),
            "pcrs": self.pinned_pcrs,
            "config_hash": self.config.config_hash,
            "min_sources": self.config.min_sources,
        }
        options.update(kwargs)
        return get_report(self.gateway_url, feed, **options)

    def _stop_enclave(self) -> None:
        if self.enclave is not None:
            if self.enclave.poll() is None:
                self.enclave.send_signal(signal.SIGTERM)
                try:
                    self.enclave.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.enclave.kill()
                    self.enclave.wait(_STOP_TIMEOUT)
            self.stopped.append(f"enclave (pid {self.enclave.pid}, exit {self.enclave.returncode})")
            self.enclave = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop everything started, in reverse order; safe to call twice or after a failure."""
        self._stop_enclave()
        if self._loop is not None:
            parts = (("gateway", self.gateway), ("egress proxy", self.proxy))
            for name, part in (*parts, ("KMS route", self.kms_proxy)):
                if part is not None:
                    with contextlib.suppress(Exception):
                        self._loop.run(part.close())
                    self.stopped.append(name)
            self.gateway = self.proxy = self.kms_proxy = None
            with contextlib.suppress(Exception):
                self._loop.run(_cancel_remaining())
            self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
            self._loop.thread.join(_STOP_TIMEOUT)
            self._loop.loop.close()
            self._loop = None
        if self.kms is not None:
            self.kms.close()
            self.kms = None
            self.stopped.append("KMS double, credentials endpoint, blob store")
        if self.replay is not None:
            self.replay.close()
            self.replay = None
            self.stopped.append("replay exchange")
        if self._emulator_server is not None:
            self._emulator_server.shutdown()
            self._emulator_server.server_close()
            self._emulator_server = None
            self.stopped.append("NSM emulator")
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> OracleStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the demo -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _attestation_lines(document: bytes) -> list[str]:
    """The attestation behind the reports, as a person reads it (it was verified above)."""
    parsed = AttestationDocument.parse(document)
    lines = [
        "",
        f"attestation      {len(document)} bytes, module {parsed.module_id}, "
        f"{datetime.fromtimestamp(parsed.timestamp_ms / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC",
        "certificate chain (root first, leaf last; the root is the emulator's, pinned by the "
        "consumer)",
    ]
    for der in [*parsed.cabundle, parsed.certificate]:
        cert = x509.load_der_x509_certificate(der)
        common_name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(common_name[0].value) if common_name else cert.subject.rfc4514_string()
        lines.append(
            f"  {name:<58} {cert.not_valid_before_utc:%Y-%m-%d %H:%M} -> "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    return lines


def _restart_with_sealed_key(
    stack: OracleStack, before: dict[str, Any], write: Callable[[str], None]
) -> tuple[dict[str, Any], bool]:
    """Restart the enclave; with --sealed-key the signer address must come back unchanged."""
    assert stack.kms is not None
    blob = stack.kms.blob_file.stat().st_size
    write(
        f"sealed key       boot 1 ({before['key']}): born from NSM randomness, KMS Encrypt, "
        f"{blob} bytes of ciphertext in the parent's store"
    )
    write("restarting the enclave (same image and config: same PCR0 and PCR16) ...")
    stack.restart_enclave()
    after = stack.wait_ready(timeout=READY_TIMEOUT)
    write(f"signer address   {before['address']} before the restart")
    write(f"signer address   {after['address']} after the restart ({after['key']}: KMS")
    write("                 Decrypt + Recipient, allowed by the key policy for this PCR0/PCR16)")
    write(f"KMS double       served {', '.join(stack.kms.served())}")
    same = after["address"] == before["address"] and after["key"] == "unsealed"
    write("  -> SAME signer address across the restart" if same else _loud("ADDRESS CHANGED"))
    write("")
    return after, same


def _print(line: str) -> None:
    print(line, flush=True)


def _loud(text: str) -> str:
    return f"!!! {text} !!!"


def run_demo(
    out: Path,
    *,
    seed: int | None = None,
    force_replay: bool = False,
    netns: bool | None = None,
    write: Callable[[str], None] | None = None,
    sealed_key: bool = True,
) -> int:
    """Run the demo; 0 when both feeds verified end to end."""
    if write is None:
        write = _print
    config = OracleConfig()
    feeds = [f.symbol for f in config.feeds]
    out.mkdir(parents=True, exist_ok=True)
    write("nitro-oracle demo: NSM emulator -> enclave app -> egress -> exchanges -> signed report")
    if force_replay:
        live = False
        write(_loud("REPLAY FORCED (--replay): NOT LIVE PRICES"))
    else:
        probe = probe_live(config)
        answering = [h for h, why in probe.items() if why is None]
        live = len(answering) >= config.min_sources
        if not live:
            reasons = "; ".join(f"{h}: {why}" for h, why in probe.items() if why)
            write(
                _loud(
                    f"NO LIVE EXCHANGE ANSWERS ({len(answering)}/{len(probe)} gave a quote): USING "
                    "THE LOCAL HTTPS REPLAY OF HAND-WRITTEN RESPONSES IN EACH EXCHANGE'S SHAPE, "
                    "DEMO CA, TIMESTAMPS MOVED TO NOW: THESE ARE NOT LIVE PRICES"
                )
            )
            write(f"    (probe: {reasons})")
    stack = OracleStack(config=config, seed=seed, replay=not live, netns=netns, sealed=sealed_key)
    verified: list[GetResult] = []
    try:
        with (
            _sigterm_as_exit(),
            # Parent-side logs (proxy, gateway) go to a file, not over the demo's summary.
            json_logging(logging.INFO, names=_LOGGERS, path=out / "parent.log"),
        ):
            stack.start()
            write_root_pem(out / "emulator-root.pem", stack.root_pem)
            write(f"  NSM emulator   unix:{stack.nsm_socket} (software NSM; test PKI, not AWS)")
            upstream = (
                f"replay 127.0.0.1:{stack.replay.port} (demo CA {stack.certs.ca_pem.name})"
                if stack.replay is not None and stack.certs is not None
                else "live exchanges, resolved on the parent"
            )
            write(f"  egress proxy   {len(config.sources)} routes (unix sockets) -> {upstream}")
            where = (
                "in a network namespace with no interface up (unshare --net)"
                if stack.netns
                else "as a plain process (no network namespace: not root, or --no-netns)"
            )
            pid = stack.enclave.pid if stack.enclave is not None else "?"
            write(f"  enclave app    pid {pid} {where}; DNS guarded off; --dev (emulator)")
            write(f"  gateway        {stack.gateway_url} -> unix:{stack.enclave_socket}")
            if stack.kms is not None and stack.kms.double is not None:
                write(
                    f"  KMS double     {stack.kms.host} -> 127.0.0.1:{stack.kms.double.port} "
                    "(a double, not AWS; key policy on PCR0 and PCR16), with the parent's "
                    "credentials endpoint and write-once blob store"
                )
            health = stack.wait_ready(timeout=READY_TIMEOUT)
            write("")
            write("PCRs pinned by the consumer (PCR0-2 as the build prints them, PCR16 = config):")
            for index, value in sorted(stack.pinned_pcrs.items()):
                write(f"  {index:>2}  {value.hex()}")
            write(f"signer address   {health['address']} (public_key in the attestation)")
            write(f"configHash       {health['configHash']}")
            write("")
            failures = 0
            if stack.kms is not None:
                health, same = _restart_with_sealed_key(stack, health, write)
                failures += not same
            for feed in feeds:
                try:
                    result = stack.get(feed)
                except (ReportVerificationError, ClientError) as exc:
                    failures += 1
                    write(f"{feed}  NOT VERIFIED: {exc} [{exc.code}]")
                    continue
                for line in summary(result):
                    write(line)
                name = feed.replace("/", "-")
                (out / f"{name}.report.json").write_text(
                    json.dumps(result.report_json, indent=2, default=str) + "\n"
                )
                (out / "attestation.cbor").write_bytes(result.document)
                if result.verified is None:
                    failures += 1
                else:
                    verified.append(result)
            if verified:
                for line in _attestation_lines(verified[-1].document):
                    write(line)
            (out / "summary.json").write_text(
                json.dumps(
                    {
                        "mode": "live" if live else "replay",
                        "verifiedAt": datetime.now(UTC).isoformat(),
                        "address": health["address"],
                        "configHash": health["configHash"],
                        "pcrs": {str(i): v.hex() for i, v in stack.pinned_pcrs.items()},
                        "feeds": {r.feed: str(r.verified.price) for r in verified if r.verified},
                    },
                    indent=2,
                )
                + "\n"
            )
            shutil.copyfile(stack.enclave_log, out / "enclave.log")
            write("")
            write(
                f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
            )
    except KeyboardInterrupt:
        write("interrupted: stopping everything")
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        write(f"demo failed: {exc}")
        return 1
    finally:
        stack.close()
        write("stopped: " + ", ".join(stack.stopped))
    if failures:
        write(f"RESULT: {failures} feed(s) NOT verified")
        return 1
    write(f"RESULT: {len(verified)} feeds verified end to end ({'live' if live else 'REPLAY'})")
    return 0
