"""The public test helpers: the document factory and the hypothesis strategies."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation import builder, testing
from attestation.testing import DocumentFactory
from tests.attestation.test_builder import Rejected, verify_document

T0 = datetime(2025, 7, 18, 8, 0, 0, tzinfo=UTC)
# Signing and verifying a document takes about a millisecond; these bounds keep the file fast
# on a two-core machine while still covering every mutation several times.
_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FACTORY = DocumentFactory.create(seed=3, not_before=T0)
ROOT = x509.load_pem_x509_certificate(FACTORY.root_pem)


def _payload(document: bytes) -> dict[str, object]:
    decoded = cbor2.loads(document)
    if isinstance(decoded, cbor2.CBORTag):
        decoded = decoded.value
    payload = cbor2.loads(decoded[2])
    assert isinstance(payload, dict)
    return payload


def test_factory_document_verifies_at_its_timestamp() -> None:
    document = FACTORY.document(nonce=b"challenge", user_data=b"hello")
    payload = verify_document(document, ROOT)
    assert payload["nonce"] == b"challenge"
    assert payload["user_data"] == b"hello"
    assert payload["public_key"] is None
    assert payload["module_id"] == FACTORY.module_id
    stamped = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=payload["timestamp"])
    assert stamped == FACTORY.timestamp
    assert FACTORY.not_before <= stamped <= FACTORY.not_after


def test_factory_with_fixed_start_is_reproducible() -> None:
    again = DocumentFactory.create(seed=3, not_before=T0)
    assert again.document(nonce=b"x") == FACTORY.document(nonce=b"x")
    assert again.root_pem == FACTORY.root_pem
    other = DocumentFactory.create(seed=4, not_before=T0)
    assert other.root_pem != FACTORY.root_pem


def test_factory_without_start_is_valid_now() -> None:
    factory = DocumentFactory.create()
    now = datetime.now(UTC)
    assert factory.not_before <= now <= factory.not_after
    assert abs(factory.timestamp - now) < timedelta(minutes=1)
    payload = verify_document(factory.document(), x509.load_pem_x509_certificate(factory.root_pem))
    assert payload["certificate"] == factory.leaf.der


def test_factory_options_reach_the_bytes() -> None:
    document = FACTORY.document(indefinite=True, tag18=True, high_s=True)
    assert document[:2] == b"\xd2\x84"
    signature = cbor2.loads(document).value[3]
    order = builder._CURVE_ORDERS["secp384r1"]
    assert int.from_bytes(signature[48:], "big") > order // 2
    assert _payload(document)["pcrs"] == testing.default_pcrs(FACTORY.pki.instance_id)
    verify_document(document, ROOT)


def test_default_pcrs_look_like_a_production_enclave() -> None:
    pcrs = testing.default_pcrs("i-1234567890abcdef0")
    assert sorted(pcrs) == list(range(16))
    assert all(len(value) == 48 for value in pcrs.values())
    assert pcrs[0] != bytes(48)  # PCR0 all zero would mark a debug document
    assert pcrs[3] == bytes(48)
    # AWS's documented formula for PCR4 (User Guide, "Where to get an enclave's measurements").
    assert pcrs[4] == hashlib.sha384(bytes(48) + b"i-1234567890abcdef0").digest()


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FACTORY.document(timestamp=datetime(2025, 7, 18, 9))


def test_document_outside_the_leaf_window_is_built_but_rejected() -> None:
    late = FACTORY.leaf.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(Rejected, match="not valid"):
        verify_document(FACTORY.document(timestamp=late), ROOT)


@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_unknown_mutation_is_refused(data: st.DataObject) -> None:
    with pytest.raises(ValueError, match="subset"):
        data.draw(testing.broken_documents(FACTORY, mutations=["shuffle"]))


@_SETTINGS
@given(testing.valid_documents(FACTORY))
def test_valid_documents_verify(document: bytes) -> None:
    payload = verify_document(document, ROOT)
    for name in ("public_key", "user_data", "nonce"):
        value = payload[name]
        assert value is None or (isinstance(value, bytes) and len(value) <= 1024)
    pcrs = payload["pcrs"]
    assert 1 <= len(pcrs) <= 32
    assert all(0 <= index < 32 and len(value) == 48 for index, value in pcrs.items())


@_SETTINGS
@given(
    testing.valid_documents(
        FACTORY, pcrs=st.just({0: bytes(48)}), nonce=st.just(b"fixed"), user_data=st.none()
    )
)
def test_valid_documents_honour_given_strategies(document: bytes) -> None:
    payload = verify_document(document, ROOT)
    assert payload["pcrs"] == {0: bytes(48)}
    assert payload["nonce"] == b"fixed"
    assert payload["user_data"] is None


@pytest.mark.parametrize("mutation", testing.MUTATIONS)
@_SETTINGS
@given(data=st.data())
def test_broken_documents_never_verify(mutation: str, data: st.DataObject) -> None:
    document = data.draw(testing.broken_documents(FACTORY, mutations=[mutation]))
    with pytest.raises(Rejected):
        verify_document(document, ROOT)


@settings(max_examples=10, deadline=None)
@given(testing.broken_documents(FACTORY))
def test_broken_documents_with_any_mutation(document: bytes) -> None:
    with pytest.raises(Rejected):
        verify_document(document, ROOT)
