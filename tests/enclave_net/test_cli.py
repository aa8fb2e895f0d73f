from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from enclave_net._cli import main
from tests.enclave_net._support import REPO, cli
from tests.output_contract import assert_help_lists_exit_codes, check, check_error


def test_egress_help_explains_both_modes() -> None:
    done = subprocess.run(cli("egress", "--help"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0
    text = done.stdout
    for words in (
        "route mode",
        "CONNECT mode",
        "169.254.169.254",
        "--allow-private",
        "--resolve",
        "--config",
    ):
        assert words in text


def test_egress_config_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["egress", "--connect", "unix:/tmp/x.sock"]) == 2
    assert "would refuse everything" in capsys.readouterr().err
    assert main(["egress", "--route", "unix:/tmp/x.sock=not a host:1"]) == 2
    assert main(["egress", "--route", "unix:/nonexistent-dir/x.sock=a.test:443"]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_fetch_requires_a_mode() -> None:
    done = subprocess.run(
        cli("fetch", "https://api.binance.com/"), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "one of the arguments --route --connect is required" in done.stderr


def test_fetch_bad_route_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fetch", "https://api.binance.com/", "--route", "api.binance.com:443=vsock:x"]
    assert main(argv) == 1
    assert "enclave-net fetch: " in capsys.readouterr().err
    assert main([*argv, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    check_error(result, "net.address")
    assert result["url"] == "https://api.binance.com/"


def test_usage_errors_are_json_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "https://api.binance.com/", "--json"]) == 2  # no --route/--connect
    check_error(json.loads(capsys.readouterr().out), "usage")
    assert main(["doctor", "--timeout", "soon", "--json"]) == 2
    check_error(json.loads(capsys.readouterr().out), "usage")


@pytest.mark.parametrize(
    "argv",
    [[], ["fetch"], ["doctor"], ["egress"], ["gateway"], ["kms"], ["kms", "decrypt"]],
)
def test_help_lists_exit_codes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_help_lists_exit_codes(main, argv, capsys)


def test_parent_doctor_without_configuration_says_what_it_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = tmp_path / "vsock-proxy.yaml"
    assert main(["doctor", "--parent", "--vsock-proxy-config", str(absent)]) == 0
    out = capsys.readouterr().out
    assert "vsock-proxy processes" in out
    assert f"{absent} does not exist: not checked" in out
    assert "no --config given" in out and "remedy: pass --config FILE" in out
    assert main(["doctor", "--parent", "--vsock-proxy-config", str(absent), "--json"]) == 0
    report = check("doctor", json.loads(capsys.readouterr().out))
    assert {f["check"] for f in report["findings"]} == {
        "vsock-proxy processes",
        "vsock-proxy allowlist",
        "egress config",
    }


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "egress" in capsys.readouterr().err


def test_egress_will_not_steal_a_live_socket(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], sockdir: Path
) -> None:
    path = sockdir / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        assert main(["egress", "--route", f"unix:{path}=a.test:443"]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_bad_limits_exit_2(capsys: pytest.CaptureFixture[str], sockdir: Path) -> None:
    assert (
        main(["egress", "--route", f"unix:{sockdir}/x.sock=a.test:443", "--idle-timeout", "0"]) == 2
    )
    assert "idle_timeout must be positive" in capsys.readouterr().err
