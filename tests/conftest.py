"""Suite-wide guard: in CI the real AWS documents must be there, never silently skipped."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from vectors.corpus import REAL_DIR


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") and not (REAL_DIR / "MANIFEST.json").is_file():
        raise pytest.UsageError(
            f"CI run without the real vectors at {REAL_DIR}: the tests that use them "
            "would skip, so this run could not show that real AWS documents verify"
        )


# Hypothesis: in CI every run tries the same examples (derandomize: a seed from each test's
# source), so a red CI run is a real regression and not a new random draw; locally examples
# vary and the example database remembers failures. Failures found once are kept as explicit
# `@example`s (or a plain regression test) beside the property they broke.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
