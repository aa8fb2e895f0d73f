"""What the tests in tests/kernel share: the device and the emulator side by side.

The device is QEMU's virtio-nsm through /dev/nsm and the kernel driver, opened with `Nsm.open()`
(the cffi ioctl path); the emulator is the project's, in the same state. One VM boot has one
device, whose state lasts for the whole session, so every state change a test makes goes to both
sides through `Pair`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from nsm import Nsm, _protocol
from nsm.device import raw_ioctl
from nsm.emulator import Emulator
from nsm.models import Description, PcrState, Response

#: QEMU's `module-id` property default (hw/virtio/virtio-nsm.c); the VM does not set it.
QEMU_MODULE_ID = "i-234-enc5678"

T = TypeVar("T")
P = ParamSpec("P")


class InProcess:
    """The emulator as a transport: the exact request bytes in, the exact answer bytes out."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def exchange(self, request: bytes) -> bytes:
        return self.emulator.handle(request)

    def close(self) -> None:
        pass


@dataclass
class Pair:
    device: Nsm
    emulator: Nsm
    #: The emulator behind `emulator`, for raw requests.
    state: Emulator
    #: The device's state before the session touched it: DescribeNSM and all 32 PCRs.
    boot_description: Description
    boot_pcrs: list[PcrState]
    fd: int

    def both(
        self, operation: Callable[Concatenate[Nsm, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[T, T]:
        """`operation(module, *args, **kwargs)` on the device, then on the emulator."""
        return operation(self.device, *args, **kwargs), operation(self.emulator, *args, **kwargs)

    def raw(self, request: bytes) -> tuple[Response, Response]:
        """Send the same request bytes to both, below the client's own checks."""
        answer = raw_ioctl(self.fd, request)
        return _protocol.decode_response(answer), _protocol.decode_response(
            self.state.handle(request)
        )
