"""The parent side of the sealed key on one machine, for `make demo` and the tests.

`SealedKeyParent` runs what a real parent instance runs for `--sealed-key` (docs/kms.md,
"Parent setup"), with the KMS double in place of AWS KMS:

- the KMS double on loopback HTTPS (a throwaway CA whose certificate names
  `kms.REGION.amazonaws.com`), with one key whose policy lets the parent's role `Encrypt` and
  allows `Decrypt` only with `kms:RecipientAttestation:ImageSha384` = the enclave's PCR0 and
  `kms:RecipientAttestation:PCR16` = its config's PCR16 (`sealing_key_policy`, the policy
  docs/kms.md recommends);
- the credentials endpoint (`CredentialsServer`), serving that role's credentials, made up
  fresh per run;
- the write-once sealed-blob store (`BlobServer` over a `FileStore`).

The enclave reaches the double through a route for `kms.REGION.amazonaws.com:443`: the demo
puts a parent egress proxy route in between (the enclave may sit in a network namespace); an
in-process test can route straight to `tcp_route`.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Self

from attestation import load_pem_roots
from enclave_net.address import Address, HostPort, UnixAddress
from enclave_net.kms import CredentialsServer
from enclave_net.kms.client import kms_host
from enclave_net.kms.credentials import Credentials
from enclave_net.kms.double import DoubleConfig, KmsDouble
from enclave_net.kms.seal import BlobServer, FileStore, sealing_key_policy
from enclave_net.proxy_config import Pin, ProxyConfig, ProxyRoute
from oracle_example.replay import DemoCertificates
from oracle_example.sealed import SealedKeyOptions

__all__ = ["KEY_ALIAS", "SealedKeyParent"]

REGION = "us-east-1"
ACCOUNT = "111122223333"
PARENT_ROLE = f"arn:aws:iam::{ACCOUNT}:role/enclave-parent"
KEY_ALIAS = "alias/nitro-oracle-signer"


class SealedKeyParent:
    """`with SealedKeyParent(dir, root_pem=..., pcr0=..., pcr16=...) as parent:`."""

    def __init__(
        self, directory: Path, *, root_pem: bytes, pcr0: bytes, pcr16: bytes, region: str = REGION
    ) -> None:
        self.directory = directory
        self.region = region
        self.host = kms_host(region)
        self.policy = sealing_key_policy(PARENT_ROLE, pcr0=pcr0.hex(), pcr16=pcr16.hex())
        self.blob_file = directory / "signer.sealed"
        self.credentials_address = UnixAddress(str(directory / "kms-creds.sock"))
        self.store_address = UnixAddress(str(directory / "kms-blobs.sock"))
        self._root_pem = root_pem
        self.certs: DemoCertificates | None = None
        self.double: KmsDouble | None = None
        self._services: list[CredentialsServer | BlobServer] = []

    def start(self) -> Self:
        (self.directory / "kms").mkdir(exist_ok=True)
        self.certs = DemoCertificates.create(self.directory / "kms", hosts=(self.host,))
        # Made up per run: the double and the credentials endpoint are the only holders.
        role = Credentials("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
        config = DoubleConfig.from_dict(
            {
                "region": self.region,
                "account": ACCOUNT,
                "principals": [
                    {
                        "arn": PARENT_ROLE,
                        "access_key_id": role.access_key_id,
                        "secret_access_key": role.secret_access_key,
                        "session_token": None,
                    }
                ],
                "keys": [
                    {
                        "key_id": str(uuid.uuid4()),
                        "aliases": [KEY_ALIAS],
                        "material": secrets.token_hex(32),
                        "policy": self.policy,
                    }
                ],
            }
        )
        self.double = KmsDouble(
            config,
            cert_file=self.certs.cert_pem,
            key_file=self.certs.key_pem,
            roots=load_pem_roots(self._root_pem),
        ).start()
        self._services = [
            CredentialsServer(self.credentials_address, lambda: role).start(),
            BlobServer(self.store_address, FileStore(self.blob_file)).start(),
        ]
        return self

    @property
    def tcp_route(self) -> str:
        """The double's own address, for an enclave on this host's network."""
        if self.double is None:
            raise RuntimeError("the KMS parent is not running")
        return f"tcp:127.0.0.1:{self.double.port}"

    def options(self, kms_route: Address) -> SealedKeyOptions:
        """What `nitro-oracle enclave --sealed-key ...` is told, as options."""
        if self.certs is None:
            raise RuntimeError("the KMS parent is not running")
        return SealedKeyOptions(
            key_id=KEY_ALIAS,
            region=self.region,
            kms_route=kms_route,
            credentials=self.credentials_address,
            store=self.store_address,
            ca_bundle=self.certs.ca_pem,
        )

    def enclave_args(self, kms_route: Address) -> list[str]:
        """The same, as `nitro-oracle enclave` flags."""
        options = self.options(kms_route)
        return [
            "--sealed-key",
            options.key_id,
            "--kms-region",
            options.region,
            "--kms-route",
            str(options.kms_route),
            "--kms-credentials",
            str(options.credentials),
            "--sealed-key-store",
            str(options.store),
            "--kms-ca-bundle",
            str(options.ca_bundle),
        ]

    def proxy_config(self, listen: Address) -> ProxyConfig:
        """The parent's route for KMS (vsock-proxy's job in production): `listen` carries
        `kms.REGION.amazonaws.com:443`, pinned to the double on loopback."""
        if self.double is None:
            raise RuntimeError("the KMS parent is not running")
        return ProxyConfig(
            routes=(ProxyRoute(listen, HostPort(self.host, 443)),),
            pins={self.host: Pin("127.0.0.1", self.double.port)},
            allow_private=True,
        )

    def served(self) -> list[str]:
        """The double's answers so far, as `Operation` or `Operation: ErrorName`."""
        if self.double is None:
            return []
        return [s.action + (f": {s.error}" if s.error else "") for s in self.double.served]

    def close(self) -> None:
        for service in reversed(self._services):
            service.close()
        self._services = []
        if self.double is not None:
            self.double.close()
            self.double = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
