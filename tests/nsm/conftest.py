"""Fixtures shared by the nsm tests: a seeded emulator and the emulator served on a socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=1234)


@pytest.fixture
def emulator_socket(tmp_path: Path, emulator: Emulator) -> Iterator[Path]:
    path = tmp_path / "nsm.sock"
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
