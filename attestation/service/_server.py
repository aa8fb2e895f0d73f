"""How `nitro-attest serve` runs the app: uvicorn's h11 protocol with the service's bounds.

uvicorn alone bounds none of what a hostile client controls (docs/benchmarks.md, "Hostile
clients", measured with `bench/hostile.py`): with its default httptools parser a 200 MiB header
line or millions of headers are buffered whole, a connection that sends nothing stays open
forever, and past the descriptor limit no new connection is accepted, so a fresh request waits
for as long as the slow ones are held. Here:

- **Head size and count**: the h11 parser, whose incomplete-event limit (`MAX_HEAD_BYTES`)
  bounds what a head can make the server buffer: a head still incomplete past it gets 400 and
  the connection closes (uvicorn answers h11's 431 hint with 400). A complete head that
  arrived in one read (at most 256 KiB) is then held to the same size and to `MAX_HEADERS` by
  the app (431), so the limits do not depend on how the client's bytes were split.
- **Deadlines**: a request head must be complete `head_timeout` seconds after the connection
  opened or the previous answer was sent (408, then close); a body must be complete, and the
  answer sent, `body_timeout` seconds after the head (close: the app sees a disconnect). Every
  byte the client sends does not restart the clock, so trickling does not extend it.
- **Connections**: at most `max_connections` open, lowered to fit the process's descriptor
  limit with room for the listening backlog (`connection_budget`). A new connection over the
  cap closes the connection that has waited longest on its client (head or body not yet
  complete), or itself if every connection is being answered: slow clients cannot lock fresh
  ones out, and the process never runs out of descriptors.
- **Pipelining**: h11 parses one request at a time; uvicorn stops reading while a request is
  being answered and while the client does not read its answers (transport flow control), so a
  connection holds at most a socket read of unparsed input and one answer. The body deadline
  closes a connection whose answers stay unread.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from attestation.service._config import ServiceConfig
from attestation.service._metrics import Registry
from attestation.service._wire import MAX_HEAD_BYTES

__all__ = ["Limits", "bounded_protocol", "connection_budget", "serve"]

_log = logging.getLogger("attestation.service")

# Pending connections the kernel holds for us; asyncio may accept this many in one go, so
# they count against the descriptor budget.
BACKLOG = 128
# Descriptors kept for everything but connections: the listening socket, the event loop,
# logs, the trust roots read at start, and what the libraries open.
_FD_RESERVE = 64
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

_HEAD = "head"  # waiting for a request head
_BODY = "body"  # head received, waiting for the body
_ANSWER = "answer"  # request received, the app answers (and the answer is being sent)


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection bounds of one server (see the module docstring)."""

    max_connections: int
    head_timeout: float
    body_timeout: float
    on_close: Callable[[str], None] = lambda reason: None
    """Called with the reason each time the server closes a connection before answering it."""


def connection_budget(requested: int, *, backlog: int = BACKLOG) -> int:
    """`requested`, lowered so that connections never exhaust `RLIMIT_NOFILE`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - backlog - _FD_RESERVE))


class _Connections:
    """Open connections, and those waiting on their client in the order they started waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[_Bounded] = set()
        self.waiting: dict[_Bounded, None] = {}  # insertion order = oldest wait first

    def admit(self, connection: _Bounded) -> bool:
        """Count `connection`; if over the limit, close the longest waiting one (or this one)."""
        self.open.add(connection)
        if len(self.open) <= self.limit:
            return True
        victim = next(iter(self.waiting), connection)
        victim.close_now("evicted" if victim is not connection else "refused")
        return victim is not connection

    def wait(self, connection: _Bounded, waiting: bool) -> None:
        self.waiting.pop(connection, None)
        if waiting:
            self.waiting[connection] = None

    def remove(self, connection: _Bounded) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)


class _Bounded(H11Protocol):
    """uvicorn's h11 protocol with phase deadlines and a shared connection cap."""

    limits: ClassVar[Limits]
    registry: ClassVar[_Connections]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if self.registry.admit(self):
            self._enter(_HEAD)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel()
        self.registry.remove(self)
        super().connection_lost(exc)

    def close_now(self, reason: str) -> None:
        """Drop the connection without an answer (over the cap, or past a deadline)."""
        self.limits.on_close(reason)
        self._closed = True
        self._cancel()
        self.registry.remove(self)
        self.transport.abort()

    def _track(self) -> None:
        if self._closed or self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = _HEAD if state is h11.IDLE else _BODY if state is h11.SEND_BODY else _ANSWER
        if phase != self._phase:
            self._enter(phase)

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self._cancel()
        timeout = self.limits.head_timeout if phase == _HEAD else self.limits.body_timeout
        self._timer = self.loop.call_later(timeout, self._expired)
        self.registry.wait(self, phase != _ANSWER)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._closed:
            return
        if (
            self._phase == _HEAD
            and self.conn.our_state is h11.IDLE
            and not self.transport.get_write_buffer_size()
        ):
            # Nothing of ours is in flight: say why before closing (RFC 9110 §15.5.9).
            self.limits.on_close("head_timeout")
            self.transport.write(_TIMED_OUT)
            self._closed = True
            self._cancel()
            self.registry.remove(self)
            self.transport.close()
            return
        self.close_now(f"{self._phase}_timeout")


def bounded_protocol(limits: Limits) -> type[H11Protocol]:
    """A protocol class for one server: its own limits and its own connection registry."""
    return type(
        "BoundedH11Protocol",
        (_Bounded,),
        {"limits": limits, "registry": _Connections(limits.max_connections)},
    )


def serve(app: Any, config: ServiceConfig) -> None:
    """Run `app` on `config.host:config.port` with the bounds above, until interrupted.

    If `app` is `create_app`'s, its metrics gain `nitro_attest_connections_closed_total{reason}`
    (`evicted`, `refused`, `head_timeout`, `body_timeout`, `answer_timeout`) and
    `nitro_attest_connections_open`.
    """
    registry = getattr(app, "registry", None)
    on_close: Callable[[str], None] = lambda reason: None  # noqa: E731
    if isinstance(registry, Registry):
        closed = registry.counter(
            "nitro_attest_connections_closed_total",
            "Connections the server closed before answering them, by reason.",
        )
        on_close = lambda reason: closed.inc((("reason", reason),))  # noqa: E731
    limits = Limits(
        max_connections=connection_budget(config.max_connections),
        head_timeout=config.head_timeout,
        body_timeout=config.body_timeout,
        on_close=on_close,
    )
    protocol = bounded_protocol(limits)
    if isinstance(registry, Registry):
        connections: _Connections = protocol.registry  # type: ignore[attr-defined]
        registry.sampled(
            "nitro_attest_connections_open",
            "Connections open now.",
            kind="gauge",
            read=lambda: len(connections.open),
        )
    if limits.max_connections < config.max_connections:
        _log.warning(
            "max_connections lowered from %d to %d to fit the descriptor limit (ulimit -n)",
            config.max_connections,
            limits.max_connections,
        )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        http=protocol,
        ws="none",
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        backlog=BACKLOG,
        # The service's own access log is structured and body-free; uvicorn's would duplicate it.
        access_log=False,
        log_config=None,
        server_header=False,
    )
