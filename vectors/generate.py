"""Generate the attestation conformance corpus (`vectors/corpus/`) deterministically.

    python vectors/generate.py [--out vectors/corpus] [--check]

The cases are in `vectors/cases/` (one function per case, one module per family). Everything
comes from a fixed seed and fixed instants (`vectors/cases/_world.py`), so two runs write
byte-identical files, and `--check` (run by CI through `tests/vectors/test_corpus.py`) fails on
any difference from the committed corpus.

Every invalid case changes exactly one thing in an otherwise valid document (where that cannot be
done, its description says what else differs), so the expected error code is the one a correct
verifier must report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

if __package__ in {None, ""}:
    # Run as a script (`python vectors/generate.py`): make the repository importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectors.cases import FAMILIES, Generated, build_cases
from vectors.cases._world import SEED
from vectors.corpus import CORPUS_DIR

__all__ = ["FAMILIES", "FORMAT_VERSION", "build_corpus", "check_corpus", "main", "write_corpus"]

FORMAT_VERSION = 1


def manifest(cases: Sequence[Generated], roots: dict[str, bytes]) -> dict[str, object]:
    return {
        "$schema": "../schema.json",
        "format_version": FORMAT_VERSION,
        "generator": "vectors/generate.py",
        "seed": SEED,
        "description": (
            "Conformance corpus for Nitro Enclaves attestation verifiers: synthetic AWS-profile "
            "PKI, deterministic documents. See vectors/README.md."
        ),
        "roots": sorted(roots),
        "cases": [case.to_json() for case in cases],
    }


def build_corpus() -> dict[str, bytes]:
    """Every file of the corpus: relative path -> bytes."""
    cases, roots = build_cases()
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise AssertionError("duplicate case ids")
    files: dict[str, bytes] = dict(roots)
    for case in cases:
        files[case.path] = case.document
    text = json.dumps(manifest(cases, roots), indent=2, ensure_ascii=False) + "\n"
    files["manifest.json"] = text.encode()
    return files


def _existing(out: Path) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def check_corpus(out: Path) -> list[str]:
    """The differences between a fresh build and the files in `out` (empty if identical)."""
    fresh = build_corpus()
    current = _existing(out)
    problems = [f"missing: {name}" for name in sorted(fresh.keys() - current.keys())]
    problems += [f"unexpected: {name}" for name in sorted(current.keys() - fresh.keys())]
    problems += [
        f"differs: {name}"
        for name in sorted(fresh.keys() & current.keys())
        if fresh[name] != current[name]
    ]
    return problems


def write_corpus(out: Path) -> int:
    """Replace the contents of `out` with a fresh build; returns the number of files.

    `out` must be absent, empty, or a previous corpus (it has a `manifest.json`): it is
    deleted and rewritten, so a mistyped `--out` must not take a source directory with it.
    """
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise SystemExit(f"{out} is not empty and holds no manifest.json: refusing to replace it")
    files = build_corpus()
    # Build next to the target and swap, so a failure never leaves a half-written corpus.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".corpus-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary repository data
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return len(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=CORPUS_DIR, help="corpus directory")
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the directory differs from a fresh build",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_corpus(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{args.out}: corpus is stale; run python vectors/generate.py", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    count = write_corpus(args.out)
    print(f"wrote {count} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
