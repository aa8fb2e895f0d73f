"""Verifier steps on synthetic documents: signature, time, debug, policy plumbing."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import (
    MAX_CLOCK_SKEW,
    Nonce,
    PcrSet,
    Policy,
    SignatureError,
    UnsafeNoPcrCheck,
    Verifier,
)
from attestation.errors import DebugDocument, FutureDocument, InsecurePolicy, RootError
from attestation.roots import AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root, load_pem_roots
from attestation.testing import DocumentFactory, default_pcrs
from attestation.verifier import der_signature


def _pcrs(factory: DocumentFactory) -> dict[int, bytes]:
    return default_pcrs(factory.pki.instance_id)


def test_verify_returns_verified_values(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    data = factory.document(nonce=b"n1", user_data=b"u", public_key=b"k", indefinite=True)
    doc = synthetic_verifier.verify(
        data, policy=Policy(pcrs=_pcrs(factory), nonce=b"n1"), at=factory.timestamp
    )
    assert (doc.nonce, doc.user_data, doc.public_key) == (b"n1", b"u", b"k")
    assert doc.timestamp == factory.timestamp
    assert doc.raw == data
    assert dict(doc.pcrs) == _pcrs(factory)
    with pytest.raises(AttributeError):
        doc.nonce = b"x"  # type: ignore[misc]


@pytest.mark.parametrize("high_s", [False, True])
@pytest.mark.parametrize("tag18", [False, True])
def test_high_s_and_tag18_accepted(
    factory: DocumentFactory, synthetic_verifier: Verifier, high_s: bool, tag18: bool
) -> None:
    data = factory.document(high_s=high_s, tag18=tag18)
    synthetic_verifier.verify(data, policy=PcrSet(_pcrs(factory)), at=factory.timestamp)


def test_signature_over_received_bytes(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    data = bytearray(factory.document())
    data[-1] ^= 1
    with pytest.raises(SignatureError) as info:
        synthetic_verifier.verify(bytes(data), policy=PcrSet(_pcrs(factory)), at=factory.timestamp)
    assert info.value.code == "signature.invalid"


def test_signature_of_zeroes(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    data = factory.document()
    data = data[:-96] + bytes(96)
    with pytest.raises(SignatureError):
        synthetic_verifier.verify(data, policy=PcrSet(_pcrs(factory)), at=factory.timestamp)


def test_future_document(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    policy = Policy(pcrs=_pcrs(factory))
    data = factory.document()
    synthetic_verifier.verify(data, policy=policy, at=factory.timestamp - MAX_CLOCK_SKEW)
    with pytest.raises(FutureDocument) as info:
        synthetic_verifier.verify(
            data, policy=policy, at=factory.timestamp - MAX_CLOCK_SKEW - timedelta(milliseconds=1)
        )
    assert info.value.code == "policy.future"


def test_debug_document(
    factory: DocumentFactory, synthetic_verifier: Verifier, caplog: pytest.LogCaptureFixture
) -> None:
    pcrs = {i: bytes(48) for i in range(16)}
    data = factory.document(pcrs=pcrs)
    with pytest.raises(DebugDocument):
        synthetic_verifier.verify(data, policy=Policy(pcrs=pcrs), at=factory.timestamp)
    # Even a policy that does not look at PCR0 cannot let a debug document through.
    with pytest.raises(DebugDocument):
        synthetic_verifier.verify(data, policy=PcrSet({3: bytes(48)}), at=factory.timestamp)
    with pytest.raises(DebugDocument):
        synthetic_verifier.verify(data, policy=UnsafeNoPcrCheck(), at=factory.timestamp)
    with caplog.at_level(logging.WARNING, logger="attestation.verifier"):
        for _ in range(2):
            doc = synthetic_verifier.verify(
                data, policy=Policy(pcrs=pcrs, allow_debug=True), at=factory.timestamp
            )
    assert doc.is_debug
    assert sum("debug" in r.getMessage() for r in caplog.records) == 2


def test_policy_required(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    data = factory.document()
    with pytest.raises(TypeError):
        synthetic_verifier.verify(data, policy=None, at=factory.timestamp)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        synthetic_verifier.verify(data, at=factory.timestamp)  # type: ignore[call-arg]
    with pytest.raises(InsecurePolicy) as info:
        synthetic_verifier.verify(data, policy=Nonce(b"x"), at=factory.timestamp)
    assert info.value.code == "policy.no-pcr-check"


def test_policy_runs_after_authentication(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    seen: list[object] = []

    class Recording:
        checks_pcrs = True

        def verify(self, doc: object, at: datetime) -> None:
            seen.append(doc)

    bad = bytearray(factory.document())
    bad[-1] ^= 1
    with pytest.raises(SignatureError):
        synthetic_verifier.verify(bytes(bad), policy=Recording(), at=factory.timestamp)
    assert seen == []
    synthetic_verifier.verify(factory.document(), policy=Recording(), at=factory.timestamp)
    assert len(seen) == 1


def test_time_must_be_aware(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    with pytest.raises(ValueError):
        synthetic_verifier.verify(
            factory.document(),
            policy=PcrSet(_pcrs(factory)),
            at=factory.timestamp.replace(tzinfo=None),
        )


def test_clock_is_injected(factory: DocumentFactory) -> None:
    verifier = Verifier(roots=load_pem_roots(factory.root_pem), clock=lambda: factory.timestamp)
    verifier.verify(factory.document(), policy=PcrSet(_pcrs(factory)))
    late = Verifier(
        roots=load_pem_roots(factory.root_pem), clock=lambda: factory.not_after + timedelta(hours=1)
    )
    with pytest.raises(Exception) as info:
        late.verify(factory.document(), policy=PcrSet(_pcrs(factory)))
    assert getattr(info.value, "code", None) == "chain.expired"


def test_aws_root_pinned() -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    root = aws_nitro_root()
    assert hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() == AWS_NITRO_ROOT_G1_SHA256
    assert Verifier.aws().roots == (root,)


def test_root_pin_mismatch_detected(
    monkeypatch: pytest.MonkeyPatch, factory: DocumentFactory
) -> None:
    import attestation.roots as roots_module

    monkeypatch.setattr(roots_module, "AWS_NITRO_ROOT_G1_SHA256", "00" * 32)
    with pytest.raises(RootError) as info:
        roots_module.aws_nitro_root()
    assert info.value.code == "root.pin-mismatch"


def test_bad_roots() -> None:
    with pytest.raises(RootError):
        load_pem_roots(b"not pem")
    with pytest.raises(ValueError):
        Verifier(roots=[])


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    st.one_of(st.integers(0, 2**384 - 1), st.sampled_from([0, 1, 2**383, 2**384 - 1, 0x80])),
    st.one_of(st.integers(0, 2**384 - 1), st.sampled_from([0, 1, 2**383, 2**384 - 1, 0x80])),
)
def test_der_signature_is_cryptographys_encoding(r: int, s: int) -> None:
    raw = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    assert der_signature(raw) == encode_dss_signature(r, s)
