"""The nitro-attest CLI through main([...]) and once as a real process."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestation import AttestationDocument
from attestation._cli import main
from tests.attestation.conftest import RealVector, requires_real

pytestmark = requires_real


def _pcr_args(vector: RealVector) -> list[str]:
    pcrs = AttestationDocument.parse(vector.data).pcrs
    return [arg for i in (0, 1, 2) for arg in ("--pcr", f"{i}={pcrs[i].hex()}")]


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_inspect_table_says_not_verified(
    tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", _write(tmp_path, "d.cbor", prod.data)]) == 0
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out
    assert prod.entry["module_id"] in out
    assert "aws.nitro-enclaves" in out


@pytest.mark.parametrize("encoding", ["raw", "hex", "base64", "base64url"])
def test_inspect_json_detects_encoding(
    tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str], encoding: str
) -> None:
    data = {
        "raw": prod.data,
        "hex": prod.data.hex().encode() + b"\n",
        "base64": base64.b64encode(prod.data) + b"\n",
        "base64url": base64.urlsafe_b64encode(prod.data).rstrip(b"="),
    }[encoding]
    assert main(["inspect", "--json", _write(tmp_path, "d", data)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] is False
    assert info["module_id"] == prod.entry["module_id"]
    assert info["pcrs"]["0"] == prod.entry["pcr0_hex"]
    assert len(info["certificates"]) == 5


def test_verify_ok(tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "d", prod.data)
    at = prod.timestamp.isoformat()
    assert main(["verify", path, *_pcr_args(prod), "--at", at, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is True
    assert result["module_id"] == prod.entry["module_id"]


def test_verify_refusals(
    tmp_path: Path, prod: RealVector, debug: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "d", prod.data)
    at = prod.timestamp.isoformat()
    wrong = ["--pcr", "0=" + "00" * 48]
    assert main(["verify", path, *wrong, "--at", at, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "policy.pcr-mismatch"
    _, end = prod.window
    assert (
        main(
            [
                "verify",
                path,
                *_pcr_args(prod),
                "--at",
                end.replace(hour=(end.hour + 1) % 24).isoformat()
                if end.hour < 23
                else "2100-01-01T00:00:00Z",
                "--max-age",
                "none",
            ]
        )
        == 1
    )
    assert "chain.expired" in capsys.readouterr().err
    dpath = _write(tmp_path, "debug", debug.data)
    dat = debug.timestamp.isoformat()
    assert main(["verify", dpath, *_pcr_args(debug), "--at", dat]) == 1
    assert "policy.debug" in capsys.readouterr().err
    assert main(["verify", dpath, *_pcr_args(debug), "--at", dat, "--allow-debug"]) == 0
    assert "debug" in capsys.readouterr().out
    assert main(["verify", path, "--unsafe-no-pcr-check", "--at", at, "--nonce", "00"]) == 1
    assert "policy.nonce-mismatch" in capsys.readouterr().err


def test_verify_with_other_root_refuses_aws_document(
    tmp_path: Path, prod: RealVector, factory: object, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _write(tmp_path, "root.pem", factory.root_pem)  # type: ignore[attr-defined]
    path = _write(tmp_path, "d", prod.data)
    code = main(
        ["verify", path, *_pcr_args(prod), "--at", prod.timestamp.isoformat(), "--root", root]
    )
    assert code == 1
    assert "chain.untrusted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "FILE"],  # no PCR
        ["verify", "FILE", "--pcr", "0=zz"],
        ["verify", "FILE", "--pcr", "0=" + "00" * 48, "--at", "yesterday"],
        ["verify", "FILE", "--pcr", "0=" + "00" * 48, "--at", "2024-01-01T00:00:00"],
        ["verify", "FILE", "--pcr", "0=" + "00" * 48, "--max-age", "5 minutes"],
        ["verify", "FILE", "--pcr", "0=" + "00" * 48, "--unsafe-no-pcr-check"],
        ["verify", "/nonexistent/doc", "--pcr", "0=" + "00" * 48],
        ["inspect", "/nonexistent/doc"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors(tmp_path: Path, prod: RealVector, argv: list[str]) -> None:
    path = _write(tmp_path, "d", prod.data)
    assert main([path if a == "FILE" else a for a in argv]) == 2


def test_malformed_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "junk", b"\x84\x00")
    assert main(["inspect", "--json", path]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"].startswith(("cbor.", "envelope."))


def test_subprocess_stdin(prod: RealVector) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestation._cli",
            "verify",
            "-",
            *_pcr_args(prod),
            "--at",
            prod.timestamp.isoformat(),
            "--json",
        ],
        input=base64.b64encode(prod.data),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verified"] is True
