"""Prometheus text exposition (format 0.0.4) for the verifier service, without a dependency.

The service has a handful of series, all updated from one event loop thread; a counter dict and
a fixed-bucket histogram are all it needs.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Counter", "Histogram", "Registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds. A warm verification costs about one P-384 signature check (~1 ms on one core) and a
# cold one about five; the buckets resolve that range finely and still show queueing under load.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(slots=True)
class Counter:
    """A monotonically increasing count per label set."""

    name: str
    help: str
    values: dict[Labels, int] = field(default_factory=dict)

    def inc(self, labels: Labels = (), amount: int = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {value}"


@dataclass(slots=True)
class Histogram:
    """Cumulative buckets, sum and count, without labels."""

    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_number(self.total)}"
        yield f"{self.name}_count {self.count}"


@dataclass(slots=True)
class _Sampled:
    """A value read at scrape time (the verifier's cache counters live in the verifier)."""

    name: str
    help: str
    kind: str
    read: Callable[[], float]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield f"{self.name} {_number(self.read())}"


@dataclass(slots=True)
class Registry:
    """The series one service process exposes."""

    metrics: list[Counter | Histogram | _Sampled] = field(default_factory=list)

    def counter(self, name: str, help: str) -> Counter:
        metric = Counter(name, help)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help: str) -> Histogram:
        metric = Histogram(name, help)
        self.metrics.append(metric)
        return metric

    def sampled(self, name: str, help: str, *, kind: str, read: Callable[[], float]) -> None:
        self.metrics.append(_Sampled(name, help, kind, read))

    def render(self) -> str:
        return "\n".join(line for metric in self.metrics for line in metric.render()) + "\n"
