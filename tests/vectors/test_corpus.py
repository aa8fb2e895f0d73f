"""The conformance corpus in vectors/corpus: well-formed, complete, reproducible, and passed.

The regeneration test is the CI guard for the corpus: the committed corpus must be exactly
what `vectors/generate.py` writes, so a change to the generator (or to the builder under it)
that is not followed by `python vectors/generate.py` fails `make test`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extra
import pytest

from attestation.builder import build_document
from vectors import corpus
from vectors.cases import FAMILIES
from vectors.cases._world import make_world
from vectors.generate import check_corpus

REPO = Path(__file__).resolve().parents[2]
VECTORS = REPO / "vectors"
CORPUS = corpus.CORPUS_DIR
MANIFEST: dict[str, Any] = corpus.manifest()
CASES: list[dict[str, Any]] = MANIFEST["cases"]
#: The five families of invalid documents (vectors/README.md).
INVALID_FAMILIES = ("envelope", "payload", "chain", "signature", "policy")

#: Corpus cases where our verifier is known to disagree with the expected result (strict
#: xfail, so a fix shows up as a failure until the entry is removed). None at present.
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def _params() -> list[Any]:
    out = []
    for case in corpus.cases():
        marks = []
        if case.id in KNOWN_DISAGREEMENTS:
            marks.append(pytest.mark.xfail(reason=KNOWN_DISAGREEMENTS[case.id], strict=True))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_case(case: corpus.Case) -> None:
    assert case.outcome() == case.expected, case.description


def test_cases_read_back_as_written() -> None:
    # The reading API and the manifest agree field by field, so consumers lose nothing.
    for case, entry in zip(corpus.cases(), CASES, strict=True):
        assert case.id == entry["id"]
        assert case.expected == entry["expected"]
        assert case.policy_spec.to_json() == entry["policy"]
        assert [p.relative_to(CORPUS).as_posix() for p in case.root_paths] == entry["roots"]


def test_manifest_matches_schema() -> None:
    schema = json.loads((VECTORS / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(MANIFEST)


def test_case_ids_are_unique_and_name_their_files() -> None:
    ids = [case["id"] for case in CASES]
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    for case in CASES:
        assert case["family"] == case["id"].split("/")[0]
        assert case["document"] == f"{case['id']}.cbor"
        data = (CORPUS / case["document"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == case["document_sha256"], case["id"]
        assert set(case["roots"]) <= set(MANIFEST["roots"])


def test_every_file_is_referenced() -> None:
    referenced = {"manifest.json", *MANIFEST["roots"], *(c["document"] for c in CASES)}
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    assert on_disk == referenced


def test_coverage() -> None:
    invalid = Counter(c["family"] for c in CASES if not c["expected"]["valid"])
    valid = Counter(c["family"] for c in CASES if c["expected"]["valid"])
    assert sum(invalid.values()) >= 60
    assert all(invalid[family] > 0 for family in INVALID_FAMILIES), invalid
    assert valid["valid"] > 0
    assert set(invalid) | set(valid) <= set(FAMILIES)
    # The high-S and low-S twins and the allowed debug document must be present and valid.
    by_id = {c["id"]: c for c in CASES}
    for must_pass in ("signature/high-s-twin", "signature/low-s-twin", "policy/debug-allowed"):
        assert by_id[must_pass]["expected"] == {"valid": True}


def test_corpus_regenerates_byte_identical(tmp_path: Path) -> None:
    # In a fresh process, as CI runs it: nothing (hash seeds, caches) may leak into the output.
    out = tmp_path / "corpus"
    subprocess.run(
        [sys.executable, str(VECTORS / "generate.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    fresh = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(CORPUS).as_posix(): p.read_bytes() for p in CORPUS.rglob("*") if p.is_file()
    }
    assert sorted(fresh) == sorted(committed)
    differing = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert differing == [], "run `python vectors/generate.py` and commit vectors/corpus"


def test_check_mode_agrees() -> None:
    assert check_corpus(CORPUS) == []


def test_baseline_is_the_builders_nsm_shape() -> None:
    # The corpus assembles its documents from parts (`Doc`: payload entries, signature,
    # envelope) so that cases can change one part; its baseline must be byte for byte what the
    # emulator's `build_document` produces, so the corpus starts from the NSM's exact shape.
    world = make_world()
    expected = build_document(
        leaf=world.leaf,
        cabundle=world.pki.cabundle,
        module_id=world.base.module_id,
        timestamp_ms=world.base.timestamp_ms,
        pcrs=world.base.pcrs,
    )
    assert (CORPUS / "valid/definite-map.cbor").read_bytes() == expected
    indefinite = build_document(
        leaf=world.leaf,
        cabundle=world.pki.cabundle,
        module_id=world.base.module_id,
        timestamp_ms=world.base.timestamp_ms,
        pcrs=world.base.pcrs,
        indefinite=True,
        tag18=True,
    )
    assert (CORPUS / "valid/tag18-indefinite-map.cbor").read_bytes() == indefinite
