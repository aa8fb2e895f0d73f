"""The command-line contract every console script of nsm-attestation shares.

Errors under `--json` have one shape, `{"error": {"code": str, "message": str, "hint": str |
null}}` (a few context keys such as `"verified": false` may sit beside `"error"`, never inside
it), published as a JSON Schema in `docs/schemas/error.schema.json`; usage errors exit 2; a
closed stdout (`cmd | head`) exits 141 without a traceback; every `--help` lists the exit codes.

It is its own package, depending on the standard library only, so that `nsm`, `attestation`,
`enclave_net` and `oracle_example` can all use it without any of them depending on another
for it: `nsm` uses `attestation` only for the emulator's documents (docs/architecture.md), and
the `nsm` command starts without loading `cryptography`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "EXIT_PIPE",
    "EXIT_USAGE",
    "CliParser",
    "HelpFormatter",
    "UsageError",
    "dump",
    "epilog_everywhere",
    "error_json",
    "report_usage_error",
    "stdout_closed",
    "wants_json",
]


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
