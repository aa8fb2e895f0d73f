"""The output contract in tests: the published JSON Schemas (docs/schemas/) for every
command's --json output, the exit codes in --help, and a stdout closed under the command."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def check(name: str, value: Any) -> Any:
    """Raise `jsonschema.ValidationError` unless `value` has the shape of `<name>.schema.json`;
    return it, for chaining."""
    _validator(name).validate(value)
    return value


def check_error(value: Any, code: str | None = None) -> dict[str, Any]:
    """`value` is the error shape (and has `code`, if given); return its `error` object."""
    check("error", value)
    error: dict[str, Any] = value["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_help_lists_exit_codes(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`main([*argv, "--help"])` ends with 0 (returned, or argparse's SystemExit) and its help
    lists the exit codes, 2 for usage."""
    try:
        status: object = main([*argv, "--help"])
    except SystemExit as exc:
        status = exc.code
    assert status == 0, argv
    out = capsys.readouterr().out
    assert "exit status:" in out and "2    usage error" in out, argv


def assert_closed_stdout_is_quiet(module: str, argv: list[str]) -> None:
    """`module.main(argv)` with stdout a pipe whose reader has gone, as under `cmd | head` once
    head exits: the write fails with EPIPE (Python ignores SIGPIPE); the command must end with
    status 141 and say nothing (no traceback)."""
    script = (
        "import os, sys\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
        f"from {module} import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (141, b"")
