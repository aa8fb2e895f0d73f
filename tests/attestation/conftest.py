"""Shared fixtures: the real AWS documents (vectors/real, through vectors.corpus) and a synthetic
PKI factory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from attestation import Verifier, load_pem_roots
from attestation.testing import DocumentFactory
from vectors.corpus import REAL_DIR, RealDocument, real_documents, real_manifest

# A fixed chain start so synthetic documents are byte-stable across runs.
SYNTHETIC_EPOCH = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)

#: The tests' name for a real document (vectors.corpus owns the type).
RealVector = RealDocument
MANIFEST = real_manifest()


def real_vectors(kind: str, *, negative: bool = False) -> list[RealVector]:
    return real_documents(kind=kind, negative=negative)


requires_real = pytest.mark.skipif(not MANIFEST, reason=f"real vectors not found at {REAL_DIR}")


@pytest.fixture(scope="session")
def prod() -> RealVector:
    """A real production-mode enclave document (skip tests that use it with `requires_real`)."""
    return next(v for v in real_vectors("nitro-enclave") if not v.debug)


@pytest.fixture(scope="session")
def debug() -> RealVector:
    """A real debug-mode enclave document."""
    return next(v for v in real_vectors("nitro-enclave") if v.debug)


@pytest.fixture(scope="session")
def factory() -> DocumentFactory:
    return DocumentFactory.create(seed=7, not_before=SYNTHETIC_EPOCH)


@pytest.fixture
def synthetic_verifier(factory: DocumentFactory) -> Verifier:
    return Verifier(roots=load_pem_roots(factory.root_pem))


@pytest.fixture
def aws_verifier() -> Iterator[Verifier]:
    yield Verifier.aws()
