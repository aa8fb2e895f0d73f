"""`nsm`'s machine output (docs/schemas/nsm.schema.json, error), exit codes and I/O errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nsm._cli import main
from tests.output_contract import (
    assert_closed_stdout_is_quiet,
    assert_help_lists_exit_codes,
    check,
    check_error,
)


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    status = main(argv)
    return status, json.loads(capsys.readouterr().out)


def test_results_match_the_schema(
    emulator_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = ["--emulator", f"unix:{emulator_socket}"]
    for argv in (["describe"], ["pcr", "get", "16"], ["pcr", "extend", "16", "--text", "x"]):
        status, result = _json([*emu, *argv, "--json"], capsys)
        assert status == 0, argv
        check("nsm", result)


@pytest.mark.parametrize(
    ("argv", "status", "code"),
    [
        (["pcr", "extend", "40", "--text", "x"], 2, "nsm.module.invalid-index"),
        (["pcr", "get", "40"], 2, "nsm.module.invalid-index"),
        (["pcr", "extend", "3", "--text", "x"], 1, "nsm.module.read-only-index"),
        (["pcr", "get", "sixteen"], 2, "usage"),
        (["pcr", "extend", "16"], 2, "usage"),  # --hex or --text is required
    ],
)
def test_errors_are_json_and_usage_exits_2(
    emulator_socket: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    code: str,
) -> None:
    result_status, result = _json(["--emulator", f"unix:{emulator_socket}", *argv, "--json"],
                                  capsys)  # fmt: skip
    assert result_status == status
    check_error(result, code)


def test_usage_errors_exit_2_without_json(
    emulator_socket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emu = ["--emulator", f"unix:{emulator_socket}"]
    assert main([*emu, "random", "-5"]) == 2
    assert main([*emu, "pcr", "extend", "40", "--text", "x"]) == 2
    # Output paths that cannot be written: one line naming the path, no traceback.
    assert main([*emu, "attest", "--out", str(tmp_path / "missing" / "doc.cbor")]) == 2
    serve = ["emulator", "serve", "--seed", "1"]
    root = str(tmp_path / "root.pem")
    assert main([*serve, "--socket", str(tmp_path / "no" / "s"), "--root-out", root]) == 2
    assert main([*serve, "--socket", "s", "--root-out", str(tmp_path / "no" / "r.pem")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"--socket {tmp_path / 'no' / 's'}: No such file or directory" in err
    assert f"--root-out {tmp_path / 'no' / 'r.pem'}: No such file or directory" in err


def test_missing_device_hints_at_the_emulator_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, result = _json(["--device", str(tmp_path / "nsm"), "describe", "--json"], capsys)
    assert status == 1
    error = check_error(result, "nsm.no-device")
    assert "--emulator" in error["hint"] and "Nsm.emulator" not in error["hint"]


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert_help_lists_exit_codes(main, [], capsys)


def test_closed_stdout_is_not_a_traceback(emulator_socket: Path) -> None:
    # As under `nsm random 4096 --raw | head -c1`.
    argv = ["--emulator", f"unix:{emulator_socket}", "random", "4096", "--raw"]
    assert_closed_stdout_is_quiet("nsm._cli", argv)


def test_model_reprs_show_hex() -> None:
    from nsm.models import Attestation, AttestationResponse, PcrExtended, PcrState

    assert (
        repr(PcrState(locked=True, data=b"\xab" * 48))
        == f"PcrState(locked=True, data='{'ab' * 48}')"
    )
    assert repr(PcrExtended(b"\x01\x02")) == "PcrExtended(data='0102')"
    assert (
        repr(Attestation(nonce=b"n")) == "Attestation(user_data=None, nonce='6e', public_key=None)"
    )
    assert repr(AttestationResponse(b"\x84" * 4000)) == "AttestationResponse(document=<4000 bytes>)"
