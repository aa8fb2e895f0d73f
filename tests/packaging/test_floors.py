"""The declared dependency floors are the versions `make test-lowest` runs the suite on.

`make test-lowest` installs the lowest declared versions (`uv pip install --resolution
lowest-direct`) and sets NSM_LOWEST_RUN=1; this test then checks that every direct requirement
really is installed at its floor, so a floor that the resolver had to lift (because another
requirement needs more) is reported instead of silently never tested.
"""

from __future__ import annotations

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(r) for r in extra]
    return [
        r for r in found if r.name != project["name"] and (r.marker is None or r.marker.evaluate())
    ]


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return max(floors) if floors else None


def test_every_requirement_has_a_floor() -> None:
    assert [str(r) for r in _requirements() if _floor(r) is None] == []


@pytest.mark.skipif(
    os.environ.get("NSM_LOWEST_RUN") != "1", reason="only in `make test-lowest`'s environment"
)
def test_installed_versions_are_the_declared_floors() -> None:
    lifted = {
        r.name: f"declared >= {_floor(r)}, installed {metadata.version(r.name)}"
        for r in _requirements()
        if Version(metadata.version(r.name)) != _floor(r)
    }
    assert lifted == {}


@pytest.mark.skipif(
    os.environ.get("NSM_NEWEST_RUN") != "1", reason="only in `make test-newest`'s environment"
)
def test_newest_run_has_the_releases_the_dev_pins_hold_back() -> None:
    # The default environment holds cbor2 back (pycose needs < 6); this run is where the
    # release users get is tested. Neither cross-check library is installed here.
    assert Version(metadata.version("cbor2")).major >= 6
    for absent in ("pycose", "eth-account"):
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version(absent)
