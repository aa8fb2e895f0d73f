"""The fast chain path against cryptography's `x509.verification` engine, on every chain we have.

`ChainValidator` accepts a chain through `_fast_path` (explicit checks for the shape AWS issues,
no engine) when it can and otherwise falls back to `_validate_engine`, the reference: explicit
checks around cryptography's path builder with the webpki policies. Two properties keep that
honest, and are checked here on the real chains, on every corpus chain and on hand-made edge
cases:

- the fast path never accepts what the reference rejects, and when both accept they return
  the same path (so a fast-path bug cannot widen what verifies);
- the fast path accepts every real chain and every valid corpus chain (so it is the path that
  actually runs, and the engine stays the judge of everything unusual).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation import AttestationDocument, ChainError, MalformedDocument, load_pem_roots
from attestation._chain import ChainValidator, VerifiedChain
from attestation.builder import CertifiedKey, issue_certificate, key_usage
from attestation.roots import aws_nitro_root
from attestation.testing import DocumentFactory
from tests.attestation.conftest import RealVector, real_vectors, requires_real
from vectors import corpus


def _both(
    validator: ChainValidator, leaf_der: bytes, bundle: tuple[bytes, ...], at: datetime
) -> tuple[VerifiedChain | None, VerifiedChain | ChainError]:
    """(fast path result, reference result or its error), each on a fresh parse."""
    leaf = validator._load(leaf_der, "certificate")
    intermediates = [validator._load(der, "cabundle") for der in bundle]
    fast = validator._fast_path(leaf_der, leaf, bundle, intermediates, at)
    try:
        reference: VerifiedChain | ChainError = validator._validate_engine(leaf, intermediates, at)
    except ChainError as exc:
        reference = exc
    return fast, reference


def _agree(fast: VerifiedChain | None, reference: VerifiedChain | ChainError) -> None:
    if fast is None:
        return
    assert isinstance(reference, VerifiedChain), f"fast path accepted, engine said {reference}"
    assert fast == reference


@requires_real
@pytest.mark.parametrize("vector", real_vectors("nitro-enclave"), ids=lambda v: v.name)
def test_real_chains(vector: RealVector) -> None:
    validator = ChainValidator([aws_nitro_root()], cache_size=0)
    doc = AttestationDocument.parse(vector.data)
    start, end = vector.window
    fast, reference = _both(validator, doc.certificate, doc.cabundle[1:], vector.timestamp)
    assert fast is not None, "the fast path must cover every real chain"
    _agree(fast, reference)
    for at in (start - timedelta(seconds=1), end + timedelta(seconds=1)):
        fast, reference = _both(validator, doc.certificate, doc.cabundle[1:], at)
        assert fast is None
        assert isinstance(reference, ChainError)


def _corpus_cases() -> list[corpus.Case]:
    """Corpus cases whose document parses, so that there is a chain to compare."""
    out = []
    for case in corpus.cases():
        try:
            AttestationDocument.parse(case.document())
        except MalformedDocument:
            continue
        out.append(case)
    return out


@pytest.mark.skipif(not _corpus_cases(), reason="vectors/corpus not generated")
@pytest.mark.parametrize("case", _corpus_cases(), ids=lambda c: c.id)
def test_corpus_chains(case: corpus.Case) -> None:
    doc = AttestationDocument.parse(case.document())
    validator = ChainValidator(case.trust_roots(), cache_size=0)
    try:
        fast, reference = _both(validator, doc.certificate, doc.cabundle[1:], case.at)
    except ChainError as exc:
        assert exc.code == "chain.certificate-malformed"
        return
    _agree(fast, reference)
    if case.expected_code is None or not case.expected_code.startswith("chain."):
        assert fast is not None, "the fast path must cover every valid corpus chain"


def _instance_with(
    factory: DocumentFactory, extras: list[tuple[x509.ExtensionType, bool]], **overrides: Any
) -> tuple[bytes, ...]:
    """The bundle with the instance CA re-issued (same key and name) with changes."""
    pki = factory.pki
    instance = pki.instance.certificate
    kwargs: dict[str, Any] = {
        "subject": instance.subject,
        "public_key": pki.instance.key.public_key(),
        "issuer": pki.zonal.certificate,
        "issuer_key": pki.zonal.key,
        "not_before": instance.not_valid_before_utc,
        "not_after": instance.not_valid_after_utc,
        "ca": True,
        "path_length": 0,
        "key_usage": key_usage(key_cert_sign=True, crl_sign=True, digital_signature=True),
        "extra_extensions": extras,
    }
    kwargs.update(overrides)
    certificate = issue_certificate(**kwargs)
    return (*pki.cabundle[1:3], CertifiedKey(pki.instance.key, certificate).der)


_EDGE_CASES: dict[str, tuple[list[tuple[x509.ExtensionType, bool]], dict[str, Any]]] = {
    "baseline": ([], {}),
    "eku-server-auth": ([(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)], {}),
    "eku-critical": ([(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), True)], {}),
    "name-constraints": (
        [(x509.NameConstraints([x509.DNSName("aws")], None), True)],
        {},
    ),
    "policies-critical": (
        [
            (
                x509.CertificatePolicies(
                    [x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]
                ),
                True,
            )
        ],
        {},
    ),
    "unknown-noncritical": (
        [
            (
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"\x05\x00"
                ),
                False,
            )
        ],
        {},
    ),
    "ski-and-aki": ([], {"subject_key_identifier": True, "authority_key_identifier": True}),
    "ku-not-critical": ([], {"key_usage_critical": False}),
    "bc-not-critical": ([], {"basic_constraints_critical": False}),
    "pathlen-1": ([], {"path_length": 1}),
    "no-pathlen": ([], {"path_length": None}),
    "ca-false": ([], {"ca": False, "path_length": None}),
    "sha512": ([], {"hash_algorithm": hashes.SHA512()}),
}


@pytest.mark.parametrize("name", sorted(_EDGE_CASES))
def test_edge_cases(name: str, factory: DocumentFactory) -> None:
    extras, overrides = _EDGE_CASES[name]
    bundle = _instance_with(factory, extras, **overrides)
    validator = ChainValidator(load_pem_roots(factory.root_pem), cache_size=0)
    fast, reference = _both(validator, factory.leaf.der, bundle, factory.timestamp)
    _agree(fast, reference)
    if name == "baseline":
        assert fast is not None
