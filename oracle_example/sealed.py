"""The oracle's sealed signing key (`nitro-oracle enclave --sealed-key KEY_ID`): one signer
address across enclave restarts, readable only by the image and config the key policy names.

Boot, after PCR16 holds the config hash and is locked:

- **first boot** (the parent's store is empty): the key is born in the enclave from NSM
  randomness, as without `--sealed-key`; KMS `Encrypt` seals it and the ciphertext goes to the
  parent's write-once blob store;
- **later boots**: the blob is fetched and opened with KMS `Decrypt` + `Recipient` (a fresh RSA
  key and attestation document). KMS answers only if the key policy's
  `kms:RecipientAttestation:ImageSha384` / `PCR16` conditions match this enclave.

A refusal stops the boot with `SealedKeyRefused`: the enclave never makes a new key while a
sealed one exists (that would silently change the signer address the chain trusts). The work is
`enclave_net.kms.seal.load_or_create`; this module only wires the oracle's options to it and turns
its errors into boot errors that say what to do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclave_net.address import Address
from enclave_net.egress import EgressConfig
from enclave_net.errors import EnclaveNetError
from enclave_net.kms import (
    AccessDeniedException,
    KmsClient,
    ParentCredentials,
    ParentStore,
    Recipient,
    load_or_create,
)
from enclave_net.kms.client import kms_host
from nsm.client import Nsm
from oracle_example.errors import EnclaveBootError

__all__ = [
    "DEFAULT_CREDENTIALS",
    "DEFAULT_KMS_ROUTE",
    "DEFAULT_STORE",
    "SEALED_KEY_NAME",
    "SealedKeyError",
    "SealedKeyOptions",
    "SealedKeyRefused",
    "load_signing_secret",
]

#: The parent's vsock ports (docs/kms.md, "Parent setup"): vsock-proxy for KMS on 8000 (kmstool's
#: default), the credentials endpoint on 8002, the sealed-blob store on 8003.
DEFAULT_KMS_ROUTE = "vsock:3:8000"
DEFAULT_CREDENTIALS = "vsock:3:8002"
DEFAULT_STORE = "vsock:3:8003"
#: The encryption context's `name`: a blob sealed for anything else is not the signing key.
SEALED_KEY_NAME = "oracle-signing-key"


class SealedKeyError(EnclaveBootError):
    """The sealed signing key could not be loaded or sealed (KMS, credentials or blob store)."""

    code = "enclave.sealed_key"


class SealedKeyRefused(SealedKeyError):
    """KMS refused to unseal the stored key for this enclave's measurements."""

    code = "enclave.sealed_key_refused"


@dataclass(frozen=True, kw_only=True)
class SealedKeyOptions:
    """Where the sealed key lives. Part of the enclave's command line, so PCR0 measures it."""

    key_id: str
    """The KMS key (id, ARN or alias) that seals the signing key."""
    region: str
    kms_route: Address
    """The parent address wired to `kms.REGION.amazonaws.com:443` (vsock-proxy)."""
    credentials: Address
    store: Address
    ca_bundle: Path | None = None
    """CAs for KMS's TLS certificate; default certifi's bundle in the image."""
    key_size: int = 2048
    """The Recipient's RSA key size."""

    def __post_init__(self) -> None:
        kms_host(self.region)  # a ValueError now, not at the first boot's KMS call

    def egress(self) -> EgressConfig:
        # KMS gets its own egress config: one route, its own CA bundle, apart from the
        # exchanges' (whose CA bundle may be a replay's in development).
        host = kms_host(self.region)
        return EgressConfig.from_strings(
            routes=[f"{host}:443={self.kms_route}"], ca_bundle=self.ca_bundle
        )


def load_signing_secret(
    nsm: Nsm,
    options: SealedKeyOptions,
    *,
    create: Callable[[], bytes],
    pcr0: bytes,
    pcr16: bytes,
) -> tuple[bytes, bool]:
    """(secret, created): the unsealed signing key, or `create()`'s, sealed and stored.

    `pcr0` and `pcr16` are this enclave's (PCR16 already locked), named in the refusal."""

    async def go() -> tuple[bytes, bool]:
        async with KmsClient.through_egress(
            options.egress(),
            region=options.region,
            credentials=ParentCredentials(options.credentials),
            recipient=Recipient(nsm, key_size=options.key_size),
        ) as kms:
            return await load_or_create(
                kms,
                ParentStore(options.store),
                key_id=options.key_id,
                name=SEALED_KEY_NAME,
                create=create,
            )

    try:
        return asyncio.run(go())
    except AccessDeniedException as exc:
        raise SealedKeyRefused(
            f"KMS refused to unseal the signing key stored at {options.store} ({exc}): the key "
            f"policy of {options.key_id} does not allow this enclave (PCR0 {pcr0.hex()}, PCR16 "
            f"{pcr16.hex()}), so the image or the config changed since the key was sealed. "
            "Refusing to start with a new key, which would change the signer address. To keep "
            "the key, put these values in the policy's kms:RecipientAttestation:ImageSha384 and "
            "kms:RecipientAttestation:PCR16 conditions; to replace it, delete the sealed blob on "
            "the parent and register the new signer address."
        ) from exc
    except EnclaveNetError as exc:
        raise SealedKeyError(
            f"sealed signing key ({options.key_id}, store {options.store}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
