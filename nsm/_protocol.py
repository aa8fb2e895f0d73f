"""Sans-I/O codec for NSM requests and responses (aws-nitro-enclaves-nsm-api src/api/mod.rs).

The module speaks serde_cbor's externally tagged enums: a unit variant is a bare text string
(`"DescribeNSM"`), every other variant a map with exactly one text key
(`{"ExtendPCR": {"index": 16, "data": h'..'}}`). Encoding follows the Rust field declaration
order, which makes the examples in tests/nsm/test_protocol.py byte-exact; decoding never
depends on key order.
Anything that is not a well-formed message of the expected variant raises `ProtocolError`.

Decoding is as lenient as the Rust types it mirrors (`Request` and `Response` in
aws-nitro-enclaves-nsm-api's src/api/mod.rs, plain `#[derive(Deserialize)]`), and no more:
- keys a variant does not define are ignored (no `deny_unknown_fields`), so a newer module's
  extra answer field or a caller's extra request key is not an error; QEMU's device also skips
  them;
- an `Option` field that is absent is None (serde's derive treats a missing `Option` as None), so
  `{"Attestation": {}}` and `{"Attestation": {"nonce": h'..'}}` are requests; QEMU agrees;
- a unit variant may also come as a one-key map with a null body (`{"GetRandom": null}`), which
  serde_cbor's unit-variant access accepts; QEMU's device refuses that form (InvalidOperation);
- a byte field may come as a text string (serde_bytes reads it as its UTF-8 bytes; QEMU too);
- a required field that is missing, or has the wrong type, is still an error.
Encoding never uses that leeway: it writes exactly what the Rust side writes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cbor2

from nsm.errors import ProtocolError
from nsm.models import (
    Attestation,
    AttestationResponse,
    DescribeNSM,
    DescribePCR,
    Description,
    Digest,
    ErrorCode,
    ErrorResponse,
    ExtendPCR,
    GetRandom,
    LockPCR,
    LockPCRs,
    PcrExtended,
    PcrLocked,
    PcrsLocked,
    PcrState,
    RandomBytes,
    Request,
    Response,
)

__all__ = ["decode_request", "decode_response", "encode_request", "encode_response"]

#: Indices and ranges are u16 in the Rust API (aws-nitro-enclaves-nsm-api src/api/mod.rs).
_U16_MAX = 0xFFFF


# --- encoding ---------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return cbor2.dumps(value)


def encode_request(request: Request) -> bytes:
    """Encode a request exactly as the Rust `nsm-api` would."""
    match request:
        case DescribeNSM():
            return _dumps("DescribeNSM")
        case GetRandom():
            return _dumps("GetRandom")
        case DescribePCR(index=index):
            return _dumps({"DescribePCR": {"index": index}})
        case ExtendPCR(index=index, data=data):
            return _dumps({"ExtendPCR": {"index": index, "data": bytes(data)}})
        case LockPCR(index=index):
            return _dumps({"LockPCR": {"index": index}})
        case LockPCRs(range=range_):
            return _dumps({"LockPCRs": {"range": range_}})
        case Attestation(user_data=user_data, nonce=nonce, public_key=public_key):
            # The Rust side always sends all three keys, null when absent (src/api/mod.rs).
            return _dumps(
                {
                    "Attestation": {
                        "user_data": _opt_bytes(user_data),
                        "nonce": _opt_bytes(nonce),
                        "public_key": _opt_bytes(public_key),
                    }
                }
            )
    raise TypeError(f"not an NSM request: {request!r}")  # pragma: no cover - exhaustive


def encode_response(response: Response) -> bytes:
    """Encode a response exactly as the module would (used by the emulator)."""
    match response:
        case Description():
            return _dumps(
                {
                    "DescribeNSM": {
                        "version_major": response.version_major,
                        "version_minor": response.version_minor,
                        "version_patch": response.version_patch,
                        "module_id": response.module_id,
                        "max_pcrs": response.max_pcrs,
                        "locked_pcrs": sorted(response.locked_pcrs),
                        "digest": response.digest.value,
                    }
                }
            )
        case PcrState(locked=locked, data=data):
            return _dumps({"DescribePCR": {"lock": locked, "data": bytes(data)}})
        case PcrExtended(data=data):
            return _dumps({"ExtendPCR": {"data": bytes(data)}})
        case PcrLocked():
            return _dumps("LockPCR")
        case PcrsLocked():
            return _dumps("LockPCRs")
        case AttestationResponse(document=document):
            return _dumps({"Attestation": {"document": bytes(document)}})
        case RandomBytes(random=random):
            return _dumps({"GetRandom": {"random": bytes(random)}})
        case ErrorResponse(code=code):
            return _dumps({"Error": code.value})
    raise TypeError(f"not an NSM response: {response!r}")  # pragma: no cover - exhaustive


def _opt_bytes(value: bytes | None) -> bytes | None:
    return None if value is None else bytes(value)


# --- decoding ---------------------------------------------------------------------------


def _loads(data: bytes) -> object:
    """One CBOR item and nothing after it, as serde_cbor's `from_slice` demands (TrailingData)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    stream = io.BytesIO(bytes(data))
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:
        # cbor2 raises a variety of types (CBORDecodeError, ValueError, OverflowError,
        # RecursionError...) on hostile input; all of them mean "not a message".
        raise ProtocolError(f"malformed CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise ProtocolError(f"{len(data) - stream.tell()} trailing bytes after the message")
    return value


_UNIT = object()  # marks a bare-text (unit) variant, as opposed to a map with a body


def _variant(data: bytes, kind: str) -> tuple[str, object]:
    value = _loads(data)
    if isinstance(value, str):
        return value, _UNIT
    if isinstance(value, Mapping) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str):
            return name, body
    raise ProtocolError(f"an NSM {kind} is a text string or a one-key map, not {value!r:.80}")


