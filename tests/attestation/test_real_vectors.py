"""The real AWS-signed documents in vectors/real, verified end to end."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from attestation import (
    AttestationDocument,
    AttestationError,
    MalformedDocument,
    Policy,
    SignatureError,
    UnsupportedDocumentKind,
    Verifier,
)
from attestation.errors import CertificateExpired, CertificateNotYetValid, DebugDocument
from tests.attestation.conftest import RealVector, real_vectors, requires_real

pytestmark = requires_real

ENCLAVE = real_vectors("nitro-enclave")
NEGATIVE = {v.name.split("_")[2]: v for v in real_vectors("nitro-enclave", negative=True)}
TPM = real_vectors("nitrotpm")


def _own_pcrs(vector: RealVector) -> dict[int, bytes]:
    return dict(AttestationDocument.parse(vector.data).pcrs)


def _policy(vector: RealVector, **overrides: object) -> Policy:
    kwargs: dict[str, object] = {"pcrs": _own_pcrs(vector), "allow_debug": vector.debug}
    kwargs.update(overrides)
    return Policy(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    # One verifier for the module: the expiry tests below then run against a warm cache.
    return Verifier.aws()


def test_vector_counts() -> None:
    assert len(ENCLAVE) == 63
    assert sum(v.debug for v in ENCLAVE) == 33
    assert len(TPM) == 3
    assert sorted(NEGATIVE) == ["badsig", "malformed-as-published", "pcr-bitflip"]
    assert len(real_vectors("nitro-enclave", negative=True)) == 4


def _field_state(value: bytes | None) -> str:
    return "null" if value is None else f"bstr[{len(value)}]"


@pytest.mark.parametrize("vector", ENCLAVE, ids=lambda v: v.name)
def test_verifies_at_its_timestamp(
    vector: RealVector, verifier: Verifier, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        doc = verifier.verify(vector.data, policy=_policy(vector), at=vector.timestamp)
    assert doc.module_id == vector.entry["module_id"]
    assert doc.timestamp == vector.timestamp
    assert doc.pcrs[0].hex() == vector.entry["pcr0_hex"]
    assert len(doc.pcrs) == vector.entry["pcr_count"]
    assert _field_state(doc.public_key) == vector.entry["public_key"]
    assert _field_state(doc.user_data) == vector.entry["user_data"]
    assert _field_state(doc.nonce) == vector.entry["nonce"]
    assert len(doc.certificates) == 5
    assert doc.certificates[-1] == verifier.roots[0]
    assert doc.is_debug == vector.debug
    # allow_debug logs each time it lets a debug document through.
    assert any("debug" in r.getMessage() for r in caplog.records) == vector.debug


@pytest.mark.parametrize("vector", [v for v in ENCLAVE if v.debug], ids=lambda v: v.name)
def test_debug_documents_refused_by_default(vector: RealVector, verifier: Verifier) -> None:
    with pytest.raises(DebugDocument) as info:
        verifier.verify(vector.data, policy=_policy(vector, allow_debug=False), at=vector.timestamp)
    assert info.value.code == "policy.debug"


@pytest.mark.parametrize("vector", ENCLAVE, ids=lambda v: v.name)
def test_fails_outside_chain_window(vector: RealVector, verifier: Verifier) -> None:
    start, end = vector.window
    # Warm the cache first: the cached path must still be rejected outside its window.
    verifier.verify(vector.data, policy=_policy(vector), at=vector.timestamp)
    policy = _policy(vector, max_age=None)
    with pytest.raises(CertificateExpired) as info:
        verifier.verify(vector.data, policy=policy, at=end + timedelta(seconds=1))
    assert info.value.code == "chain.expired"
    # Just before the window the document is also "from the future", but the chain step runs
    # first and says why precisely.
    with pytest.raises(CertificateNotYetValid) as early:
        verifier.verify(vector.data, policy=policy, at=start - timedelta(seconds=1))
    assert early.value.code == "chain.not-yet-valid"


@pytest.mark.parametrize("vector", ENCLAVE, ids=lambda v: v.name)
def test_wrong_pcr_refused(vector: RealVector, verifier: Verifier) -> None:
    pcrs = _own_pcrs(vector)
    pcrs[2] = bytes(b ^ 0x01 for b in pcrs[2])
    with pytest.raises(AttestationError) as info:
        verifier.verify(vector.data, policy=_policy(vector, pcrs=pcrs), at=vector.timestamp)
    assert info.value.code == "policy.pcr-mismatch"


def test_stale_at_end_of_window_under_default_max_age(verifier: Verifier) -> None:
    vector = next(v for v in ENCLAVE if not v.debug)
    _, end = vector.window
    with pytest.raises(AttestationError) as info:
        verifier.verify(vector.data, policy=_policy(vector), at=end - timedelta(seconds=1))
    assert info.value.code == "policy.stale"


@pytest.mark.parametrize("vector", TPM, ids=lambda v: v.name)
def test_nitrotpm_refused_as_wrong_kind(vector: RealVector, verifier: Verifier) -> None:
    parsed = AttestationDocument.parse(vector.data)
    assert parsed.kind == "nitrotpm"
    assert len(parsed.pcrs) == 24
    with pytest.raises(UnsupportedDocumentKind) as info:
        verifier.verify(vector.data, policy=Policy(pcrs=dict(parsed.pcrs)), at=vector.timestamp)
    assert info.value.code == "document.nitrotpm"


@pytest.mark.parametrize("kind", ["badsig", "pcr-bitflip"])
def test_negative_bad_signature(kind: str, verifier: Verifier) -> None:
    # Both badsig files and the Signal bit flip parse and chain fine; only ES384 fails.
    for vector in [
        v for v in real_vectors("nitro-enclave", negative=True) if f"_{kind}_" in v.name
    ]:
        with pytest.raises(SignatureError) as info:
            verifier.verify(vector.data, policy=_policy(vector), at=vector.timestamp)
        assert info.value.code == "signature.invalid"


def test_negative_badsig_count() -> None:
    assert (
        len([v for v in real_vectors("nitro-enclave", negative=True) if "_badsig_" in v.name]) == 2
    )


def test_negative_truncated_document_is_malformed(verifier: Verifier) -> None:
    vector = NEGATIVE["malformed-as-published"]
    with pytest.raises(MalformedDocument) as info:
        AttestationDocument.parse(vector.data)
    assert info.value.code.startswith(("cbor.", "envelope."))
    with pytest.raises(MalformedDocument):
        verifier.verify(vector.data, policy=Policy(pcrs={0: bytes(48)}), at=vector.timestamp)


def test_the_repaired_twin_of_the_truncated_document_verifies(verifier: Verifier) -> None:
    twin = next(v for v in ENCLAVE if v.name.endswith("base-nitro-validator_9e038c2d.cbor"))
    doc = verifier.verify(twin.data, policy=_policy(twin), at=twin.timestamp)
    broken = NEGATIVE["malformed-as-published"]
    assert doc.timestamp == broken.timestamp
    assert len(twin.data) == len(broken.data) + 3


def test_empty_public_key_document_is_accepted_and_distinct_from_null(verifier: Verifier) -> None:
    vector = next(v for v in ENCLAVE if v.entry["public_key"] == "bstr[0]")
    doc = verifier.verify(vector.data, policy=_policy(vector), at=vector.timestamp)
    assert doc.public_key == b""


def test_indefinite_payload_documents_present() -> None:
    indefinite = [v for v in ENCLAVE if v.entry["payload_map"].startswith("indefinite")]
    assert len(indefinite) == 2
    for vector in indefinite:
        parsed = AttestationDocument.parse(vector.data)
        assert parsed.payload[0] == 0xBF
