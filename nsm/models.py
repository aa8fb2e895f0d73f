"""Values exchanged with the Nitro Secure Module (aws-nitro-enclaves-nsm-api src/api/mod.rs)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import ClassVar

__all__ = [
    "Attestation",
    "AttestationResponse",
    "DescribeNSM",
    "DescribePCR",
    "Description",
    "Digest",
    "ErrorCode",
    "ErrorResponse",
    "ExtendPCR",
    "GetRandom",
    "LockPCR",
    "LockPCRs",
    "PcrExtended",
    "PcrLocked",
    "PcrState",
    "PcrsLocked",
    "RandomBytes",
    "Request",
    "Response",
]


class _HexRepr:
    """`repr` with byte values in hex (PCRs, keys, nonces read as their digests are written);
    the fields named in `_SIZED` (whole documents) by their size only."""

    _SIZED: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        parts = []
        for field in fields(self):  # type: ignore[arg-type]  # every user is a dataclass
            value = getattr(self, field.name)
            if isinstance(value, bytes):
                shown = f"<{len(value)} bytes>" if field.name in self._SIZED else f"'{value.hex()}'"
            else:
                shown = repr(value)
            parts.append(f"{field.name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"


class ErrorCode(enum.Enum):
    """`ErrorCode` of the NSM API; only the name travels on the wire (src/api/mod.rs)."""

    SUCCESS = "Success"
    INVALID_ARGUMENT = "InvalidArgument"
    INVALID_INDEX = "InvalidIndex"
    INVALID_RESPONSE = "InvalidResponse"
    READ_ONLY_INDEX = "ReadOnlyIndex"
    INVALID_OPERATION = "InvalidOperation"
    BUFFER_TOO_SMALL = "BufferTooSmall"
    INPUT_TOO_LARGE = "InputTooLarge"
    INTERNAL_ERROR = "InternalError"


class Digest(enum.Enum):
    """The PCR bank's hash; real modules report SHA384."""

    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"

    @property
    def size(self) -> int:
        return {"SHA256": 32, "SHA384": 48, "SHA512": 64}[self.value]


@dataclass(frozen=True)
class Description:
    """Answer to DescribeNSM."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: Digest


@dataclass(frozen=True, repr=False)
class PcrState(_HexRepr):
    """Answer to DescribePCR: whether the PCR is locked, and its value."""

    locked: bool
    data: bytes


# Requests. Unit variants (DescribeNSM, GetRandom) travel as bare text.


@dataclass(frozen=True)
class DescribeNSM:
    pass


@dataclass(frozen=True)
class GetRandom:
    pass


@dataclass(frozen=True)
class DescribePCR:
    index: int


@dataclass(frozen=True, repr=False)
class ExtendPCR(_HexRepr):
    index: int
    data: bytes


@dataclass(frozen=True)
class LockPCR:
    index: int


@dataclass(frozen=True)
class LockPCRs:
    range: int


@dataclass(frozen=True, repr=False)
class Attestation(_HexRepr):
    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


Request = DescribeNSM | GetRandom | DescribePCR | ExtendPCR | LockPCR | LockPCRs | Attestation


# Responses. LockPCR and LockPCRs answers are unit variants (bare text on the wire).


@dataclass(frozen=True, repr=False)
class PcrExtended(_HexRepr):
    """Answer to ExtendPCR: the PCR's new value."""

    data: bytes


@dataclass(frozen=True)
class PcrLocked:
    """Answer to LockPCR."""


@dataclass(frozen=True)
class PcrsLocked:
    """Answer to LockPCRs."""


@dataclass(frozen=True, repr=False)
class AttestationResponse(_HexRepr):
    """Answer to Attestation: the COSE_Sign1 document bytes."""

    _SIZED: ClassVar[frozenset[str]] = frozenset({"document"})
    document: bytes


@dataclass(frozen=True, repr=False)
class RandomBytes(_HexRepr):
    """Answer to GetRandom."""

    random: bytes


@dataclass(frozen=True)
class ErrorResponse:
    """The module's `{"Error": code}` answer."""

    code: ErrorCode


Response = (
    Description
    | PcrState
    | PcrExtended
    | PcrLocked
    | PcrsLocked
    | AttestationResponse
    | RandomBytes
    | ErrorResponse
)
