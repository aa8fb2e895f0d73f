"""Shared fixtures: the real AWS documents (read in place) and a synthetic PKI factory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from attestation import Verifier, load_pem_roots
from attestation.testing import DocumentFactory

# tests/attestation/conftest.py -> repo root -> ../shared/vectors/real
REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "real"
# A fixed chain start so synthetic documents are byte-stable across runs.
SYNTHETIC_EPOCH = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class RealVector:
    entry: dict[str, Any]
    data: bytes

    @property
    def name(self) -> str:
        return str(self.entry["file"])

    @property
    def timestamp(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            milliseconds=int(self.entry["known_timestamp_ms"])
        )

    @property
    def window(self) -> tuple[datetime, datetime]:
        start, end = self.entry["chain_valid_window_utc"]
        return datetime.fromisoformat(start), datetime.fromisoformat(end)

    @property
    def debug(self) -> bool:
        return str(self.entry.get("enclave_mode", "")).startswith("debug")


def _manifest() -> list[dict[str, Any]]:
    path = REAL_DIR / "MANIFEST.json"
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())
    return entries


MANIFEST = _manifest()


def real_vectors(kind: str, *, negative: bool = False) -> list[RealVector]:
    out = []
    for entry in MANIFEST:
        if entry.get("doc_kind") != kind:
            continue
        if entry["file"].startswith("negative/") != negative:
            continue
        out.append(RealVector(entry, (REAL_DIR / entry["file"]).read_bytes()))
    return out


requires_real = pytest.mark.skipif(not MANIFEST, reason=f"real vectors not found at {REAL_DIR}")


@pytest.fixture(scope="session")
def factory() -> DocumentFactory:
    return DocumentFactory.create(seed=7, not_before=SYNTHETIC_EPOCH)


@pytest.fixture
def synthetic_verifier(factory: DocumentFactory) -> Verifier:
    return Verifier(roots=load_pem_roots(factory.root_pem))


@pytest.fixture
def aws_verifier() -> Iterator[Verifier]:
    yield Verifier.aws()