def _fields(
    body: object, variant: str, names: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The variant's fields: `names` required, `optional` None when absent, others ignored."""
    if not isinstance(body, Mapping):
        raise ProtocolError(f"{variant}: expected a map of fields, got {type(body).__name__}")
    missing = [name for name in names if name not in body]
    if missing:
        raise ProtocolError(f"{variant}: missing field(s) {missing} (has {sorted(map(str, body))})")
    return {name: body.get(name) for name in (*names, *optional)}


def _unit_body(name: str, body: object) -> None:
    # `"GetRandom"` or `{"GetRandom": null}`: serde reads `()` from either form.
    if body is not _UNIT and body is not None:
        raise ProtocolError(f"{name} is a unit variant: a text string, or a map with a null body")


def _uint(value: object, what: str, maximum: int = _U16_MAX) -> int:
    # bool is an int in Python but a distinct CBOR type: refuse it.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ProtocolError(
            f"{what} must be an unsigned integer up to {maximum}, got {value!r:.40}"
        )
    return value


def _bytes(value: object, what: str) -> bytes:
    # serde_bytes (every byte field of the Rust types) also reads a text string as its UTF-8
    # bytes, and QEMU's device takes text for ExtendPCR.data and the attestation fields.
    if isinstance(value, str):
        return value.encode()
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what} must be a byte string, got {type(value).__name__}")
    return value


def _opt(value: object, what: str) -> bytes | None:
    return None if value is None else _bytes(value, what)


def _req_describe_pcr(body: object) -> Request:
    f = _fields(body, "DescribePCR", ("index",))
    return DescribePCR(_uint(f["index"], "DescribePCR.index"))


def _req_extend_pcr(body: object) -> Request:
    f = _fields(body, "ExtendPCR", ("index", "data"))
    return ExtendPCR(_uint(f["index"], "ExtendPCR.index"), _bytes(f["data"], "ExtendPCR.data"))


def _req_lock_pcr(body: object) -> Request:
    f = _fields(body, "LockPCR", ("index",))
    return LockPCR(_uint(f["index"], "LockPCR.index"))


def _req_lock_pcrs(body: object) -> Request:
    f = _fields(body, "LockPCRs", ("range",))
    return LockPCRs(_uint(f["range"], "LockPCRs.range"))


def _req_attestation(body: object) -> Request:
    f = _fields(body, "Attestation", (), ("user_data", "nonce", "public_key"))
    return Attestation(
        user_data=_opt(f["user_data"], "Attestation.user_data"),
        nonce=_opt(f["nonce"], "Attestation.nonce"),
        public_key=_opt(f["public_key"], "Attestation.public_key"),
    )


