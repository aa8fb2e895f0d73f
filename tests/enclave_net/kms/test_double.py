"""The double's own contract: its policy grammar fails closed, Deny wins, and its parent-side
commands start as processes and serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from enclave_net.address import parse_address
from enclave_net.egress import EgressConfig
from enclave_net.kms.client import KmsClient
from enclave_net.kms.credentials import ParentCredentials, StaticCredentials
from enclave_net.kms.double import DoubleConfig, DoubleConfigError
from enclave_net.kms.errors import AccessDeniedException
from enclave_net.kms.recipient import Recipient
from nsm.emulator import Emulator
from tests.enclave_net.kms._support import (
    ACCOUNT,
    CREDENTIALS,
    ENCLAVE_ROLE,
    HOST,
    KEY_ID,
    REGION,
    CertAuthority,
    KmsWorld,
    booted,
    principal,
    run,
    short_tempdir,
)


def config_with(statement: dict[str, Any]) -> dict[str, Any]:
    return {
        "region": REGION,
        "account": ACCOUNT,
        "keys": [{"key_id": KEY_ID, "material": "00" * 32, "policy": {"Statement": [statement]}}],
    }


ALLOW = {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"Condition": {"StringLike": {"kms:RecipientAttestation:PCR0": "ab*"}}}, "operator"),
        ({"Condition": {"StringEquals": {"kms:RecipientAttestation:PCR32": "ab"}}}, "key"),
        ({"Condition": {"StringEquals": {"aws:SourceIp": "10.0.0.1"}}}, "key"),
        ({"Action": "kms:ReEncrypt*"}, "action"),
        ({"Resource": "arn:aws:kms:us-east-1:111122223333:key/other"}, "Resource"),
        ({"NotAction": "kms:Encrypt"}, "unsupported statement fields"),
        ({"Effect": "Maybe"}, "Effect"),
    ],
)
def test_policy_grammar_the_double_lacks_is_refused(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(DoubleConfigError, match=complaint):
        DoubleConfig.from_dict(config_with({**ALLOW, **change}))


def test_key_material_must_be_32_bytes() -> None:
    raw = config_with(ALLOW)
    raw["keys"][0]["material"] = "00" * 16
    with pytest.raises(DoubleConfigError, match="32 bytes"):
        DoubleConfig.from_dict(raw)


def test_an_explicit_deny_wins(world: KmsWorld, emulator: Emulator) -> None:
    recipient = Recipient(booted(emulator))

    async def go() -> bytes:
        async with world.client(recipient) as kms:
            return (await kms.generate_data_key(KEY_ID)).plaintext

    assert len(run(go())) == 32  # allowed by the key's Allow statement...
    deny = (
        DoubleConfig.from_dict(
            config_with(
                {
                    "Effect": "Deny",
                    "Principal": {"AWS": ENCLAVE_ROLE},
                    "Action": "kms:*",
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {
                            "kms:RecipientAttestation:ImageSha384": emulator.pcr(0).hex().upper()
                        }
                    },
                }
            )
        )
        .keys[KEY_ID]
        .policy
    )
    base = world.double.config
    key = base.keys[KEY_ID]
    world.double.service.config = replace(
        base, keys={**base.keys, KEY_ID: replace(key, policy=key.policy + deny)}
    )
    try:
        with pytest.raises(AccessDeniedException):  # ...until a Deny matches too
            run(go())
    finally:
        world.double.service.config = base


class Child:
    """A parent-side command as its own process; waits for its JSON "ready" line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enclave_net.kms", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"{args[0]} exited: {self.process.communicate()[1]}")
        self.ready = json.loads(line)

    def stop(self) -> str:
        self.process.terminate()
        _, stderr = self.process.communicate(timeout=30)
        return stderr


@pytest.fixture
def directory() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_serve_credentials_runs_botocores_chain(directory: Path) -> None:
    listen = f"unix:{directory}/creds.sock"
    child = Child(
        "serve-credentials",
        "--listen",
        listen,
        env={
            "AWS_ACCESS_KEY_ID": CREDENTIALS.access_key_id,
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS.secret_access_key,
            "AWS_SESSION_TOKEN": str(CREDENTIALS.session_token),
            # No shared files, no instance metadata: the environment provider must answer.
            "AWS_CONFIG_FILE": str(directory / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(directory / "none"),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    try:
        got = run(ParentCredentials(parse_address(listen)).get())
    finally:
        stderr = child.stop()
    assert (got.access_key_id, got.secret_access_key, got.session_token) == (
        CREDENTIALS.access_key_id,
        CREDENTIALS.secret_access_key,
        CREDENTIALS.session_token,
    )
    for secret in (CREDENTIALS.secret_access_key, str(CREDENTIALS.session_token)):
        assert secret not in stderr


def test_the_double_command_serves_its_config(
    directory: Path, world: KmsWorld, emulator: Emulator
) -> None:
    ca = CertAuthority.create(directory)
    cert, key = ca.issue(HOST)
    config = directory / "kms.json"
    config.write_text(
        json.dumps(
            {
                "region": REGION,
                "account": ACCOUNT,
                "principals": [principal(ENCLAVE_ROLE, CREDENTIALS)],
                "keys": [],
            }
        )
    )
    root = directory / "nsm-root.pem"
    root.write_bytes(emulator.root_pem)
    child = Child(
        "double", "--config", str(config), "--cert", str(cert), "--key", str(key),
        "--root", str(root),
    )  # fmt: skip
    try:
        assert child.ready["host"] == HOST
        egress_routes = f"{HOST}:443=tcp:127.0.0.1:{child.ready['port']}"

        async def go() -> bytes:
            async with KmsClient.through_egress(
                EgressConfig.from_strings(routes=[egress_routes], ca_bundle=ca.ca_pem),
                region=REGION,
                credentials=StaticCredentials(CREDENTIALS),
                recipient=Recipient(booted(emulator)),
            ) as kms:
                return await kms.generate_random(16)

        assert len(run(go())) == 16
    finally:
        child.stop()


def test_nsm_imports_no_networking() -> None:
    # The layer rule: nsm never imports networking (nor anything that pulls it in).
    code = (
        "import sys, nsm, nsm.emulator, nsm.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('enclave_net', 'oracle_example', 'httpcore', 'httpcore2', 'h11', 'botocore', "
        "'asn1crypto'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
