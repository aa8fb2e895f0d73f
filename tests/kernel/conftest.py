"""tests/kernel: the real Linux NSM driver and QEMU's NSM, inside the VM `make test-kernel` boots.

Outside that VM every test here skips: the VM's /init sets NSM_KERNEL_VM=1 just before it starts
pytest. Inside it, a missing /dev/nsm is a failure, not a skip.

The `pair` fixture (tests/kernel/vm.py) holds the two modules every test compares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsm import Nsm
from nsm.device import DEVICE_PATH, DeviceTransport
from nsm.emulator import BOOT_LOCKED_PCRS, PCR_SIZE, Emulator
from tests.kernel.vm import InProcess, Pair

IN_TEST_VM = os.environ.get("NSM_KERNEL_VM") == "1"
SKIP_REASON = (
    "runs only inside the VM that `make test-kernel` boots (real nsm.ko + QEMU's virtio-nsm); "
    "NSM_KERNEL_VM=1 is not set"
)

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A marker, not a skip inside a fixture: session fixtures (the device) are then never set up.
    if IN_TEST_VM:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    assert os.path.exists(DEVICE_PATH), "no /dev/nsm in the test VM: nsm.ko did not bind"
    device = Nsm.open()
    assert isinstance(device._transport, DeviceTransport), "Nsm.open() did not pick /dev/nsm"
    boot_description = device.describe()
    boot_pcrs = [device.describe_pcr(i) for i in range(boot_description.max_pcrs)]
    # QEMU's device boots with nothing locked (only an EIF boot locks 0-15, and q35 boots no
    # EIF); the emulator boots like an enclave, 0-15 locked. Locking 0-15 here and giving the
    # emulator zero boot measurements puts both in the same state: 32 zero PCRs, 0-15 locked.
    device.lock_pcrs(BOOT_LOCKED_PCRS)
    emulator = Emulator(seed=12, pcrs={i: bytes(PCR_SIZE) for i in range(BOOT_LOCKED_PCRS)})
    # A second descriptor for raw ioctls; the client's own stays private to it.
    fd = os.open(DEVICE_PATH, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield Pair(
            device=device,
            emulator=Nsm(InProcess(emulator)),
            state=emulator,
            boot_description=boot_description,
            boot_pcrs=boot_pcrs,
            fd=fd,
        )
    finally:
        os.close(fd)
        device.close()
