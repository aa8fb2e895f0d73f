"""The seven NSM operations through `Nsm.open()` -> cffi ioctl -> nsm.ko -> QEMU's virtio-nsm,
each answer compared with the project's emulator in the same state.

Where QEMU's device differs from the emulator, the test says so with an explicit assertion on
both sides and the reason (hw/virtio/virtio-nsm.c), never by leaving the field out:
- module_id: QEMU answers its `module-id` property, "i-234-enc5678" unless set.
- boot state: QEMU locks no PCR and measures nothing unless it booted an EIF (q35 does not).
- documents: QEMU does not sign. Protected header {1: -1} instead of ES384's {1: -35}, a
  64-byte zero signature, a 64-byte zero "certificate" and a one-entry cabundle of 64 zero
  bytes; its timestamp is `time(NULL) * 1000` (whole seconds).
PCRs used here: 16-23 (other files use 24-31, so no test locks another's PCRs).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Concatenate, ParamSpec

import cbor2
import pytest

from attestation import AttestationDocument, MalformedDocument
from nsm import ErrorCode, ModuleError, Nsm
from nsm._protocol import encode_request
from nsm.emulator import BOOT_LOCKED_PCRS, PCR_SIZE, RANDOM_SIZE, Emulator
from nsm.models import ErrorResponse, ExtendPCR, GetRandom, PcrState, RandomBytes
from tests.kernel.vm import QEMU_MODULE_ID, InProcess, Pair

ZERO_PCR = bytes(PCR_SIZE)
P = ParamSpec("P")


def module_errors(
    pair: Pair, operation: Callable[Concatenate[Nsm, P], object], *args: P.args, **kwargs: P.kwargs
) -> tuple[ErrorCode, ErrorCode]:
    """The ModuleError code each side answers `operation` with (both must refuse)."""
    codes = []
    for module in (pair.device, pair.emulator):
        with pytest.raises(ModuleError) as refused:
            operation(module, *args, **kwargs)
        codes.append(refused.value.code)
    return codes[0], codes[1]


def test_boot_state_is_qemus_not_an_enclaves(pair: Pair) -> None:
    # Recorded by the fixture before the session locked anything.
    boot = pair.boot_description
    fresh = Nsm(InProcess(Emulator(seed=12))).describe()
    assert boot.locked_pcrs == frozenset(), "QEMU locks PCRs only when it boots an EIF"
    assert fresh.locked_pcrs == frozenset(range(BOOT_LOCKED_PCRS)), "the emulator boots locked"
    assert [(p.locked, p.data) for p in pair.boot_pcrs] == [(False, ZERO_PCR)] * boot.max_pcrs
    assert boot.module_id == QEMU_MODULE_ID
    same = dataclasses.replace(boot, module_id=fresh.module_id, locked_pcrs=fresh.locked_pcrs)
    assert same == fresh  # version 1.0.0, 32 PCRs, SHA384


def test_describe_differs_only_in_module_id(pair: Pair) -> None:
    device, emulator = pair.both(Nsm.describe)
    assert device.module_id == QEMU_MODULE_ID != emulator.module_id
    assert dataclasses.replace(device, module_id=emulator.module_id) == emulator
    assert (device.version_major, device.version_minor, device.version_patch) == (1, 0, 0)


def test_describe_pcr_every_index(pair: Pair) -> None:
    for index in range(32):
        device, emulator = pair.both(Nsm.describe_pcr, index)
        assert device == emulator, index


def test_extend_pcr(pair: Pair) -> None:
    value = pair.device.describe_pcr(16).data
    for data in (b"", b"kernel", bytes(range(256)) * 4):
        device, emulator = pair.both(Nsm.extend_pcr, 16, data)
        value = hashlib.sha384(value + data).digest()
        assert device == emulator == value
    assert pair.both(Nsm.describe_pcr, 16) == (PcrState(False, value),) * 2


def test_largest_request_the_driver_passes(pair: Pair) -> None:
    # NSM_REQUEST_MAX_SIZE itself is allowed (the driver refuses only len > 0x1000).
    overhead = len(encode_request(ExtendPCR(18, b"")))
    # 256 bytes of data and more take a 3-byte length header, not the empty string's 1 byte.
    data = b"\xa5" * (0x1000 - overhead - 2)
    assert len(encode_request(ExtendPCR(18, data))) == 0x1000
    device, emulator = pair.both(Nsm.extend_pcr, 18, data)
    assert device == emulator == hashlib.sha384(ZERO_PCR + data).digest()


def test_extending_a_boot_locked_pcr_is_refused(pair: Pair) -> None:
    for index in (0, 15):
        codes = module_errors(pair, Nsm.extend_pcr, index, b"x")
        assert codes == (ErrorCode.READ_ONLY_INDEX, ErrorCode.READ_ONLY_INDEX)


def test_lock_pcr(pair: Pair) -> None:
    pair.both(Nsm.extend_pcr, 17, b"before the lock")
    assert pair.both(Nsm.lock_pcr, 17) == (None, None)
    device, emulator = pair.both(Nsm.describe_pcr, 17)
    assert device == emulator and device.locked
    read_only = (ErrorCode.READ_ONLY_INDEX,) * 2
    assert module_errors(pair, Nsm.extend_pcr, 17, b"after") == read_only
    assert module_errors(pair, Nsm.lock_pcr, 17) == read_only


def test_lock_pcrs(pair: Pair) -> None:
    # Locks 16-19; 16 and 18 were extended above, 17 is already locked: all of them now are.
    assert pair.both(Nsm.lock_pcrs, 20) == (None, None)
    device, emulator = pair.both(Nsm.describe)
    assert device.locked_pcrs == emulator.locked_pcrs
    assert set(range(20)) <= device.locked_pcrs
    assert module_errors(pair, Nsm.extend_pcr, 19, b"x") == (ErrorCode.READ_ONLY_INDEX,) * 2


def test_get_random(pair: Pair) -> None:
    device, emulator = pair.raw(encode_request(GetRandom()))
    assert isinstance(device, RandomBytes) and isinstance(emulator, RandomBytes)
    assert len(device.random) == len(emulator.random) == RANDOM_SIZE
    # More than one answer's worth, through the client's loop.
    first, second = pair.device.get_random(1000), pair.device.get_random(1000)
    assert len(first) == len(second) == 1000 and first != second


def test_errors_for_requests_the_client_would_not_send(pair: Pair) -> None:
    cases = {
        b"\xff": ErrorCode.INVALID_OPERATION,  # not CBOR
        encode_request_text("Shutdown"): ErrorCode.INVALID_OPERATION,  # no such request
        cbor2.dumps({"DescribePCR": {"index": 32}}): ErrorCode.INVALID_INDEX,
        cbor2.dumps({"ExtendPCR": {"index": 32, "data": b"x"}}): ErrorCode.INVALID_INDEX,
        cbor2.dumps({"LockPCR": {"index": 32}}): ErrorCode.INVALID_INDEX,
        cbor2.dumps({"LockPCRs": {"range": 33}}): ErrorCode.INVALID_INDEX,
    }
    for request, code in cases.items():
        answers = pair.raw(request)
        assert answers == (ErrorResponse(code), ErrorResponse(code)), request.hex()


def test_attestation_matches_except_what_qemu_does_not_sign(pair: Pair) -> None:
    pair.both(Nsm.extend_pcr, 21, b"application")
    pair.both(Nsm.lock_pcr, 21)
    fields = {"user_data": b"user data", "nonce": bytes(range(32)), "public_key": b"k" * 1024}
    for request in (fields, {}):
        device, emulator = pair.both(Nsm.attestation, **request)
        d_env, e_env = cbor2.loads(device), cbor2.loads(emulator)
        # The envelope: untagged COSE_Sign1 on both sides; QEMU's unsigned.
        assert device[0] == emulator[0] == 0x84
        assert d_env[0] == bytes.fromhex("a10120") and cbor2.loads(d_env[0]) == {1: -1}
        assert cbor2.loads(e_env[0]) == {1: -35}
        assert d_env[1] == e_env[1] == {}
        assert d_env[3] == bytes(64) and len(e_env[3]) == 96
        with pytest.raises(MalformedDocument) as refused:
            AttestationDocument.parse(device)
        assert refused.value.code == "envelope.protected-header"
        AttestationDocument.parse(emulator)
        # The payload: same keys in the same order, same PCRs and request fields.
        d_pay, e_pay = cbor2.loads(d_env[2]), cbor2.loads(e_env[2])
        assert d_env[2][0] == 0xA9, "QEMU's payload is a definite map of 9 keys"
        assert list(d_pay) == list(e_pay)
        assert d_pay["pcrs"] == e_pay["pcrs"]
        assert sorted(d_pay["pcrs"]) == sorted(pair.device.describe().locked_pcrs)
        assert d_pay["pcrs"][21] == hashlib.sha384(ZERO_PCR + b"application").digest()
        assert d_pay["digest"] == e_pay["digest"] == "SHA384"
        for name in ("user_data", "nonce", "public_key"):
            assert d_pay[name] == e_pay[name] == request.get(name), name
        assert d_pay["module_id"] == QEMU_MODULE_ID != e_pay["module_id"]
        assert d_pay["certificate"] == bytes(64) and e_pay["certificate"][0] == 0x30
        assert d_pay["cabundle"] == [bytes(64)] and len(e_pay["cabundle"]) == 4
        # Whole seconds on QEMU; both from the guest's clock, so close to each other.
        assert d_pay["timestamp"] % 1000 == 0
        assert abs(d_pay["timestamp"] - e_pay["timestamp"]) < 600_000


def encode_request_text(name: str) -> bytes:
    """A unit request (a bare CBOR text string), whether or not it exists."""
    return cbor2.dumps(name)
