"""Robustness: only AttestationError escapes, and no semantics-changing mutation verifies."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import AttestationDocument, AttestationError, Policy, Verifier
from attestation.testing import DocumentFactory, broken_documents, default_pcrs
from tests.attestation.conftest import RealVector, real_vectors, requires_real


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_attestation_errors(data: bytes) -> None:
    with pytest.raises(AttestationError):
        AttestationDocument.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_prefixed_garbage(data: st.DataObject) -> None:
    # Start like a COSE_Sign1 so the fuzzer gets past the first byte.
    prefix = data.draw(st.sampled_from([b"\x84", b"\xd2\x84", b"\x84\x44\xa1\x01\x38\x22\xa0"]))
    body = data.draw(st.binary(max_size=256))
    with pytest.raises(AttestationError):
        AttestationDocument.parse(prefix + body)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_broken_synthetic_documents_rejected(data: st.DataObject) -> None:
    factory = DocumentFactory.create(seed=3, not_before=_EPOCH)
    document = data.draw(broken_documents(factory))
    verifier = Verifier(roots=[factory.pki.root.certificate])
    with pytest.raises(AttestationError):
        verifier.verify(
            document,
            policy=Policy(pcrs=default_pcrs(factory.pki.instance_id), max_age=None),
            at=factory.timestamp,
        )


from datetime import UTC, datetime  # noqa: E402

_EPOCH = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    op = rng.randrange(3)
    pos = rng.randrange(len(out))
    if op == 0:
        out[pos] ^= 1 << rng.randrange(8)
    elif op == 1:
        out.insert(pos, rng.randrange(256))
    else:
        del out[pos]
    return bytes(out)


def _signed_content(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    try:
        doc = AttestationDocument.parse(data)
    except AttestationError:
        return None
    return doc.protected, doc.payload, doc.signature


@requires_real
def test_mutations_of_real_documents() -> None:
    rng = random.Random(20260101)  # deterministic
    vectors: list[RealVector] = rng.sample(real_vectors("nitro-enclave"), 8)
    verifier = Verifier.aws()
    rejected = accepted_same = 0
    for vector in vectors:
        original = _signed_content(vector.data)
        assert original is not None
        policy = Policy(
            pcrs=dict(AttestationDocument.parse(vector.data).pcrs),
            allow_debug=vector.debug,
            max_age=None,
        )
        for _ in range(50):
            mutated = _mutate(rng, vector.data)
            try:
                verifier.verify(mutated, policy=policy, at=vector.timestamp)
            except AttestationError:
                rejected += 1
                continue
            # Accepted: it must carry exactly the signed content and signature of the original
            # (e.g. a tag 18 inserted in front); anything else would be a forgery.
            assert _signed_content(mutated) == original, mutated.hex()
            accepted_same += 1
    assert rejected + accepted_same == 400
    assert rejected >= 390


@requires_real
@pytest.mark.parametrize("seed", range(3))
def test_every_byte_of_the_signed_region_matters(seed: int) -> None:
    vector = real_vectors("nitro-enclave")[seed * 20]
    parsed = AttestationDocument.parse(vector.data)
    start = vector.data.index(parsed.payload)
    verifier = Verifier.aws()
    policy = Policy(pcrs=dict(parsed.pcrs), allow_debug=vector.debug, max_age=None)
    rng = random.Random(seed)
    offsets = rng.sample(range(start, start + len(parsed.payload)), 60)
    for offset in offsets:
        mutated = bytearray(vector.data)
        mutated[offset] ^= 1 << rng.randrange(8)
        with pytest.raises(AttestationError):
            verifier.verify(bytes(mutated), policy=policy, at=vector.timestamp)
