"""The sans-I/O codec: the Rust encoding byte for byte, round trips, hostile input."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm._protocol import decode_request, decode_response, encode_request, encode_response
from nsm.errors import NsmError, ProtocolError
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

# (message, hex) pairs as serde_cbor 0.11 encodes the types of aws-nitro-enclaves-nsm-api's
# src/api/mod.rs (enums as maps, fields in declaration order); GetRandom's bytes are the request
# hard-coded in Linux drivers/misc/nsm.c.
REQUEST_EXAMPLES: list[tuple[Request, str]] = [
    (DescribePCR(16), "a16b4465736372696265504352a165696e64657810"),
    (ExtendPCR(16, bytes([1, 2, 3])), "a169457874656e64504352a265696e64657810646461746143010203"),
    (LockPCR(16), "a1674c6f636b504352a165696e64657810"),
    (LockPCRs(32), "a1684c6f636b50435273a16572616e67651820"),
    (DescribeNSM(), "6b44657363726962654e534d"),
    (
        Attestation(nonce=bytes.fromhex("aabb")),
        "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e636542aabb"
        "6a7075626c69635f6b6579f6",
    ),
    (GetRandom(), "6947657452616e646f6d"),
]

PCR48 = bytes(range(48))

RESPONSE_EXAMPLES: list[tuple[Response, str]] = [
    (
        PcrState(locked=True, data=PCR48),
        "a16b4465736372696265504352a2646c6f636bf56464617461" + "5830" + PCR48.hex(),
    ),
    (PcrLocked(), "674c6f636b504352"),
    (PcrsLocked(), "684c6f636b50435273"),
    (ErrorResponse(ErrorCode.READ_ONLY_INDEX), "a1654572726f726d526561644f6e6c79496e646578"),
]


@pytest.mark.parametrize(("request_", "hex_"), REQUEST_EXAMPLES)
def test_request_examples_are_byte_exact(request_: Request, hex_: str) -> None:
    assert encode_request(request_).hex() == hex_
    assert decode_request(bytes.fromhex(hex_)) == request_


@pytest.mark.parametrize(("response", "hex_"), RESPONSE_EXAMPLES)
def test_response_examples_are_byte_exact(response: Response, hex_: str) -> None:
    assert encode_response(response).hex() == hex_
    assert decode_response(bytes.fromhex(hex_)) == response


def test_get_random_answer_starts_with_the_kernels_prefix() -> None:
    # drivers/misc/nsm.c checks this prefix before trusting the hwrng answer.
    encoded = encode_response(RandomBytes(bytes(256)))
    prefix = b"\xa1\x69GetRandom\xa1\x66random\x59\x01\x00"
    assert encoded.startswith(prefix)
    assert len(encoded) == len(prefix) + 256


def test_describe_nsm_decodes_in_any_key_order() -> None:
    # QEMU emits these keys in another order than the Rust struct (hw/virtio/virtio-nsm.c).
    body = {
        "digest": "SHA384",
        "locked_pcrs": list(range(16)),
        "max_pcrs": 32,
        "module_id": "i-00c89f181802cdef4-enc0175cd0dcee36866",
        "version_patch": 0,
        "version_minor": 0,
        "version_major": 1,
    }
    decoded = decode_response(cbor2.dumps({"DescribeNSM": body}))
    assert decoded == Description(
        version_major=1,
        version_minor=0,
        version_patch=0,
        module_id="i-00c89f181802cdef4-enc0175cd0dcee36866",
        max_pcrs=32,
        locked_pcrs=frozenset(range(16)),
        digest=Digest.SHA384,
    )


def test_extend_fields_decode_in_any_order() -> None:
    raw = cbor2.dumps({"ExtendPCR": {"data": b"\x01", "index": 17}})
    assert decode_request(raw) == ExtendPCR(17, b"\x01")


@pytest.mark.parametrize(
    "value",
    [
        "NoSuchCommand",
        {"NoSuchCommand": {}},
        {"DescribePCR": {"index": 1}, "LockPCR": {"index": 1}},
        {"DescribePCR": {"index": True}},
        {"DescribePCR": {"index": -1}},
        {"DescribePCR": {"index": 70000}},
        {"ExtendPCR": {"index": 1, "data": 7}},
        {"ExtendPCR": {"index": 1}},
        {"DescribePCR": {}},
        {"Attestation": {"nonce": 3}},
        {"Attestation": None},
        {"DescribeNSM": {}},
        {"GetRandom": {"n": 1}},
        42,
        [1, 2],
    ],
)
def test_malformed_requests_raise_protocol_error(value: object) -> None:
    with pytest.raises(ProtocolError):
        decode_request(cbor2.dumps(value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # serde's derive: an absent Option field is None (QEMU's device agrees)
        ({"Attestation": {}}, Attestation()),
        ({"Attestation": {"nonce": b"\x01"}}, Attestation(nonce=b"\x01")),
        ({"Attestation": {"user_data": None, "nonce": None}}, Attestation()),
        # no deny_unknown_fields: extra keys are ignored (QEMU skips them too)
        ({"DescribePCR": {"index": 1, "extra": 2}}, DescribePCR(1)),
        ({"Attestation": {"public_key": b"k", 7: "x"}}, Attestation(public_key=b"k")),
        # serde_cbor reads a unit variant from a null map body (QEMU refuses this form)
        ({"GetRandom": None}, GetRandom()),
        ({"DescribeNSM": None}, DescribeNSM()),
        # serde_bytes reads text as its UTF-8 bytes (QEMU takes text for these fields too)
        ({"ExtendPCR": {"index": 16, "data": "é"}}, ExtendPCR(16, "é".encode())),
        ({"Attestation": {"user_data": "hi"}}, Attestation(user_data=b"hi")),
    ],
)
def test_requests_decode_as_leniently_as_the_rust_types(value: object, expected: Request) -> None:
    assert decode_request(cbor2.dumps(value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"ExtendPCR": {"data": b"\x00" * 48, "generation": 2}},
            PcrExtended(b"\x00" * 48),
        ),
        ({"GetRandom": {"random": b"r", "source": "trng"}}, RandomBytes(b"r")),
        ({"LockPCR": None}, PcrLocked()),
    ],
)
def test_answers_with_extra_fields_decode_like_the_rust_client(
    value: object, expected: Response
) -> None:
    assert decode_response(cbor2.dumps(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"Error": "NotAnErrorCode"},
        {"Error": 4},
        {"DescribePCR": {"lock": 1, "data": b""}},
        {"DescribeNSM": {"digest": "MD5"}},
        {"GetRandom": {"random": 5}},
        {"Attestation": {"document": None}},
        "LockPCRz",
    ],
)
def test_malformed_responses_raise_protocol_error(value: object) -> None:
    with pytest.raises(ProtocolError):
        decode_response(cbor2.dumps(value))


def test_trailing_bytes_are_rejected_like_serde_cbor() -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        decode_response(bytes.fromhex("674c6f636b504352") + b"\x00")


def test_truncated_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode_response(bytes.fromhex("a16b4465736372696265504352a2646c6f636bf564646174615830"))


u16 = st.integers(min_value=0, max_value=0xFFFF)
opt_field = st.none() | st.binary(max_size=1024)

requests = st.one_of(
    st.just(DescribeNSM()),
    st.just(GetRandom()),
    st.builds(DescribePCR, u16),
    st.builds(ExtendPCR, u16, st.binary(max_size=2048)),
    st.builds(LockPCR, u16),
    st.builds(LockPCRs, u16),
    st.builds(Attestation, opt_field, opt_field, opt_field),
)

responses = st.one_of(
    st.builds(
        Description,
        version_major=u16,
        version_minor=u16,
        version_patch=u16,
        module_id=st.text(max_size=60),
        max_pcrs=u16,
        locked_pcrs=st.frozensets(u16, max_size=32),
        digest=st.sampled_from(Digest),
    ),
    st.builds(PcrState, locked=st.booleans(), data=st.binary(max_size=64)),
    st.builds(PcrExtended, st.binary(max_size=64)),
    st.just(PcrLocked()),
    st.just(PcrsLocked()),
    st.builds(AttestationResponse, st.binary(max_size=5000)),
    st.builds(RandomBytes, st.binary(max_size=256)),
    st.builds(ErrorResponse, st.sampled_from(ErrorCode)),
)


@given(requests)
def test_every_request_round_trips(request_: Request) -> None:
    assert decode_request(encode_request(request_)) == request_


@given(responses)
def test_every_response_round_trips(response: Response) -> None:
    assert decode_response(encode_response(response)) == response


@given(st.binary(max_size=512))
def test_decode_response_on_arbitrary_bytes_raises_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(NsmError):
        decode_response(data)


@given(st.binary(max_size=512))
def test_decode_request_on_arbitrary_bytes_raises_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(NsmError):
        decode_request(data)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=20)
    | st.text(max_size=20)
    | st.sampled_from(["DescribeNSM", "LockPCR", "Error", "GetRandom", "DescribePCR"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers(0, 40), children, max_size=4)
    ),
    max_leaves=12,
)


@given(cbor_values)
def test_decode_response_on_arbitrary_cbor_raises_only_our_errors(value: object) -> None:
    # Well-formed CBOR of the wrong shape reaches the field checks, not just the decoder.
    with contextlib.suppress(NsmError):
        decode_response(cbor2.dumps(value))
