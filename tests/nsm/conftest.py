"""Fixtures shared by the nsm tests: a seeded emulator and the emulator served on a socket."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator
from tests.nsm.shimtools import (
    FakeNsmServer,
    Handler,
    build_shim_or_skip,
    preload_env,
    short_socket_dir,
)


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


# ---- the shim against a fake NSM (thin wrappers over shimtools) --------------------------------


@pytest.fixture
def socket_path(sock_dir: Path) -> Path:
    return sock_dir / "nsm.sock"


@pytest.fixture
def shim_env(shim_lib: Path) -> Callable[..., dict[str, str]]:
    """`shim_env(socket_path, **kw)`: the environment of a process whose /dev/nsm is that socket."""
    return functools.partial(preload_env, shim_lib)


@pytest.fixture
def serve(socket_path: Path) -> Iterator[Callable[[Handler], FakeNsmServer]]:
    """`serve(handler)`: start a fake NSM on `socket_path`; stopped after the test."""
    servers: list[FakeNsmServer] = []

    def start(handler: Handler) -> FakeNsmServer:
        server = FakeNsmServer(socket_path, handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
