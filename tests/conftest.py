"""Suite-wide guard: in CI the real AWS documents must be there, never silently skipped."""

from __future__ import annotations

import os

import pytest

from vectors.corpus import REAL_DIR


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") and not (REAL_DIR / "MANIFEST.json").is_file():
        raise pytest.UsageError(
            f"CI run without the real vectors at {REAL_DIR}: the tests that use them "
            "would skip, so this run could not show that real AWS documents verify"
        )
