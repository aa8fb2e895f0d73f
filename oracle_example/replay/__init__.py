"""A local stand-in for the four exchanges: recorded-shape responses served over HTTPS.

Used by `nitro-oracle demo` when no live exchange answers, and by the end-to-end tests. The
bodies in `data/` are **hand-written in each exchange's documented response shape** (this repo
was built on a machine with no route to the exchanges; see `data/README.md`); their timestamps
are moved to "now" when served, so staleness checks see fresh data. Nothing here is a live price.
"""

from __future__ import annotations

from oracle_example.replay.server import (
    DATA_DIR,
    DemoCertificates,
    ReplayExchange,
    Rule,
    Served,
    recorded_responses,
)

__all__ = ["DATA_DIR", "DemoCertificates", "ReplayExchange", "Rule", "Served", "recorded_responses"]
