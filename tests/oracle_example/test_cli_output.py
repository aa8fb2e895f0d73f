"""`nitro-oracle`'s exit codes in --help and its doctor's machine output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oracle_example import _cli
from tests.output_contract import assert_help_lists_exit_codes, check


@pytest.mark.parametrize("argv", [[], ["get"], ["doctor"], ["enclave"], ["demo"]])
def test_help_lists_exit_codes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_help_lists_exit_codes(_cli.main, argv, capsys)


def test_parent_doctor_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "vsock-proxy.yaml"
    argv = ["doctor", "--parent", "--vsock-proxy-config", str(absent)]
    assert _cli.main(argv) == 0
    assert "no --config given" in capsys.readouterr().out
    assert _cli.main([*argv, "--json"]) == 0
    report = check("doctor", json.loads(capsys.readouterr().out))
    assert report["ok"] is True
    assert [f["status"] for f in report["findings"]] == ["ok", "warn", "warn"]


def test_usage_errors_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["doctor", "--concurrency", "many", "--json"]) == 2
    check("error", json.loads(capsys.readouterr().out))
