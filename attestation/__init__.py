"""AWS Nitro Enclaves attestation documents: parse, verify against the pinned AWS root.

```python
import attestation

doc = attestation.verify(data, pcrs={0: pcr0_hex}, nonce=nonce)  # AWS root, 5 min max age
print(doc.to_json())

# The explicit form: your own roots, policy objects, clock.
from attestation import Policy, Verifier

doc = Verifier.aws().verify(data, policy=Policy(pcrs={0: pcr0_hex}, nonce=nonce), at=now)
```

Public modules: `errors` (codes), `policy`, `document`, `verifier`, `roots`.
"""

from __future__ import annotations

from attestation import errors, policy
from attestation._chain import CacheInfo
from attestation.document import AttestationDocument, VerifiedDocument
from attestation.errors import (
    AttestationError,
    ChainError,
    MalformedDocument,
    NotNitroTpmDocument,
    PolicyError,
    SignatureError,
    UnsupportedDocumentKind,
)
from attestation.policy import (
    AllOf,
    AllowDebug,
    AnyOf,
    MaxAge,
    ModuleId,
    NitroTpmPcrSet,
    NitroTpmPolicy,
    Nonce,
    PcrSet,
    Policy,
    PublicKey,
    UnsafeNoPcrCheck,
    UserData,
    VerificationPolicy,
)
from attestation.roots import AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root, load_pem_roots
from attestation.verifier import MAX_CLOCK_SKEW, Verifier, verify

__all__ = [
    "AWS_NITRO_ROOT_G1_SHA256",
    "MAX_CLOCK_SKEW",
    "AllOf",
    "AllowDebug",
    "AnyOf",
    "AttestationDocument",
    "AttestationError",
    "CacheInfo",
    "ChainError",
    "MalformedDocument",
    "MaxAge",
    "ModuleId",
    "NitroTpmPcrSet",
    "NitroTpmPolicy",
    "Nonce",
    "NotNitroTpmDocument",
    "PcrSet",
    "Policy",
    "PolicyError",
    "PublicKey",
    "SignatureError",
    "UnsafeNoPcrCheck",
    "UnsupportedDocumentKind",
    "UserData",
    "VerificationPolicy",
    "VerifiedDocument",
    "Verifier",
    "aws_nitro_root",
    "errors",
    "load_pem_roots",
    "policy",
    "verify",
]

#: The distribution's version: pyproject.toml reads it from attestation/__init__.py, and a test
#: keeps the four packages equal.
__version__ = "0.1.0"
