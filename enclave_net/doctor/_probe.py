"""What every doctor check returns (`Finding`), and what an app hands the doctor (`Probe`).

The doctor knows the network; the app knows its upstreams. For each upstream host the app gives
a `Probe`: the cheap path to ask, how to read the server's clock from the answer (which also
checks the answer is the documented JSON, not a captive portal's 200), and any app-level checks
to run once the host answers (the oracle's: is each exchange's own price fresh). A host without
a probe gets `PathProbe("/")`: any JSON answer will do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from enclave_net.address import HostPort
from enclave_net.egress import EgressClient, Response

__all__ = [
    "Clock",
    "Finding",
    "PathProbe",
    "Probe",
    "ProbeMismatch",
    "ServerTime",
    "Status",
    "fail",
    "json_body",
    "ok",
    "snippet",
    "warn",
]

Status = Literal["ok", "warn", "fail"]
#: The doctor's notion of now (timezone-aware); tests pass a fixed or shifted clock.
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: Status
    message: str
    remedy: str = ""


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def warn(check: str, message: str, remedy: str) -> Finding:
    return Finding(check, "warn", message, remedy)


def fail(check: str, message: str, remedy: str) -> Finding:
    return Finding(check, "fail", message, remedy)


@dataclass(frozen=True, slots=True)
class ServerTime:
    """A server's clock as read from one answer, and how finely it is stated."""

    when: datetime
    label: str  # e.g. "api.binance.com serverTime"
    resolution: float  # seconds


class ProbeMismatch(ValueError):
    """The answer is not the JSON shape documented for the probed endpoint."""


class Probe(Protocol):
    """One upstream host, as the app that uses it knows it."""

    @property
    def host(self) -> str: ...

    @property
    def path(self) -> str:
        """A cheap, unauthenticated GET (a time endpoint, ideally) on this host."""
        ...

    def server_time(self, response: Response) -> ServerTime | None:
        """The server's clock in a 2xx answer, or None if it states none.

        Raises `ProbeMismatch` when the body is not what this endpoint documents."""
        ...

    async def follow_up(
        self, client: EgressClient, upstream: HostPort, clock: Clock
    ) -> Sequence[Finding]:
        """App-level checks once the host answered (may be empty)."""
        ...


def snippet(body: bytes) -> str:
    """The first bytes of a body, on one line, for a message."""
    text = body[:80].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", text) + ("..." if len(body) > 80 else "")


def json_body(response: Response) -> object:
    """The decoded JSON, or `ProbeMismatch` naming what came instead (an HTML page...)."""
    try:
        return json.loads(response.body)
    except (UnicodeDecodeError, ValueError):
        content_type = (response.header("content-type") or "?").split(";")[0]
        head = response.body[:512].lower()
        kind = "an HTML page" if b"<html" in head or "html" in content_type else "not JSON"
        raise ProbeMismatch(
            f"the body is {kind} ({content_type}): {snippet(response.body)!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class PathProbe:
    """A probe that only knows a path: any JSON answer passes, no clock is read."""

    host: str
    path: str = "/"

    def server_time(self, response: Response) -> ServerTime | None:
        json_body(response)
        return None

    async def follow_up(
        self, client: EgressClient, upstream: HostPort, clock: Clock
    ) -> Sequence[Finding]:
        return ()
