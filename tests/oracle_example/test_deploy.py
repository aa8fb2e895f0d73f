"""The enclave image is reproducible: base image by digest, dependencies from a hashed lock file
that satisfies the project's own requirements."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "oracle_example" / "deploy"
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def locked() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes), from requirements.lock."""
    text = (DEPLOY / "requirements.lock").read_text()
    entries: dict[str, tuple[Version, int]] = {}
    # one entry per block: "name==version \\" then its hash lines
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.splitlines()[0]
        if first.startswith(("#", "--")) or not first.strip():
            continue
        match = _PIN.match(first)
        assert match is not None, f"not pinned with ==: {first!r}"
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{name} locked twice"
        entries[name] = (Version(match.group(2)), len(_HASH.findall(block)))
    return entries


def requirements() -> list[Requirement]:
    """What the image needs: the core dependencies and the oracle extra, with its net extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["oracle"]]
    out: list[Requirement] = []
    for text in wanted:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            out += [Requirement(t) for extra in sorted(req.extras) for t in extras[extra]]
        else:
            out.append(req)
    return out


def test_every_requirement_is_locked_at_a_version_it_accepts() -> None:
    lock = locked()
    reqs = requirements()
    assert {canonicalize_name(r.name) for r in reqs} >= {
        "cbor2",
        "coincurve",
        "httpcore2",
        "safe-pysha3",
    }
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in requirements.lock"
        version, _ = lock[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs {req}"


def test_every_locked_file_is_hashed() -> None:
    lock = locked()
    assert len(lock) >= len(requirements())
    for name, (_, hashes) in lock.items():
        assert hashes >= 1, f"{name} has no --hash"


def test_the_image_pins_its_base_by_digest_and_installs_with_hashes() -> None:
    dockerfile = (DEPLOY / "Dockerfile.enclave").read_text()
    froms = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms and all(re.fullmatch(r"FROM \S+@sha256:[0-9a-f]{64}", f) for f in froms), froms
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in dockerfile
    # the package itself is installed without resolving anything beyond the lock
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert all("--no-deps" in line for line in installs), installs
