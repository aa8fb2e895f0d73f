"""AWS KMS with Nitro Enclaves attestation, in pure Python (what kmstool-enclave-cli does in C).

```python
from nsm import Nsm
from enclave_net.kms import KmsClient, ParentCredentials, Recipient

with Nsm.open() as nsm:
    async with KmsClient.through_egress(
        egress_config,                      # routes kms.REGION.amazonaws.com:443
        region="us-east-1",
        credentials=ParentCredentials(parse_address("vsock:3:8002")),
        recipient=Recipient(nsm),           # ephemeral RSA key + attestation documents
    ) as kms:
        secret = await kms.decrypt(ciphertext_blob)
```

Modules: `client` (the operations), `recipient`, `cms` (CiphertextForRecipient), `credentials`
(the parent endpoint and the enclave's refreshing client), `seal` (keys that survive restarts),
`double` (a KMS double for tests and demos), `errors`.
"""

from __future__ import annotations

from enclave_net.kms.client import DataKey, DataKeyPair, EncryptResult, KmsClient
from enclave_net.kms.credentials import (
    Credentials,
    CredentialsServer,
    ParentCredentials,
    StaticCredentials,
)
from enclave_net.kms.errors import (
    AccessDeniedException,
    CmsError,
    CredentialsError,
    InvalidCiphertextException,
    KmsError,
    KmsServiceError,
    KmsTransportError,
    NotFoundException,
    RecipientError,
    ValidationException,
)
from enclave_net.kms.recipient import Recipient
from enclave_net.kms.seal import (
    FileStore,
    ParentStore,
    load_or_create,
    seal_key,
    sealing_key_policy,
    unseal_key,
)

__all__ = [
    "AccessDeniedException",
    "CmsError",
    "Credentials",
    "CredentialsError",
    "CredentialsServer",
    "DataKey",
    "DataKeyPair",
    "EncryptResult",
    "FileStore",
    "InvalidCiphertextException",
    "KmsClient",
    "KmsError",
    "KmsServiceError",
    "KmsTransportError",
    "NotFoundException",
    "ParentCredentials",
    "ParentStore",
    "Recipient",
    "RecipientError",
    "StaticCredentials",
    "ValidationException",
    "load_or_create",
    "seal_key",
    "sealing_key_policy",
    "unseal_key",
]
