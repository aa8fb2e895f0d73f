"""The wheel as a user installs it: its files, and `nsm shim build` from the installed copy."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nsm.shim

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the backend (hatchling, in the dev extra) is already here, so the
    # build needs no network.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("nsm_attestation-*.whl")
    return built


def test_wheel_ships_the_shim_source_and_the_license_but_not_the_repo_only_scripts(
    wheel: Path,
) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "nsm/shim/nsm_preload.c" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "oracle_example/deploy/build-eif.sh" not in names
    assert "oracle_example/deploy/nitro-oracle-egress.service" in names
    assert not any(n.startswith(("tests/", "vectors/", "bench/")) for n in names)
    shipped = zipfile.ZipFile(wheel).read("nsm/shim/nsm_preload.c")
    assert shipped == (ROOT / "nsm/shim/nsm_preload.c").read_bytes()


def test_installed_wheel_builds_the_shim(wheel: Path, tmp_path: Path) -> None:
    if nsm.shim.compiler() is None:
        pytest.skip("no C compiler (cc or $CC); CI installs gcc")
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "lib" / "not-yet"
    # The installed copy first on the path, not this checkout (the editable install).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import nsm, nsm.shim; "
        "assert nsm.shim.SOURCE.is_relative_to(sys.argv[1]), nsm.shim.SOURCE; "
        "from nsm._cli import main; sys.exit(main(['shim', 'build', '--out', sys.argv[2]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(site), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    library = out / nsm.shim.LIBRARY_NAME
    assert result.stdout.strip() == str(library)
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_shim_build_without_a_compiler_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nsm", "shim", "build", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(tmp_path), "CC": "no-such-cc"},
    )
    assert result.returncode == 1
    assert "no C compiler found (set CC or install gcc)" in result.stderr
    assert not (tmp_path / nsm.shim.LIBRARY_NAME).exists()