_REQUESTS: dict[str, Callable[[object], Request]] = {
    "DescribePCR": _req_describe_pcr,
    "ExtendPCR": _req_extend_pcr,
    "LockPCR": _req_lock_pcr,
    "LockPCRs": _req_lock_pcrs,
    "Attestation": _req_attestation,
}
_UNIT_REQUESTS: dict[str, Request] = {"DescribeNSM": DescribeNSM(), "GetRandom": GetRandom()}


_V = TypeVar("_V")


def _decode_variant(
    data: bytes,
    side: str,
    units: Mapping[str, _V],
    variants: Mapping[str, Callable[[object], _V]],
) -> _V:
    """One externally tagged enum value: a unit variant, or a one-key map to its decoder."""
    name, body = _variant(data, side)
    if name in units:
        _unit_body(name, body)
        return units[name]
    if name in variants and body is not _UNIT:
        return variants[name](body)
    raise ProtocolError(f"unknown NSM {side} {name!r:.60}")


def decode_request(data: bytes) -> Request:
    """Decode a request (the emulator's side of the codec)."""
    return _decode_variant(data, "request", _UNIT_REQUESTS, _REQUESTS)


def _resp_describe_nsm(body: object) -> Response:
    f = _fields(
        body,
        "DescribeNSM",
        (
            "version_major",
            "version_minor",
            "version_patch",
            "module_id",
            "max_pcrs",
            "locked_pcrs",
            "digest",
        ),
    )
    if not isinstance(f["module_id"], str):
        raise ProtocolError("DescribeNSM.module_id must be text")
    locked = f["locked_pcrs"]
    if not isinstance(locked, list | tuple):
        raise ProtocolError("DescribeNSM.locked_pcrs must be an array")
    try:
        digest = Digest(f["digest"])
    except (ValueError, TypeError) as exc:
        raise ProtocolError(
            f"DescribeNSM.digest {f['digest']!r:.40} is not a known digest"
        ) from exc
    return Description(
        version_major=_uint(f["version_major"], "DescribeNSM.version_major"),
        version_minor=_uint(f["version_minor"], "DescribeNSM.version_minor"),
        version_patch=_uint(f["version_patch"], "DescribeNSM.version_patch"),
        module_id=f["module_id"],
        max_pcrs=_uint(f["max_pcrs"], "DescribeNSM.max_pcrs"),
        locked_pcrs=frozenset(_uint(i, "DescribeNSM.locked_pcrs[]") for i in locked),
        digest=digest,
    )


def _resp_describe_pcr(body: object) -> Response:
    f = _fields(body, "DescribePCR", ("lock", "data"))
    if not isinstance(f["lock"], bool):
        raise ProtocolError("DescribePCR.lock must be a boolean")
    return PcrState(locked=f["lock"], data=_bytes(f["data"], "DescribePCR.data"))


def _resp_extend_pcr(body: object) -> Response:
    f = _fields(body, "ExtendPCR", ("data",))
    return PcrExtended(_bytes(f["data"], "ExtendPCR.data"))


def _resp_attestation(body: object) -> Response:
    f = _fields(body, "Attestation", ("document",))
    return AttestationResponse(_bytes(f["document"], "Attestation.document"))


def _resp_get_random(body: object) -> Response:
    f = _fields(body, "GetRandom", ("random",))
    return RandomBytes(_bytes(f["random"], "GetRandom.random"))


def _resp_error(body: object) -> Response:
    try:
        return ErrorResponse(ErrorCode(body))
    except ValueError as exc:
        raise ProtocolError(f"unknown NSM error code {body!r:.60}") from exc


_RESPONSES: dict[str, Callable[[object], Response]] = {
    "DescribeNSM": _resp_describe_nsm,
    "DescribePCR": _resp_describe_pcr,
    "ExtendPCR": _resp_extend_pcr,
    "Attestation": _resp_attestation,
    "GetRandom": _resp_get_random,
    "Error": _resp_error,
}
_UNIT_RESPONSES: dict[str, Response] = {"LockPCR": PcrLocked(), "LockPCRs": PcrsLocked()}


def decode_response(data: bytes) -> Response:
    """Decode a module's answer; an `{"Error": ...}` answer becomes an `ErrorResponse`."""
    return _decode_variant(data, "response", _UNIT_RESPONSES, _RESPONSES)
