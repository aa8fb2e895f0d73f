"""The one machine-output contract: how results and errors look as JSON.

Every command with `--json` and the HTTP verifier service print one of two shapes, published
as JSON Schemas in `docs/schemas/`:

- a result, whose shape depends on what the command does; a verification result is
  `VerifiedDocument.to_dict()` (plus `"policy"`, the configured policy's name, in the service);
- an error: `{"error": {"code": str, "message": str, "hint": str | null}}`, where `code` is a
  stable identifier (the library's `AttestationError.code`, or the command's own), `message`
  says what went wrong and `hint` what to do about it, in the terms of the surface that printed
  it (a flag for a command, a config key for the service). A few context keys may sit beside
  `"error"` (`"verified": false`, the policy, the URL, the feed), never inside it.

Values: bytes are lower-case hex; times are RFC 3339 in UTC with milliseconds and `Z`
(a document's own timestamp has millisecond precision; nothing finer is ever claimed).

This module depends on the standard library and `cryptography` only, so that every package of
ours can use it without breaking the layer rules (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = [
    "EXIT_PIPE",
    "EXIT_USAGE",
    "CliParser",
    "HelpFormatter",
    "UsageError",
    "certificate_json",
    "dump",
    "epilog_everywhere",
    "error_json",
    "hex_or_none",
    "iso_time",
    "report_usage_error",
    "stdout_closed",
    "wants_json",
]


def iso_time(when: _dt.datetime) -> str:
    """`when` in UTC as RFC 3339 with milliseconds and `Z`, e.g. `2026-01-02T03:04:05.678Z`."""
    return when.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def certificate_json(cert: x509.Certificate) -> dict[str, str]:
    """A certificate as the result shape lists it (subject and issuer in RFC 4514 form)."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": iso_time(cert.not_valid_before_utc),
        "not_after": iso_time(cert.not_valid_after_utc),
        "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    }


def error_json(code: str, message: str, hint: str | None = None, **context: Any) -> dict[str, Any]:
    """The error shape; `context` keys (e.g. `verified=False`) go beside `"error"`."""
    return {**context, "error": {"code": code, "message": message, "hint": hint}}


def dump(value: Mapping[str, Any], *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent)


#: Exit status when stdout's reader went away (`cmd | head`): 128 + SIGPIPE, as a shell reports
#: a C tool killed by the signal.
EXIT_PIPE = 141


def stdout_closed() -> int:
    """Handle a `BrokenPipeError` on stdout: no traceback, no second error at exit.

    Under `cmd | head` the reader closes the pipe early; that is its choice, not an error worth
    a traceback. stdout is pointed at /dev/null so that the interpreter's own flush at exit
    does not raise again (the Python documentation's recipe for SIGPIPE).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # no real fd (captured in tests)
        pass
    return EXIT_PIPE


#: Exit status of every usage error (argparse's own, and the commands' checks of arguments).
EXIT_USAGE = 2


class UsageError(Exception):
    """A command line that cannot run: bad or missing arguments, unreadable input files."""

    def __init__(self, message: str, parser: argparse.ArgumentParser | None = None) -> None:
        super().__init__(message)
        self.parser = parser


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph text as argparse does; text with its own line breaks (a table of
    exit codes, a laid-out description) is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text.strip("\n"):
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def epilog_everywhere(parser: argparse.ArgumentParser, epilog: str) -> None:
    """Give `parser` and every sub-command below it `epilog` (e.g. the exit codes), so that
    each `--help` lists it."""
    parser.epilog = epilog
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                epilog_everywhere(child, epilog)


class CliParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors raise `UsageError` instead of exiting, so that a
    command's `main` reports them in its output format (JSON under `--json`) with status 2.
    Sub-parsers inherit the class."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message, self)


def report_usage_error(exc: UsageError, *, prog: str, as_json: bool) -> int:
    """Print a usage error (as the error shape under `--json`, on stdout) and return 2."""
    message = str(exc.args[0]) if exc.args else "usage error"
    if as_json:
        print(dump(error_json("usage", message, f"see {prog} --help")))
    else:
        if exc.parser is not None:
            exc.parser.print_usage(sys.stderr)
        print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def wants_json(argv: Sequence[str] | None) -> bool:
    """Whether the command line asked for JSON (read before parsing, for parse errors)."""
    return "--json" in (sys.argv[1:] if argv is None else argv)
