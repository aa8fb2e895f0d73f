"""JSON-lines logging, set up in one place for every enclave_net process and the apps on it.

Each record is one JSON object per line: `ts`, `level`, `event`, then the event's `fields`
(passed as `extra={"fields": {...}}`), and for `log.exception(...)` the exception: its type,
message and where it was raised. `json_logging` routes the named loggers (by default
`enclave_net`, plus whatever the app adds, e.g. `oracle_example`) to one handler and undoes it
on exit, so tests and the demo can capture a process's logs and put them back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["JsonLogFormatter", "json_logging", "log_event"]


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **fields,
        }
        if record.exc_info is not None and record.exc_info[1] is not None:
            entry["exception"] = _exception(record.exc_info[1])
        return json.dumps(entry, default=str)


def _exception(exc: BaseException) -> dict[str, str]:
    """Type, message and the innermost frame: enough to find the bug from one log line."""
    kind = type(exc)
    found = {
        "type": kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
    }
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        found["where"] = f"{Path(last.filename).name}:{last.lineno} in {last.name}"
    return found


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
