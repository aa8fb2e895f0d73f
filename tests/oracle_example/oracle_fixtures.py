"""The recorded exchange responses, as the tests use them.

They live with the replay server that the demo serves them from (`oracle_example/replay/data`,
see its README: hand-written in each exchange's documented format).
"""

from __future__ import annotations

from datetime import datetime

from oracle_example.aggregate import Quote
from oracle_example.replay.server import Recorded, recorded_responses
from oracle_example.sources import Source

#: Every fixture is stamped around this instant (the manifest's `recordedAt`).
RECORDED_AT: datetime = recorded_responses()[0]


def parse(entry: Recorded, source: Source, *, now: datetime = RECORDED_AT) -> Quote:
    return source.parse(
        entry.feed, status=entry.status, headers=entry.headers, body=entry.body, now=now
    )


def recorded() -> list[Recorded]:
    return recorded_responses()[1]


def recorded_ok(feed: str) -> list[Recorded]:
    """The successful price answers (tickers, Kraken's trades) for `feed`, one per source."""
    return [r for r in recorded() if r.feed == feed and r.is_price]
