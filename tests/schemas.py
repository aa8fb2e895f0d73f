"""The published JSON Schemas (docs/schemas/), for tests of every command's --json output."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

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
