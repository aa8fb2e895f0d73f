"""`nsm emulator serve` and a socket path that is already taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nsm._server import EmulatorServer, SocketInUseError
from nsm.client import Nsm
from nsm.emulator import Emulator


def test_a_live_socket_is_refused_and_keeps_serving(sock_dir: Path, emulator: Emulator) -> None:
    path = sock_dir / "nsm.sock"
    first = EmulatorServer(path, emulator)
    first.serve_in_thread()
    try:
        with pytest.raises(SocketInUseError, match=f"listening on unix:{path}"):
            EmulatorServer(path, Emulator(seed=1))
        with Nsm.emulator(str(path)) as module:
            assert module.describe().module_id == emulator.module_id
    finally:
        first.shutdown()
        first.server_close()


def test_a_stale_socket_file_is_replaced(sock_dir: Path, emulator: Emulator) -> None:
    path = sock_dir / "nsm.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed server leaves behind
    assert path.is_socket()
    server = EmulatorServer(path, emulator)
    server.serve_in_thread()
    try:
        with Nsm.emulator(str(path)) as module:
            assert module.describe().module_id == emulator.module_id
    finally:
        server.shutdown()
        server.server_close()


def test_a_file_that_is_not_a_socket_is_never_replaced(sock_dir: Path, emulator: Emulator) -> None:
    path = sock_dir / "nsm.sock"
    path.write_text("data")
    with pytest.raises(SocketInUseError, match="is not a socket"):
        EmulatorServer(path, emulator)
    assert path.read_text() == "data"


def test_second_serve_command_exits_1_naming_the_socket_and_writes_no_root(
    sock_dir: Path, emulator: Emulator
) -> None:
    path = sock_dir / "nsm.sock"
    first = EmulatorServer(path, emulator)
    first.serve_in_thread()
    root = sock_dir / "second-root.pem"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "nsm",
                "emulator",
                "serve",
                "--socket",
                str(path),
                "--root-out",
                str(root),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert f"another server is listening on unix:{path}" in result.stderr
        assert "Traceback" not in result.stderr
        assert not root.exists()
        with Nsm.emulator(str(path)) as module:
            assert module.describe().module_id == emulator.module_id
    finally:
        first.shutdown()
        first.server_close()
