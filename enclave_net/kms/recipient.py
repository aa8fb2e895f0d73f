"""The enclave's side of a KMS `Recipient`: an ephemeral RSA key and attestations that carry it.

KMS encrypts its answer to the RSA public key inside the attestation document (the document's
`public_key` field holds the key's SubjectPublicKeyInfo DER), so only the enclave whose NSM
signed that document, and which holds the private key, can read it. The key lives in memory
only; a restarted enclave makes a new one, and the key policy (PCRs) decides whether the new
enclave may read the same secrets.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_net.kms.cms import open_enveloped
from enclave_net.kms.errors import RecipientError

__all__ = ["KEY_ENCRYPTION_ALGORITHM", "KEY_SIZES", "AttestationSource", "Recipient"]

#: The only value KMS accepts in `Recipient.KeyEncryptionAlgorithm`.
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
#: 2048 is the default (what kmstool uses); 4096 for a longer-lived margin. The SPKI DER of a
#: 4096-bit key (550 bytes) stays under the NSM's 1024-byte public_key limit.
KEY_SIZES = frozenset({2048, 3072, 4096})


class AttestationSource(Protocol):
    """What `nsm.Nsm` offers (the device or the emulator); nothing else is needed here."""

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes: ...


class Recipient:
    """An ephemeral RSA key pair plus the NSM that attests it. Never logs or shows the key."""

    def __init__(self, nsm: AttestationSource, *, key_size: int = 2048) -> None:
        if key_size not in KEY_SIZES:
            raise RecipientError(f"RSA key size {key_size}: use one of {sorted(KEY_SIZES)}")
        self._nsm = nsm
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        self.public_key_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def __repr__(self) -> str:
        return f"Recipient(rsa{self._key.key_size}, private key not shown)"

    def attestation(self, *, nonce: bytes | None = None, user_data: bytes | None = None) -> bytes:
        """A fresh attestation document whose `public_key` is this recipient's key."""
        try:
            return self._nsm.attestation(
                public_key=self.public_key_der, nonce=nonce, user_data=user_data
            )
        except Exception as exc:
            # NsmError and OSError alike: without a document there is no Recipient at all.
            raise RecipientError(f"no attestation document from the NSM: {exc}") from exc

    async def field(self) -> dict[str, str]:
        """The request's `Recipient` member, with a document made just now."""
        document = await asyncio.to_thread(self.attestation)
        return {
            "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
            "AttestationDocument": base64.b64encode(document).decode("ascii"),
        }

    def open(self, ciphertext_for_recipient: bytes) -> bytes:
        """Decrypt a `CiphertextForRecipient` (CMS EnvelopedData) made for this key."""
        return open_enveloped(ciphertext_for_recipient, self._key)
