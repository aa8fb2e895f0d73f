"""The world around the enclave's KMS code: the emulated NSM, a KMS double on loopback HTTPS
with a test CA, and the egress routing `kms.us-east-1.amazonaws.com:443` to it."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from attestation import load_pem_roots
from enclave_net.egress import EgressConfig
from enclave_net.kms.client import KmsClient
from enclave_net.kms.credentials import Credentials, CredentialSource, StaticCredentials
from enclave_net.kms.double import DoubleConfig, KmsDouble
from enclave_net.kms.recipient import Recipient
from enclave_net.kms.seal import sealing_key_policy
from nsm import Nsm
from nsm.emulator import Emulator

# The one import of another package's test helpers (a test CA, short Unix socket paths).
from tests.enclave_net._support import CertAuthority, short_tempdir

__all__ = ["CertAuthority", "short_tempdir"]

REGION = "us-east-1"
ACCOUNT = "111122223333"
HOST = f"kms.{REGION}.amazonaws.com"
ENCLAVE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/enclave-parent"
ADMIN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/admin"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
OPEN_KEY_ID = "0000abcd-12ab-34cd-56ef-1234567890ab"
CREDENTIALS = Credentials("AKIAENCLAVEPARENT01", "parent-secret-access-key", "parent-session")
ADMIN = Credentials("AKIAADMINISTRATOR01", "admin-secret-access-key", None)

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class EmulatorTransport:
    """The emulator's exact request/answer bytes, in process (what the socket server carries)."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def exchange(self, request: bytes) -> bytes:
        return self._emulator.handle(request)

    def close(self) -> None:
        pass


CONFIG_PCR16 = b"oracle config v1"


def booted(emulator: Emulator, config: bytes = CONFIG_PCR16) -> Nsm:
    """An NSM after the app's boot: the config measured into PCR16, then PCR16 locked."""
    module = Nsm(EmulatorTransport(emulator))
    if not module.describe_pcr(16).locked:  # booted already: the same enclave, again
        module.extend_pcr(16, hashlib.sha384(config).digest())
        module.lock_pcr(16)
    return module


def expected_pcr16(config: bytes = CONFIG_PCR16) -> str:
    return hashlib.sha384(bytes(48) + hashlib.sha384(config).digest()).hexdigest()


def key_policy(pcr0: str, pcr16: str) -> dict[str, Any]:
    """The policy docs/kms.md recommends: the admin encrypts, the measured enclave decrypts."""
    return sealing_key_policy(
        ENCLAVE_ROLE,
        pcr0=pcr0,
        pcr16=pcr16,
        encrypters=[ADMIN_ROLE],
        actions=["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyPair"],
    )


def principal(arn: str, credentials: Credentials) -> dict[str, Any]:
    """A `principals` entry of the double's config."""
    return {
        "arn": arn,
        "access_key_id": credentials.access_key_id,
        "secret_access_key": credentials.secret_access_key,
        "session_token": credentials.session_token,
    }


def double_config(pcr0: str, pcr16: str, **extra: Any) -> DoubleConfig:
    return DoubleConfig.from_dict(
        {
            "region": REGION,
            "account": ACCOUNT,
            "principals": [principal(ENCLAVE_ROLE, CREDENTIALS), principal(ADMIN_ROLE, ADMIN)],
            "keys": [
                {
                    "key_id": KEY_ID,
                    "aliases": ["alias/oracle"],
                    "material": "11" * 32,
                    "policy": key_policy(pcr0, pcr16),
                },
                {
                    # No attestation condition: any authentic enclave of this principal.
                    "key_id": OPEN_KEY_ID,
                    "material": "22" * 32,
                    "policy": {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                "Action": "kms:*",
                                "Resource": "*",
                            }
                        ]
                    },
                },
            ],
            **extra,
        }
    )


@dataclass
class KmsWorld:
    """The KMS double for one emulated enclave, and what the enclave needs to reach it."""

    emulator: Emulator
    double: KmsDouble
    ca_pem: Path
    cert: tuple[Path, Path]

    def egress(self) -> EgressConfig:
        return EgressConfig.from_strings(
            routes=[f"{HOST}:443=tcp:127.0.0.1:{self.double.port}"], ca_bundle=self.ca_pem
        )

    def client(
        self,
        recipient: Recipient | None = None,
        *,
        credentials: CredentialSource | None = None,
        http: Any = None,
    ) -> KmsClient:
        options: dict[str, Any] = {
            "region": REGION,
            "credentials": credentials or StaticCredentials(CREDENTIALS),
            "recipient": recipient,
        }
        if http is None:
            return KmsClient.through_egress(self.egress(), **options)
        return KmsClient(http, **options)


def make_world(
    directory: Path, emulator: Emulator, *, extra_roots: Iterable[bytes] = (), **config: Any
) -> KmsWorld:
    ca = CertAuthority.create(directory)
    cert = ca.issue(HOST)
    pcr0 = emulator.pcr(0).hex()
    roots = load_pem_roots(emulator.root_pem)
    for pem in extra_roots:
        roots += load_pem_roots(pem)
    double = KmsDouble(
        double_config(pcr0, expected_pcr16(), **config),
        cert_file=cert[0],
        key_file=cert[1],
        roots=roots,
    ).start()
    return KmsWorld(emulator, double, ca.ca_pem, cert)
