"""The repository stands alone: no tracked text file points at something outside it.

Comments, docstrings, docs and deploy files cite public sources (a standard, a vendor's
documentation, a file of a public repository) or files of this repository. Three kinds of pointer
are refused, each reported as `path:line`:

- the shared directory next to the checkout (`..` then `/shared`), or any other absolute path
  of the development machine, which a clone does not have;
- a `reference/<name>.md` path, or a `<name>.md §N` section, naming a Markdown file that is not
  in the repository (and is not a public document cited by name, such as AWS's
  `attestation_process.md`);
- a number in this project's issue tracker: a bare `#N`, or `issue N` / `PR N` / `pull request N`
  with no project named before it. Other projects' numbers are fine when the project is named:
  `owner/repo#N`, `<repo> PR #N`, `<repo> issue N` (`<repo>` with a `/` or `-` in it).

The sample strings in this file are assembled from pieces so that the scan does not flag them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Public documents that are cited by file name and section (they are not in this repository).
PUBLIC_DOCUMENTS = frozenset({"attestation_process.md"})
#: Generated dependency pins: machine-written, never a citation.
LOCK_FILES = frozenset({"package-lock.json", "uv.lock", "poetry.lock"})
SKIPPED_DIRECTORIES = frozenset({"node_modules", ".venv"})

#: The shared directory beside the checkout, or an absolute path of the development machine
#: (not one inside a URL).
_OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])/wor[k]/")
_REFERENCE_PATH = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*reference/[\w.-]+\.md)\b")
_SECTION_OF = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w-]+\.md)`?\s*§")
#: A bare `#N`: not part of a word (PKCS#7) or of `owner/repo#N`.
_BARE_NUMBER = re.compile(r"(?<![\w/.#-])#\d+\b")
_NUMBERED = re.compile(r"\b(?:issues?|PRs?|pull requests?)\s+#?\d+", re.IGNORECASE)
#: What may name the other project right before `issue N` / `PR #N`: a repository name.
_PROJECT_BEFORE = re.compile(r"[\w.]*[/-][\w./-]*\s+$")


def _tracked_files() -> list[PurePosixPath]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [PurePosixPath(p) for p in out.decode("utf-8").split("\0") if p]


TRACKED = _tracked_files()
TRACKED_NAMES = {str(p) for p in TRACKED}
TRACKED_BASENAMES = {p.name for p in TRACKED}


def _scanned(path: PurePosixPath) -> bool:
    if SKIPPED_DIRECTORIES & set(path.parts) or path.name in LOCK_FILES:
        return False
    if path.name.endswith(".lock"):
        return False
    return not (path.parts[:2] == ("vectors", "real") and path.suffix == ".cbor")


def _text(path: PurePosixPath) -> str | None:
    data = (ROOT / path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _markdown_missing(path: str, *, section: bool) -> bool:
    """True when `path` names no file of this repository; with `section` (a `<name>.md §N`
    citation), a bare file name may be any tracked file's, or a public document's."""
    if path in TRACKED_NAMES or any(name.endswith("/" + path) for name in TRACKED_NAMES):
        return False
    if not section:
        return True
    name = PurePosixPath(path).name
    if "/" not in path and name in TRACKED_BASENAMES:
        return False
    return name not in PUBLIC_DOCUMENTS


def problems_in(line: str) -> list[str]:
    """Why `line` points outside the repository; empty when it does not."""
    found: list[str] = []
    if _OUTSIDE.search(line):
        found.append("a directory outside the repository")
    for match in _REFERENCE_PATH.finditer(line):
        if _markdown_missing(match.group(1), section=False):
            found.append(f"{match.group(1)} is not in the repository")
    for match in _SECTION_OF.finditer(line):
        path = match.group(1)
        if "reference/" not in path and _markdown_missing(path, section=True):
            found.append(f"a section of {path}, which is not in the repository")
    numbered_spans = []
    for match in _NUMBERED.finditer(line):
        numbered_spans.append(match.span())
        if not _PROJECT_BEFORE.search(line[: match.start()]):
            found.append(f"{match.group(0)!r}: an issue number with no project named")
    for match in _BARE_NUMBER.finditer(line):
        if any(start <= match.start() < end for start, end in numbered_spans):
            continue
        found.append(f"{match.group(0)!r}: an issue number with no project named")
    return found


# --- the rules themselves ------------------------------------------------------------------------

_HASH = "#"
_DOTS = ".."


@pytest.mark.parametrize(
    "line",
    [
        "see " + _DOTS + "/shared/vectors for the originals",
        "the venv at /" + "work/main/.venv",
        "(reference/nsm" + ".md §4.4)",
        "as in docs/reference/" + "oracle.md",
        "the route table of networking" + ".md §7.1",
        "# Issue" + " 6: 413 for a body over the limit",
        "Targets (issue" + " 4): at most 1 ms",
        "fixed in PR " + _HASH + "12",
        "worker panics (" + _HASH + "549)",
        "re-resolves by TTL, " + _HASH + "606",
    ],
)
def test_pointers_outside_the_repository_are_found(line: str) -> None:
    assert problems_in(line), line


@pytest.mark.parametrize(
    "line",
    [
        "(aptos-labs/aptos-core PR " + _HASH + "20103 review)",
        "vsock-proxy uses the record's TTL, aws-nitro-enclaves-cli PR " + _HASH + "606",
        "(aws/aws-nitro-enclaves-cli" + _HASH + "549)",
        "reported on hf/nitrite pull requests 3 and 5",
        "https://github.com/aws/aws-nitro-enclaves-cli/issues/549",
        "https://github.com/org/repo/pull/123",
        "https://example.com/" + "work/shared/page",
        "PKCS" + _HASH + "7 padding, PKCS" + _HASH + "1 v1.5 key transport",
        "AWS's `attestation_process" + ".md` §3.2.3",
        "the kernel test VM (kernel-vm.md §1)",
        "RFC 5280 §4.1.2.5: valid from notBefore to notAfter",
        "the leaf's serial: the enclave id, 4 zero bytes and the issue time",
    ],
)
def test_public_pointers_and_ordinary_text_pass(line: str) -> None:
    assert problems_in(line) == [], line


# --- the repository ------------------------------------------------------------------------------


def test_there_are_files_to_scan() -> None:
    scanned = [p for p in TRACKED if _scanned(p)]
    assert len(scanned) > 200
    assert PurePosixPath("README.md") in scanned


def test_no_tracked_file_points_outside_the_repository() -> None:
    report: list[str] = []
    for path in TRACKED:
        if not _scanned(path) or not (ROOT / path).is_file():
            continue
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            report.extend(f"{path}:{number}: {why}" for why in problems_in(line))
    assert not report, "pointers outside the repository:\n" + "\n".join(report)
