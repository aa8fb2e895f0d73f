"""JSON-lines logging, set up in one place for every enclave_net process and the apps on it.

Each record is one JSON object per line: `ts`, `level`, `event`, then the event's `fields`
(passed as `extra={"fields": {...}}`). `json_logging` routes the named loggers (by default
`enclave_net`, plus whatever the app adds, e.g. `oracle_example`) to one handler and undoes it
on exit, so tests and the demo can capture a process's logs and put them back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["JsonLogFormatter", "json_logging", "log_event"]


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        return json.dumps(
            {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "event": record.getMessage(),
                **fields,
            },
            default=str,
        )


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """`logger.log` with the fields the formatter spreads into the JSON object."""
    logger.log(level, event, extra={"fields": fields})


@contextlib.contextmanager
def json_logging(
    level: str | int = "info",
    *,
    names: tuple[str, ...] = ("enclave_net",),
    stream: TextIO | None = None,
    path: Path | None = None,
) -> Iterator[None]:
    """Send the `names` loggers, as JSON lines, to `path` (a file) or `stream` (stderr)."""
    handler: logging.Handler = (
        logging.FileHandler(path)
        if path is not None
        else logging.StreamHandler(stream or sys.stderr)
    )
    handler.setFormatter(JsonLogFormatter())
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(numeric)
    try:
        yield
    finally:
        for lg, (handlers, propagate, old_level) in zip(loggers, saved, strict=True):
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.setLevel(old_level)
        handler.close()
