"""Fixtures shared by the nsm tests: a seeded emulator and the emulator served on a socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator
from tests.nsm.shimtools import build_shim_or_skip, short_socket_dir


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=1234)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path


@pytest.fixture(scope="session")
def shim_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled LD_PRELOAD shim, built once per session; skips without a C compiler."""
    return build_shim_or_skip(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def emulator_socket(sock_dir: Path, emulator: Emulator) -> Iterator[Path]:
    path = sock_dir / "nsm.sock"
    server = EmulatorServer(path, emulator)
    server.serve_in_thread()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def module(emulator_socket: Path) -> Iterator[Nsm]:
    with Nsm.emulator(emulator_socket) as nsm:
        yield nsm
