"""The real cffi device path, end to end: `Nsm.device()` -> libc ioctl -> LD_PRELOAD shim ->
emulator socket -> `Emulator`. Each operation's result must be identical to calling an
identically configured emulator directly.

The served and the direct emulator share a seed, a frozen clock and a deterministic random
source, and sign with deterministic ECDSA, so even attestation documents match byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator
from tests.nsm.shimtools import preload_env, run_in_shim

FROZEN = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)

# Each scenario: the same steps run in the shimmed subprocess and on the direct emulator;
# the last step's result is what is compared (as JSON-able data).
SCENARIOS: dict[str, str] = {
    "DescribeNSM": "d = m.describe(); result = [d.module_id, d.max_pcrs, sorted(d.locked_pcrs), "
    "d.digest.value, [d.version_major, d.version_minor, d.version_patch]]",
    "DescribePCR": "result = [[s.locked, s.data.hex()] for s in map(m.describe_pcr, range(32))]",
    "ExtendPCR": "m.extend_pcr(16, b'first'); result = m.extend_pcr(16, b'second').hex()",
    "LockPCR": "m.extend_pcr(17, b'x'); m.lock_pcr(17); s = m.describe_pcr(17); "
    "result = [s.locked, s.data.hex(), sorted(m.describe().locked_pcrs)]",
    "LockPCRs": "m.lock_pcrs(24); result = sorted(m.describe().locked_pcrs)",
    "GetRandom": "result = m.get_random(600).hex()",
    "Attestation": "m.extend_pcr(16, b'cfg'); m.lock_pcr(16); "
    "result = m.attestation(user_data=b'u' * 1024, nonce=b'n', public_key=b'k' * 65).hex()",
}


def counter_random() -> Callable[[int], bytes]:
    """A deterministic byte source (SHA-256 in counter mode): identical in both emulators."""
    state = {"n": 0}

    def draw(size: int) -> bytes:
        out = b""
        while len(out) < size:
            state["n"] += 1
            out += hashlib.sha256(state["n"].to_bytes(8, "big")).digest()
        return out[:size]

    return draw


def make_emulator() -> Emulator:
    return Emulator(seed=2026, clock=lambda: FROZEN, random_source=counter_random())


@pytest.fixture
def served(sock_dir: Path) -> Iterator[Path]:
    path = sock_dir / "nsm.sock"
    server = EmulatorServer(path, make_emulator())
    server.serve_in_thread()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def run_device(shim_lib: Path, socket: Path, body: str) -> object:
    prelude = textwrap.dedent(
        """
        import json
        from nsm.client import Nsm
        from nsm.device import DeviceTransport
        m = Nsm.device()
        assert isinstance(m._transport, DeviceTransport)
        """
    )
    code = prelude + textwrap.dedent(body) + "\nm.close()\nprint(json.dumps(result))\n"
    done = run_in_shim(code, preload_env(shim_lib, socket))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_direct(body: str) -> object:
    emulator = make_emulator()

    class Direct:
        def exchange(self, request: bytes) -> bytes:
            return emulator.handle(request)

        def close(self) -> None:
            pass

    scope: dict[str, object] = {"m": Nsm(Direct())}
    exec(body, scope)  # the same statement text the subprocess runs
    return json.loads(json.dumps(scope["result"]))


@pytest.mark.parametrize("operation", sorted(SCENARIOS))
def test_operation_through_the_shim_matches_the_emulator(
    operation: str, shim_lib: Path, served: Path
) -> None:
    body = SCENARIOS[operation]
    through_device = run_device(shim_lib, served, body)
    assert through_device == run_direct(body)
    assert through_device  # a non-empty result: the operation really ran


def test_oversize_request_is_emsgsize_at_the_ioctl(shim_lib: Path, served: Path) -> None:
    # The Python layer refuses oversize requests before the call; raw_ioctl reaches the
    # ioctl itself, as any other language's client would.
    result = run_device(
        shim_lib,
        served,
        """
        from nsm.device import raw_ioctl
        from nsm.errors import DeviceError
        try:
            raw_ioctl(m._transport._fd, bytes(4097))
            result = 'no error'
        except DeviceError as e:
            result = e.errno
        """,
    )
    assert result == errno.EMSGSIZE


def test_nsm_error_answer_through_the_device(shim_lib: Path, served: Path) -> None:
    result = run_device(
        shim_lib,
        served,
        """
        from nsm.errors import ModuleError
        try:
            m.extend_pcr(3, b'x')
            result = 'no error'
        except ModuleError as e:
            result = e.code.value
        """,
    )
    assert result == "ReadOnlyIndex"
