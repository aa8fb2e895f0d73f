"""The one error tree of the `nsm` package.

Every exception that leaves `nsm` is an `NsmError`. Foreign exceptions (cbor2, OSError, cffi)
are translated once, at the boundary where they happen, with `raise ... from`.
"""

from __future__ import annotations

import errno as _errno

from nsm.models import ErrorCode

__all__ = [
    "ArgumentError",
    "DeviceError",
    "DeviceNotFound",
    "ModuleError",
    "NsmError",
    "ProtocolError",
    "TransportError",
]


class NsmError(Exception):
    """Root of every error raised by `nsm`."""


class ArgumentError(NsmError, ValueError):
    """An argument was rejected before anything was sent to the module."""


class ProtocolError(NsmError):
    """Bytes that are not a valid NSM message (malformed CBOR, unknown or mistyped variant)."""


class ModuleError(NsmError):
    """The module answered `{"Error": code}`: the request was understood and refused."""

    def __init__(self, code: ErrorCode, request: str = "") -> None:
        self.code = code
        self.request = request
        where = f" to {request}" if request else ""
        super().__init__(f"the NSM answered{where} with error {code.value}")


class TransportError(NsmError):
    """The channel to the module (device or emulator socket) failed."""


class DeviceError(TransportError):
    """The `/dev/nsm` ioctl failed; `errno` is kept."""

    def __init__(self, errno: int, message: str) -> None:
        self.errno = errno
        name = _errno.errorcode.get(errno, str(errno))
        super().__init__(f"{message} (errno {name})")


class DeviceNotFound(DeviceError):
    """There is no `/dev/nsm`: this process is not running inside a Nitro enclave."""

    def __init__(self, path: str) -> None:
        super().__init__(
            _errno.ENOENT,
            f"{path} does not exist: this process is not running inside a Nitro enclave. "
            "To run off-enclave, start the emulator (`nsm emulator serve --socket PATH "
            "--root-out ROOT.pem`) and select it explicitly with Nsm.emulator(PATH) or "
            "NSM_EMULATOR=unix:PATH",
        )
