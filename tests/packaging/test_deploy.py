"""The deployment files agree with the command lines they start (so the two cannot drift)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from enclave_net import _cli as enclave_net_cli
from enclave_net.address import VsockAddress, parse_address
from oracle_example import _cli as oracle_cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "oracle_example" / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
PARSERS = {"enclave-net": enclave_net_cli.build_parser, "nitro-oracle": oracle_cli.build_parser}


def _exec_start(unit: Path) -> list[str]:
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def _parse(argv: list[str]) -> argparse.Namespace:
    program = Path(argv[0]).name
    assert program in PARSERS, f"{argv[0]} is not one of our console scripts"
    try:
        return PARSERS[program]().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of saying the arguments are wrong
        raise AssertionError(f"{shlex.join(argv)} does not parse") from exc


def test_there_are_units_to_check() -> None:
    assert {u.name for u in UNITS} >= {
        "nitro-oracle-egress.service",
        "nitro-oracle-gateway.service",
        "nitro-oracle-kms-credentials.service",
        "nitro-oracle-sealed-key-store.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exec_start_parses_with_the_real_cli(unit: Path) -> None:
    args = _parse(_exec_start(unit))
    assert args.command in ("egress", "gateway", "kms")
    assert not any(x.startswith("Documentation=file:") for x in unit.read_text().splitlines())


def test_egress_unit_config_is_the_shipped_egress_toml_and_avoids_the_kms_port() -> None:
    args = _parse(_exec_start(DEPLOY / "nitro-oracle-egress.service"))
    assert Path(args.config).name == "egress.toml"
    config = tomllib.loads((DEPLOY / "egress.toml").read_text())
    connect = parse_address(config["connect"]["listen"])
    assert isinstance(connect, VsockAddress)
    # docs/kms.md: the KMS vsock-proxy listens on 8000 (kmstool's and `enclave-net kms`'s default).
    kms_route = re.search(r"=vsock:3:(\d+)", (ROOT / "docs/kms.md").read_text())
    assert kms_route is not None
    assert connect.port != int(kms_route.group(1))
    route_ports = {parse_address(r["listen"]).port for r in config["route"]}  # type: ignore[union-attr]
    assert connect.port not in route_ports


def test_the_gateway_forwards_to_the_port_and_cid_the_enclave_listens_on() -> None:
    gateway = _parse(_exec_start(DEPLOY / "nitro-oracle-gateway.service"))
    cmd = json.loads(
        re.search(r"^CMD (\[.*?\])$", _joined(DEPLOY / "Dockerfile.enclave"), re.M | re.S)[1]  # type: ignore[index]
    )
    assert cmd[:3] == ["python", "-m", "oracle_example._cli"]
    enclave = _parse(["nitro-oracle", *cmd[3:]])
    assert enclave.command == "enclave"
    listen = parse_address(enclave.listen)
    target = parse_address(gateway.enclave)
    assert isinstance(listen, VsockAddress) and isinstance(target, VsockAddress)
    assert target.port == listen.port
    cid = re.search(r'cid="\$\{2:-(\d+)\}"', (DEPLOY / "run-enclave.sh").read_text())
    assert cid is not None and target.cid == int(cid[1])


def _joined(path: Path) -> str:
    """A Dockerfile with its line continuations joined."""
    return re.sub(r"\\\n\s*", "", path.read_text())
