"""The kmstool-enclave-cli equivalents as a user runs them: a child process, the NSM emulator
on a Unix socket, the KMS double over real HTTPS."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_net.address import parse_address
from enclave_net.kms.credentials import CredentialsServer
from nsm._server import EmulatorServer
from nsm.emulator import Emulator
from tests.enclave_net.kms._support import (
    CREDENTIALS,
    HOST,
    KEY_ID,
    REGION,
    KmsWorld,
    booted,
    short_tempdir,
)
from tests.output_contract import check, check_error


@pytest.fixture(scope="module")
def nsm_socket(emulator: Emulator) -> Iterator[Path]:
    booted(emulator)  # the enclave's boot measured its config into PCR16
    directory = short_tempdir()
    server = EmulatorServer(directory / "nsm.sock", emulator)
    server.serve_in_thread()
    yield directory / "nsm.sock"
    server.shutdown()
    server.server_close()
    shutil.rmtree(directory, ignore_errors=True)


def kms_cli(
    world: KmsWorld, nsm_socket: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "NSM_EMULATOR": f"unix:{nsm_socket}",
        **(env or {}),
    }
    return subprocess.run(
        [
            sys.executable, "-m", "enclave_net.kms", *args,
            "--region", REGION,
            "--route", f"{HOST}:443=tcp:127.0.0.1:{world.double.port}",
            "--ca-bundle", str(world.ca_pem),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )  # fmt: skip


ENV_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS.access_key_id,
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS.secret_access_key,
    "AWS_SESSION_TOKEN": str(CREDENTIALS.session_token),
}


def test_genrandom_json(world: KmsWorld, nsm_socket: Path) -> None:
    result = kms_cli(
        world, nsm_socket, "genrandom", "--length", "48", "--json", env=ENV_CREDENTIALS
    )
    assert result.returncode == 0, result.stderr
    assert len(base64.b64decode(check("kms", json.loads(result.stdout))["Plaintext"])) == 48


def test_genkey_then_decrypt_through_the_credentials_endpoint(
    world: KmsWorld, nsm_socket: Path
) -> None:
    directory = short_tempdir()
    address = f"unix:{directory}/creds.sock"
    with CredentialsServer(parse_address(address), lambda: CREDENTIALS):
        made = kms_cli(
            world, nsm_socket, "genkey", "--key-id", KEY_ID, "--json", "--credentials", address
        )
        text = kms_cli(
            world, nsm_socket, "genkey", "--key-id", KEY_ID, "--key-spec", "AES-128",
            "--credentials", address,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        key = check("kms", json.loads(made.stdout))
        opened = kms_cli(
            world, nsm_socket, "decrypt", "--ciphertext", key["CiphertextBlob"],
            "--credentials", address,
        )  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)
    assert opened.returncode == 0, opened.stderr
    # kmstool's text form: "PLAINTEXT: <base64>".
    assert opened.stdout.strip() == f"PLAINTEXT: {key['Plaintext']}"
    assert len(base64.b64decode(key["Plaintext"])) == 32
    # kmstool's genkey text form: a CIPHERTEXT line, then a PLAINTEXT line.
    labels = [line.split(": ", 1) for line in text.stdout.splitlines()]
    assert [label for label, _ in labels] == ["CIPHERTEXT", "PLAINTEXT"]
    assert len(base64.b64decode(labels[1][1])) == 16


def test_a_kms_error_exits_1_with_its_aws_name(world: KmsWorld, nsm_socket: Path) -> None:
    result = kms_cli(
        world, nsm_socket, "genkey", "--key-id", "alias/missing", "--json", env=ENV_CREDENTIALS
    )
    assert result.returncode == 1
    check_error(json.loads(result.stdout), "kms.NotFoundException")


def test_no_credentials_endpoint_exits_3(world: KmsWorld, nsm_socket: Path) -> None:
    directory = short_tempdir()
    result = kms_cli(
        world, nsm_socket, "genrandom", "--length", "8",
        "--credentials", f"unix:{directory}/absent.sock",
    )  # fmt: skip
    directory.rmdir()
    assert result.returncode == 3
    assert "credentials endpoint" in result.stderr
    assert CREDENTIALS.secret_access_key not in result.stderr + result.stdout
