"""Helpers to run code against `/dev/nsm` through the LD_PRELOAD shim, off-enclave.

The pieces are independent, so the fake server below can be swapped for the real emulator:

    lib = build_shim_or_skip(tmp_dir)                       # or the `shim_lib` fixture
    with FakeNsmServer(sock) as server:                     # or `nsm emulator serve --socket sock`
        env = preload_env(lib, sock)
        result = run_in_shim("from nsm.device import DeviceTransport; ...", env)

`FakeNsmServer` speaks the emulator framing (4-byte big-endian length, then the bytes, both ways,
any number of pairs per connection). It is written from the framing's description, not with
nsm._framing, so that it checks the shim rather than agreeing with it by construction.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest

import nsm.shim

__all__ = [
    "REPO_ROOT",
    "FakeNsmServer",
    "Handler",
    "RawReply",
    "build_shim_or_skip",
    "canned_answer",
    "compile_c",
    "preload_env",
    "run_in_shim",
    "short_socket_dir",
    "wait_for_path",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class RawReply:
    """Bytes the fake server writes as they are, without a frame header (to test bad peers)."""

    data: bytes
    #: Close the connection after writing (a peer that dies mid-frame).
    hangup: bool = False


#: What a handler returns: bytes to send as one frame, a RawReply, or None to hang up.
Handler = Callable[[bytes], bytes | RawReply | None]


def canned_answer(request: bytes) -> bytes:
    """A plausible NSM answer for each request shape (src/api/mod.rs), CBOR-encoded."""
    try:
        decoded = cbor2.loads(request)
    except Exception:
        return cbor2.dumps({"Error": "InvalidArgument"})
    answer: Any
    if decoded == "DescribeNSM":
        answer = {
            "DescribeNSM": {
                "version_major": 1,
                "version_minor": 0,
                "version_patch": 0,
                "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
                "max_pcrs": 32,
                "locked_pcrs": list(range(16)),
                "digest": "SHA384",
            }
        }
    elif decoded == "GetRandom":
        answer = {"GetRandom": {"random": bytes(range(256))}}
    elif isinstance(decoded, dict) and len(decoded) == 1:
        ((name, body),) = decoded.items()
        if name == "DescribePCR":
            answer = {"DescribePCR": {"lock": body["index"] < 16, "data": bytes(48)}}
        elif name == "ExtendPCR":
            answer = {"ExtendPCR": {"data": bytes(48)}}
        elif name in ("LockPCR", "LockPCRs"):
            answer = name
        elif name == "Attestation":
            answer = {"Attestation": {"document": b"\x84" + bytes(100)}}
        else:
            answer = {"Error": "InvalidOperation"}
    else:
        answer = {"Error": "InvalidOperation"}
    return cbor2.dumps(answer)


class FakeNsmServer:
    """A thread serving the emulator framing on a Unix socket; records every request."""

    def __init__(self, path: str | os.PathLike[str], handler: Handler = canned_answer) -> None:
        self.path = Path(path)
        self.handler = handler
        self.requests: list[bytes] = []
        self.accepted = 0
        #: Connections that ended (the peer closed, or the handler hung up).
        self.ended = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> FakeNsmServer:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FakeNsmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until(self, predicate: Callable[[FakeNsmServer], bool], timeout: float = 5) -> bool:
        """Wait until `predicate(self)` holds (checked whenever a counter changes)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._cond:
                self.accepted += 1
                self._conns.append(conn)
                self._cond.notify_all()
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                header = _recv_exact(conn, _HEADER.size)
                if header is None:
                    return
                (length,) = _HEADER.unpack(header)
                request = _recv_exact(conn, length) if length else b""
                if request is None:
                    return
                with self._cond:
                    self.requests.append(request)
                    self._cond.notify_all()
                reply = self.handler(request)
                if reply is None:
                    return
                if isinstance(reply, RawReply):
                    conn.sendall(reply.data)
                    if reply.hangup:
                        return
                else:
                    conn.sendall(_HEADER.pack(len(reply)) + reply)
        except OSError:
            return
        finally:
            conn.close()
            with self._cond:
                self.ended += 1
                self._cond.notify_all()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A directory for sockets: sun_path holds 108 bytes, and pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="nsm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_shim_or_skip(out_dir: Path) -> Path:
    """Compile the shim, or skip the calling test if this machine has no C compiler."""
    if nsm.shim.compiler() is None:
        pytest.skip("no C compiler (cc or $CC) to build the LD_PRELOAD shim; CI installs gcc")
    return nsm.shim.build(out_dir)


def compile_c(source: str, out: Path, *flags: str) -> Path:
    """Compile a small C program (a test client of the shim); skip if there is no compiler."""
    cc = nsm.shim.compiler()
    if cc is None:
        pytest.skip("no C compiler (cc or $CC) to build the C test client; CI installs gcc")
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(
        [cc, "-Wall", "-Wextra", "-Werror", *flags, "-o", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def preload_env(
    lib: str | os.PathLike[str],
    socket_path: str | os.PathLike[str] | None,
    *,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a process whose `/dev/nsm` is the emulator at `socket_path`.

    `socket_path=None` leaves NSM_EMULATOR unset (to test the shim's message about it).
    """
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = os.fspath(lib)
    env.pop("NSM_EMULATOR", None)
    if socket_path is not None:
        env["NSM_EMULATOR"] = f"unix:{os.fspath(socket_path)}"
    # The subprocess imports `nsm` from this checkout even if it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def run_in_shim(
    code: str, env: Mapping[str, str], *, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code` (this interpreter) in `env`; output captured as text, no check."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_path(path: Path, timeout: float = 10) -> None:
    """Wait for a server started in another process to create its socket."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)
