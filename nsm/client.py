"""`Nsm`: the seven NSM operations over any transport (device ioctl or emulator socket)."""

from __future__ import annotations

import os
from types import TracebackType
from typing import TypeVar

from nsm import _protocol, models
from nsm._transport import (
    EMULATOR_ENV,
    Transport,
    UnixTransport,
    check_request_size,
    emulator_address,
)
from nsm.errors import ArgumentError, ModuleError, ProtocolError

__all__ = ["ATTESTATION_FIELD_MAX", "DEVICE_PATH", "MAX_PCRS", "Nsm"]

DEVICE_PATH = "/dev/nsm"
#: PCR indices are 0..31 on every module seen (AWS CDDL `index = 0..31`; DescribeNSM max_pcrs is
#: 32). The client does not enforce it: the wire type is u16 and the module answers InvalidIndex
#: past its own max_pcrs, as with AWS's Rust client.
MAX_PCRS = 32
#: PCR indices and LockPCRs ranges are `u16` in the Rust API: the only bound checked locally.
_U16_MAX = 0xFFFF
#: AWS documents user_data, nonce and public_key as `bytes .size (0..1024)` (the User Guide's
#: CDDL), and AWS's hardware test sends 1024 in each. Real modules do not enforce it: documents
#: with a 1025-byte nonce and larger fields were obtained and signed on real hardware (reported in
#: hf/nitrite pull requests 3 and 5; an ML-KEM-768 public key is 1,184 bytes). So the client sends
#: any size that fits the driver's 4096-byte request and lets the module decide; the emulator
#: refuses past this limit by default (configurable), and the verifier keeps AWS's documented one.
ATTESTATION_FIELD_MAX = 1024

_R = TypeVar("_R", bound=models.Response)


class Nsm:
    """A Nitro Secure Module.

    Use `Nsm.open()` inside an enclave (`/dev/nsm`), or select the emulator explicitly with
    `Nsm.emulator(path)` or `NSM_EMULATOR=unix:PATH`. A missing `/dev/nsm` never falls back
    to the emulator on its own.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    # --- construction -------------------------------------------------------------------

    @classmethod
    def device(cls, path: str = DEVICE_PATH) -> Nsm:
        """The real module through the `/dev/nsm` ioctl."""
        from nsm.device import DeviceTransport  # cffi is loaded only when a device is used

        return cls(DeviceTransport(path))

    @classmethod
    def emulator(cls, path: str | os.PathLike[str]) -> Nsm:
        """The emulator served by `nsm emulator serve --socket PATH`."""
        return cls(UnixTransport(path))

    @classmethod
    def open(cls) -> Nsm:
        """`NSM_EMULATOR=unix:PATH` when set (an explicit choice), else `/dev/nsm`."""
        selected = os.environ.get(EMULATOR_ENV)
        if selected:
            return cls.emulator(emulator_address(selected))
        return cls.device()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Nsm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- operations ---------------------------------------------------------------------

    def describe(self) -> models.Description:
        return self._call(models.DescribeNSM(), models.Description)

    def describe_pcr(self, index: int) -> models.PcrState:
        return self._call(models.DescribePCR(_index(index)), models.PcrState)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR `index` with `data`: new = SHA384(old || data). Returns the new value."""
        return self._call(
            models.ExtendPCR(_index(index), _data(data, "data")), models.PcrExtended
        ).data

    def lock_pcr(self, index: int) -> None:
        self._call(models.LockPCR(_index(index)), models.PcrLocked)

    def lock_pcrs(self, range: int) -> None:
        """Lock PCRs `[0, range)`."""
        if not _is_int(range) or not 0 <= range <= _U16_MAX:
            raise ArgumentError(
                f"lock_pcrs range must be an integer in 0..{_U16_MAX} (u16), got {range!r}"
            )
        self._call(models.LockPCRs(range), models.PcrsLocked)

    def get_random(self, n: int) -> bytes:
        """`n` random bytes; the module answers 256 at a time, so this asks as often as needed."""
        if not _is_int(n) or n < 0:
            raise ArgumentError(f"get_random needs a non-negative integer, got {n!r}")
        out = bytearray()
        while len(out) < n:
            chunk = self._call(models.GetRandom(), models.RandomBytes).random
            if not chunk:
                raise ProtocolError("the NSM answered GetRandom with no bytes")
            out += chunk
        return bytes(out[:n])

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A signed attestation document (COSE_Sign1 bytes) binding the given fields."""
        request = models.Attestation(
            user_data=_field(user_data, "user_data"),
            nonce=_field(nonce, "nonce"),
            public_key=_field(public_key, "public_key"),
        )
        return self._call(request, models.AttestationResponse).document

    # --- plumbing -----------------------------------------------------------------------

    def _call(self, request: models.Request, expected: type[_R]) -> _R:
        encoded = _protocol.encode_request(request)
        check_request_size(encoded)
        answer = _protocol.decode_response(self._transport.exchange(encoded))
        name = type(request).__name__
        if isinstance(answer, models.ErrorResponse):
            raise ModuleError(answer.code, name)
        if not isinstance(answer, expected):
            raise ProtocolError(
                f"the NSM answered {name} with {type(answer).__name__} (InvalidResponse)"
            )
        return answer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index(index: int) -> int:
    # Past max_pcrs is the module's call (InvalidIndex); past u16 cannot be encoded.
    if not _is_int(index) or not 0 <= index <= _U16_MAX:
        raise ArgumentError(f"PCR index must be an integer in 0..{_U16_MAX} (u16), got {index!r}")
    return index


def _data(data: bytes, name: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ArgumentError(f"{name} must be bytes, got {type(data).__name__}")
    return bytes(data)


def _field(value: bytes | None, name: str) -> bytes | None:
    # No per-field size check: see ATTESTATION_FIELD_MAX. The whole request still must fit the
    # driver's 4096 bytes (check_request_size).
    return None if value is None else _data(value, name)
