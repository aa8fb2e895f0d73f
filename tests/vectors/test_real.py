"""The real AWS documents in vectors/real: complete, with provenance, and read intact."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.roots import aws_nitro_root
from vectors import corpus

ENTRIES = corpus.real_manifest()
pytestmark = pytest.mark.skipif(not ENTRIES, reason=f"no real vectors at {corpus.REAL_DIR}")


def test_every_file_has_an_entry_and_every_entry_a_file() -> None:
    on_disk = {
        p.relative_to(corpus.REAL_DIR).as_posix()
        for p in corpus.REAL_DIR.rglob("*")
        if p.is_file() and p.name != "MANIFEST.json"
    }
    assert on_disk == {entry["file"] for entry in ENTRIES}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: str(e["file"]))
def test_provenance_and_digest(entry: dict[str, object]) -> None:
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", str(entry["source_repo"]))
    assert entry["source_path"]
    assert re.fullmatch(r"[0-9a-f]{40}", str(entry["source_commit"]))
    data = (corpus.REAL_DIR / str(entry["file"])).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_counts_by_kind() -> None:
    enclave = corpus.real_documents(kind="nitro-enclave")
    assert len(enclave) == 63
    assert sum(doc.debug for doc in enclave) == 33
    assert len(corpus.real_documents(kind="nitrotpm")) == 3
    negatives = corpus.real_documents(negative=True)
    assert len(negatives) == 4
    assert all(doc.name.startswith("negative/") for doc in negatives)
    assert len(corpus.real_documents(negative=None)) == 70


def test_the_root_is_the_pinned_aws_root() -> None:
    pem = (corpus.REAL_DIR / "aws_nitro_root_g1.pem").read_bytes()
    root = x509.load_pem_x509_certificate(pem)
    assert root.public_bytes(serialization.Encoding.DER) == aws_nitro_root().public_bytes(
        serialization.Encoding.DER
    )


def test_a_damaged_copy_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "real"
    shutil.copytree(corpus.REAL_DIR, copy)
    victim = copy / corpus.real_documents()[0].name
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        corpus.real_documents(real_dir=copy)
