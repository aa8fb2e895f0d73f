"""Values exchanged with the Nitro Secure Module (reference/nsm.md §2.2-§2.4)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


class ErrorCode(enum.Enum):
    """`ErrorCode` of the NSM API; only the name travels on the wire (nsm.md §2.4)."""

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


@dataclass(frozen=True)
class PcrState:
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


@dataclass(frozen=True)
class ExtendPCR:
    index: int
    data: bytes


@dataclass(frozen=True)
class LockPCR:
    index: int


@dataclass(frozen=True)
class LockPCRs:
    range: int


@dataclass(frozen=True)
class Attestation:
    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


Request = DescribeNSM | GetRandom | DescribePCR | ExtendPCR | LockPCR | LockPCRs | Attestation


# Responses. LockPCR and LockPCRs answers are unit variants (bare text on the wire).


@dataclass(frozen=True)
class PcrExtended:
    """Answer to ExtendPCR: the PCR's new value."""

    data: bytes


@dataclass(frozen=True)
class PcrLocked:
    """Answer to LockPCR."""


@dataclass(frozen=True)
class PcrsLocked:
    """Answer to LockPCRs."""


@dataclass(frozen=True)
class AttestationResponse:
    """Answer to Attestation: the COSE_Sign1 document bytes."""

    document: bytes


@dataclass(frozen=True)
class RandomBytes:
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
