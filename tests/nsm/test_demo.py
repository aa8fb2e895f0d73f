"""`make demo-nsm` runs `python examples/nsm_demo.py`: it must print a verified human summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsm_demo.py"


def test_demo_prints_a_verified_summary() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for heading in ("module id", "PCRs", "certificate chain", "valid "):
        assert heading in out
    assert "CN=emulator.nitro-enclaves" in out
    assert out.count("valid 20") == 5  # root, three intermediates, leaf, each with validity
    assert "verified      yes" in out
