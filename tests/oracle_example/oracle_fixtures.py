"""Shared helpers for the oracle core tests: the recorded responses and their instant."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from oracle_example.sources import Quote, Source

# The recorded responses live with the replay server that the demo serves them from.
DATA = Path(__file__).resolve().parents[2] / "oracle_example" / "replay" / "data"
#: Every fixture is stamped around this instant (see data/README.md).
RECORDED_AT = datetime(2025, 11, 26, 15, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Recorded:
    file: str
    source: str
    feed: str
    host: str
    path: str
    status: int
    headers: dict[str, str]

    @property
    def body(self) -> bytes:
        return (DATA / self.file).read_bytes()

    def parse(self, source: Source, *, now: datetime = RECORDED_AT) -> Quote:
        return source.parse(
            self.feed, status=self.status, headers=self.headers, body=self.body, now=now
        )


def recorded() -> list[Recorded]:
    manifest = json.loads((DATA / "responses.json").read_text())
    return [Recorded(**row) for row in manifest["responses"]]


def recorded_ok(feed: str) -> list[Recorded]:
    """The successful ticker answers for `feed`, one per source."""
    return [r for r in recorded() if r.feed == feed and r.status == 200 and "ticker" in r.file]
