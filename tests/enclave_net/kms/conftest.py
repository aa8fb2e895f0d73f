from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nsm.emulator import Emulator
from tests.enclave_net.kms._support import KmsWorld, make_world

#: Another enclave image (PCR0) whose documents the double also trusts: same hardware vendor,
#: different code.
OTHER_IMAGE = Emulator(seed=71, pcrs={0: bytes([0xEE]) * 48})


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return Emulator(seed=70)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> Iterator[KmsWorld]:
    built = make_world(
        Path(tmp_path_factory.mktemp("kms")), emulator, extra_roots=[OTHER_IMAGE.root_pem]
    )
    yield built
    built.double.close()
