"""The emulator behaves like the real module (AWS nsm-check, QEMU, the User Guide, real docs)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from nsm._protocol import decode_response, encode_request
from nsm.emulator import Emulator
from nsm.models import (
    Attestation,
    AttestationResponse,
    DescribeNSM,
    DescribePCR,
    Description,
    ErrorCode,
    ErrorResponse,
    ExtendPCR,
    GetRandom,
    LockPCR,
    LockPCRs,
    PcrExtended,
    PcrLocked,
    PcrState,
    RandomBytes,
    Request,
    Response,
)

ZERO = bytes(48)
AWS_KEY_ORDER = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]


def ask(emulator: Emulator, request: Request) -> Response:
    return decode_response(emulator.handle(encode_request(request)))


def error(code: ErrorCode) -> ErrorResponse:
    return ErrorResponse(code)


def test_describe_matches_aws_hardware_test(emulator: Emulator) -> None:
    answer = ask(emulator, DescribeNSM())
    assert isinstance(answer, Description)
    assert (answer.version_major, answer.version_minor, answer.version_patch) == (1, 0, 0)
    assert answer.max_pcrs == 32
    assert answer.locked_pcrs == frozenset(range(16))
    assert answer.digest.value == "SHA384"
    assert answer.module_id.startswith("i-")
    assert "-enc" in answer.module_id


def test_boot_pcrs(emulator: Emulator) -> None:
    states = [ask(emulator, DescribePCR(i)) for i in range(32)]
    assert all(isinstance(s, PcrState) and len(s.data) == 48 for s in states)
    values = [s.data for s in states if isinstance(s, PcrState)]
    locks = [s.locked for s in states if isinstance(s, PcrState)]
    assert locks == [True] * 16 + [False] * 16
    for i in (0, 1, 2, 4):
        assert values[i] != ZERO, f"PCR{i} must hold a measurement"
    assert values[3] == ZERO  # no IAM role
    assert all(v == ZERO for v in values[5:])
    # PCR4 = SHA384(0^48 || instance id), AWS's documented formula.
    assert values[4] == hashlib.sha384(ZERO + emulator.instance_id.encode()).digest()


def test_debug_mode_zeroes_pcr0_to_2_only() -> None:
    debug = Emulator(seed=5, debug=True)
    values = [debug.pcr(i) for i in range(5)]
    assert values[:3] == [ZERO, ZERO, ZERO]
    assert values[4] != ZERO


def test_configured_boot_pcrs() -> None:
    pcr0 = bytes([7]) * 48
    assert Emulator(seed=1, pcrs={0: pcr0}).pcr(0) == pcr0
    with pytest.raises(ValueError, match="boot PCR"):
        Emulator(seed=1, pcrs={16: pcr0})


def test_seeded_emulators_agree() -> None:
    a, b = Emulator(seed=99), Emulator(seed=99)
    assert a.module_id == b.module_id
    assert [a.pcr(i) for i in range(16)] == [b.pcr(i) for i in range(16)]
    assert a.root_pem == b.root_pem
    assert Emulator(seed=100).module_id != a.module_id


def test_extend_is_sha384_of_old_and_data(emulator: Emulator) -> None:
    first = ask(emulator, ExtendPCR(16, b"hello"))
    expected = hashlib.sha384(ZERO + b"hello").digest()
    assert first == PcrExtended(expected)
    second = ask(emulator, ExtendPCR(16, b"world"))
    assert second == PcrExtended(hashlib.sha384(expected + b"world").digest())
    assert ask(emulator, DescribePCR(16)) == PcrState(locked=False, data=second.data)


def test_locked_pcrs_refuse_changes(emulator: Emulator) -> None:
    assert ask(emulator, ExtendPCR(0, b"x")) == error(ErrorCode.READ_ONLY_INDEX)
    assert ask(emulator, LockPCR(3)) == error(ErrorCode.READ_ONLY_INDEX)
    ask(emulator, ExtendPCR(20, b"x"))
    assert ask(emulator, LockPCR(20)) == PcrLocked()
    assert ask(emulator, ExtendPCR(20, b"y")) == error(ErrorCode.READ_ONLY_INDEX)
    assert ask(emulator, LockPCR(20)) == error(ErrorCode.READ_ONLY_INDEX)
    state = ask(emulator, DescribePCR(20))
    assert isinstance(state, PcrState)
    assert state.locked


def test_lock_range(emulator: Emulator) -> None:
    assert ask(emulator, LockPCRs(33)) == error(ErrorCode.INVALID_INDEX)
    ask(emulator, LockPCRs(32))
    answer = ask(emulator, DescribeNSM())
    assert isinstance(answer, Description)
    assert answer.locked_pcrs == frozenset(range(32))
    assert ask(emulator, ExtendPCR(31, b"x")) == error(ErrorCode.READ_ONLY_INDEX)


def test_restart_resets_application_pcrs_only(emulator: Emulator) -> None:
    boot = [emulator.pcr(i) for i in range(16)]
    root, module_id, instance_id = emulator.root_pem, emulator.module_id, emulator.instance_id
    ask(emulator, ExtendPCR(16, b"config"))
    ask(emulator, LockPCRs(32))
    emulator.restart()
    assert [emulator.pcr(i) for i in range(16)] == boot
    assert emulator.root_pem == root and emulator.instance_id == instance_id
    assert emulator.module_id != module_id
    assert emulator.module_id.startswith(instance_id + "-enc")
    assert ask(emulator, DescribePCR(16)) == PcrState(locked=False, data=ZERO)
    assert ask(emulator, ExtendPCR(0, b"x")) == error(ErrorCode.READ_ONLY_INDEX)
    assert ask(emulator, ExtendPCR(31, b"x")) == PcrExtended(hashlib.sha384(ZERO + b"x").digest())


@pytest.mark.parametrize(
    "request_", [DescribePCR(32), ExtendPCR(32, b"x"), LockPCR(32), DescribePCR(0xFFFF)]
)
def test_out_of_range_index(emulator: Emulator, request_: Request) -> None:
    assert ask(emulator, request_) == error(ErrorCode.INVALID_INDEX)


def test_oversize_and_malformed_requests(emulator: Emulator) -> None:
    big = encode_request(Attestation(user_data=bytes(1025)))
    assert ask_raw(emulator, big) == error(ErrorCode.INPUT_TOO_LARGE)
    huge = encode_request(ExtendPCR(16, bytes(5000)))
    assert ask_raw(emulator, huge) == error(ErrorCode.INPUT_TOO_LARGE)
    assert ask_raw(emulator, b"\xff\x00garbage") == error(ErrorCode.INVALID_OPERATION)
    assert ask_raw(emulator, cbor2.dumps("Reboot")) == error(ErrorCode.INVALID_OPERATION)


def test_requests_the_rust_types_accept_are_answered(emulator: Emulator) -> None:
    empty = ask_raw(emulator, cbor2.dumps({"Attestation": {}}))
    assert isinstance(empty, AttestationResponse)
    payload = cbor2.loads(cbor2.loads(empty.document)[2])
    assert (payload["user_data"], payload["nonce"], payload["public_key"]) == (None, None, None)
    nonce_only = ask_raw(emulator, cbor2.dumps({"Attestation": {"nonce": b"n", "x": 1}}))
    assert isinstance(nonce_only, AttestationResponse)
    assert cbor2.loads(cbor2.loads(nonce_only.document)[2])["nonce"] == b"n"
    assert isinstance(ask_raw(emulator, cbor2.dumps({"GetRandom": None})), RandomBytes)
    # a required field missing is still not a request
    missing = ask_raw(emulator, cbor2.dumps({"ExtendPCR": {"index": 16}}))
    assert missing == error(ErrorCode.INVALID_OPERATION)


def ask_raw(emulator: Emulator, raw: bytes) -> Response:
    return decode_response(emulator.handle(raw))


def test_get_random_is_256_fresh_bytes(emulator: Emulator) -> None:
    answers = [ask(emulator, GetRandom()) for _ in range(16)]
    randoms = [a.random for a in answers if isinstance(a, RandomBytes)]
    assert len(randoms) == 16
    assert all(len(r) == 256 for r in randoms)
    assert len(set(randoms)) == 16


def attest(emulator: Emulator, **fields: bytes | None) -> bytes:
    answer = ask(emulator, Attestation(**fields))
    assert isinstance(answer, AttestationResponse)
    return answer.document


def test_document_has_aws_shape(emulator: Emulator) -> None:
    document = attest(emulator, nonce=b"\x01\x02")
    assert document[0] == 0x84  # untagged COSE_Sign1
    envelope = cbor2.loads(document)
    protected, unprotected, payload_bytes, signature = envelope
    assert protected == bytes.fromhex("a1013822")
    assert unprotected == {}
    assert len(signature) == 96
    # today's production profile: an indefinite-length map (0xbf ... 0xff)
    assert (payload_bytes[0], payload_bytes[-1]) == (0xBF, 0xFF)
    payload = cbor2.loads(payload_bytes)
    assert list(payload) == AWS_KEY_ORDER
    assert payload["digest"] == "SHA384"
    assert payload["nonce"] == b"\x01\x02"
    assert payload["public_key"] is None
    assert payload["user_data"] is None
    assert sorted(payload["pcrs"]) == list(range(16))
    assert payload["pcrs"][0] == emulator.pcr(0)
    assert len(payload["cabundle"]) == 4
    # The NSM always writes the timestamp as an 8-byte integer (0x1b).
    assert b"\x69timestamp\x1b" in payload_bytes


@pytest.mark.parametrize(
    ("profile", "indefinite", "first"),
    [
        ("2024", None, 0xA9),  # definite map of nine until 2025
        ("2021", None, 0xA9),
        ("2024", True, 0xBF),  # the override wins
        ("2026", False, 0xA9),
    ],
)
def test_payload_map_follows_the_profile(profile: str, indefinite: bool | None, first: int) -> None:
    document = attest(Emulator(seed=3, profile=profile, indefinite=indefinite))
    payload_bytes = cbor2.loads(document)[2]
    assert payload_bytes[0] == first
    assert (payload_bytes[-1] == 0xFF) == (first == 0xBF)
    assert list(cbor2.loads(payload_bytes)) == AWS_KEY_ORDER


def test_locked_application_pcrs_appear_in_documents(emulator: Emulator) -> None:
    ask(emulator, ExtendPCR(16, b"config"))
    ask(emulator, ExtendPCR(17, b"not locked"))
    ask(emulator, LockPCR(16))
    payload = cbor2.loads(cbor2.loads(attest(emulator))[2])
    assert sorted(payload["pcrs"]) == list(range(17))  # 17 stays unlocked, so absent
    assert payload["pcrs"][16] == emulator.pcr(16)


def test_maximum_fields_fit(emulator: Emulator) -> None:
    # AWS's own test sends 1024 bytes in each field at once (nsm-test/src/bin/nsm-check.rs).
    fields = {"user_data": b"u" * 1024, "nonce": b"n" * 1024, "public_key": b"k" * 1024}
    payload = cbor2.loads(cbor2.loads(attest(emulator, **fields))[2])
    assert (payload["user_data"], payload["nonce"], payload["public_key"]) == tuple(fields.values())


def _chain(payload: dict[str, object]) -> list[x509.Certificate]:
    cabundle = payload["cabundle"]
    leaf = payload["certificate"]
    assert isinstance(cabundle, list)
    assert isinstance(leaf, bytes)
    return [x509.load_der_x509_certificate(d) for d in [*cabundle, leaf]]


def test_document_verifies_with_plain_cryptography(emulator: Emulator) -> None:
    document = attest(emulator, user_data=b"hello")
    protected, _, payload_bytes, signature = cbor2.loads(document)
    payload = cbor2.loads(payload_bytes)
    chain = _chain(payload)
    root_pinned = x509.load_pem_x509_certificate(emulator.root_pem)
    assert chain[0] == root_pinned
    for issuer, child in itertools.pairwise(chain):
        child.verify_directly_issued_by(issuer)
    now = datetime.now(UTC)
    for cert in chain:
        assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    leaf = chain[-1]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3, seconds=3)
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload_bytes])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(utils.encode_dss_signature(r, s), sig_structure, ec.ECDSA(hashes.SHA384()))


@pytest.mark.crosscheck
def test_document_verifies_with_pycose(emulator: Emulator) -> None:
    from pycose.keys.curves import P384
    from pycose.keys.ec2 import EC2Key
    from pycose.messages.sign1message import Sign1Message

    document = attest(emulator, nonce=b"pycose")
    payload = cbor2.loads(cbor2.loads(document)[2])
    public = _chain(payload)[-1].public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    numbers = public.public_numbers()
    key = EC2Key(crv=P384, x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big"))
    # pycose decodes only tagged messages (tag 18); the NSM sends them untagged.
    message = Sign1Message.decode(b"\xd2" + document)
    message.key = key
    assert message.verify_signature()
    tampered = bytearray(document)
    tampered[-1] ^= 1
    message = Sign1Message.decode(b"\xd2" + bytes(tampered))
    message.key = key
    assert not message.verify_signature()


def test_leaf_is_reissued_before_it_expires() -> None:
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    emulator = Emulator(seed=8, clock=lambda: now[0])
    first = cbor2.loads(cbor2.loads(attest(emulator))[2])["certificate"]
    now[0] += timedelta(hours=1)
    assert cbor2.loads(cbor2.loads(attest(emulator))[2])["certificate"] == first
    now[0] += timedelta(hours=2, minutes=55)
    later = cbor2.loads(cbor2.loads(attest(emulator))[2])
    assert later["certificate"] != first
    leaf = x509.load_der_x509_certificate(later["certificate"])
    assert leaf.not_valid_before_utc <= now[0] <= leaf.not_valid_after_utc


def test_intermediates_rotate_but_root_stays() -> None:
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    emulator = Emulator(seed=8, clock=lambda: now[0])
    root = emulator.root_pem
    first = cbor2.loads(cbor2.loads(attest(emulator))[2])
    now[0] += timedelta(days=3)
    later = cbor2.loads(cbor2.loads(attest(emulator))[2])
    assert emulator.root_pem == root
    assert later["cabundle"][0] == first["cabundle"][0]
    assert later["cabundle"][3] != first["cabundle"][3]
    chain = _chain(later)
    for issuer, child in itertools.pairwise(chain):
        child.verify_directly_issued_by(issuer)
        assert child.not_valid_before_utc <= now[0] <= child.not_valid_after_utc
