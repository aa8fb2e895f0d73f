"""Errors raised while parsing and verifying attestation documents.

Every error derives from `AttestationError` and carries a stable `code` string. Codes are a
public contract: the `nitro-attest` CLI prints them, the HTTP service returns them, and the
conformance corpus records them. A code is never reused for a different meaning; new codes may
be added.

Parse errors (`MalformedDocument`):

| code | meaning |
|---|---|
| `document.size` | input empty or larger than `MAX_DOCUMENT_SIZE` |
| `cbor.truncated` | input ends inside a CBOR item |
| `cbor.trailing-bytes` | bytes after the COSE_Sign1 item |
| `cbor.duplicate-key` | a map repeats a key |
| `cbor.unsupported` | float, undefined, other simple value, tag, or non int/text map key |
| `cbor.too-deep` | nesting beyond the decoder limit |
| `cbor.invalid` | other malformed CBOR (reserved bits, bad UTF-8, stray break, bad chunk) |
| `envelope.not-array` | the document is not a CBOR array |
| `envelope.wrong-length` | the COSE_Sign1 array does not have 4 elements |
| `envelope.tag` | a tag other than 18 (COSE_Sign1) wraps the envelope |
| `envelope.field-type` | protected/payload/signature not a byte string, unprotected not a map |
| `envelope.protected-header` | protected header is not exactly `{1: -35}` (alg ES384) |
| `envelope.unprotected-header` | unprotected header is not the empty map |
| `envelope.signature-size` | signature is not 96 bytes (P-384 r‖s) |
| `envelope.payload-size` | payload outside 1..16384 bytes |
| `payload.not-map` | the payload is not a CBOR map |
| `payload.missing-field` | a mandatory field is absent (or null) |
| `payload.unknown-field` | a key that is not one of the documented fields |
| `payload.field-type` | a field has the wrong CBOR type |
| `payload.field-size` | a field's length is outside AWS's bounds |
| `payload.field-value` | a field's value is not allowed (digest, timestamp, PCR index) |

Other kinds:

| code | class | meaning |
|---|---|---|
| `document.nitrotpm` | `UnsupportedDocumentKind` | a NitroTPM (EC2 instance) document |
| `chain.certificate-malformed` | `ChainError` | a certificate is not parseable DER |
| `chain.expired` | `CertificateExpired` | a certificate's notAfter is before the time |
| `chain.not-yet-valid` | `CertificateNotYetValid` | a certificate's notBefore is after it |
| `chain.untrusted` | `ChainError` | no signature/name path from the leaf to a pinned root |
| `chain.invalid` | `ChainError` | CA constraint (basicConstraints, pathLen, KU, critical ext.) |
| `chain.path-mismatch` | `ChainError` | path is not leaf + reversed `cabundle[1:]` + root |
| `chain.leaf-key` | `ChainError` | the leaf key is not ECDSA P-384 |
| `chain.leaf-algorithm` | `ChainError` | the leaf is not signed with ecdsa-with-SHA384 |
| `chain.leaf-usage` | `ChainError` | the leaf is a CA or lacks keyUsage digitalSignature |
| `signature.invalid` | `SignatureError` | the COSE ES384 signature does not verify |
| `policy.no-pcr-check` | `InsecurePolicy` | no PCR checked, and not `UnsafeNoPcrCheck` |
| `policy.pcr-mismatch` | `PcrMismatch` | an expected PCR is absent or differs |
| `policy.debug` | `DebugDocument` | debug-mode document (PCR0 all zero), not allowed |
| `policy.nonce-mismatch` | `NonceMismatch` | nonce absent or different from the expected one |
| `policy.user-data-mismatch` | `UserDataMismatch` | user_data absent or not accepted |
| `policy.public-key-mismatch` | `PublicKeyMismatch` | public_key absent or not accepted |
| `policy.module-id-mismatch` | `ModuleIdMismatch` | module_id not accepted |
| `policy.stale` | `StaleDocument` | document older than the policy's maximum age |
| `policy.future` | `FutureDocument` | document timestamp after the verification time + skew |
| `policy.none-matched` | `NoPolicyMatched` | no alternative of an `AnyOf` matched (mixed reasons) |
| `root.pin-mismatch` | `RootError` | the bundled AWS root does not match its pinned digest |
| `root.invalid` | `RootError` | a supplied trust root cannot be loaded |
| `document.encoding` | `MalformedDocument` | (CLI only) input neither raw CBOR, hex nor base64 |

Every error also has a `hint` (or None): what to do about it, in terms of this Python API.
The command line and the service give their own hints, in terms of their flags and config.
"""

from __future__ import annotations

__all__ = [
    "HINTS",
    "AttestationError",
    "CertificateExpired",
    "CertificateNotYetValid",
    "ChainError",
    "DebugDocument",
    "FutureDocument",
    "InsecurePolicy",
    "MalformedDocument",
    "ModuleIdMismatch",
    "NoPolicyMatched",
    "NonceMismatch",
    "PcrMismatch",
    "PolicyError",
    "PublicKeyMismatch",
    "RootError",
    "SignatureError",
    "StaleDocument",
    "UnsupportedDocumentKind",
    "UserDataMismatch",
]


class AttestationError(Exception):
    """Root of every error this package raises about a document, its chain or a policy."""

    code: str = "attestation.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def reason(self) -> str:
        """The human-readable message, without the code."""
        return str(self.args[0]) if self.args else ""

    @property
    def hint(self) -> str | None:
        """What to do about it with this library's API, when there is something to do."""
        return HINTS.get(self.code)

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


#: Hints by code, naming the Python API (the CLI and the service keep their own, naming flags).
HINTS: dict[str, str] = {
    "policy.debug": "Policy(allow_debug=True) accepts debug-mode documents (development only)",
    "policy.no-pcr-check": "pin the measurements with Policy(pcrs={0: ..., 1: ..., 2: ...}), "
    "or pass UnsafeNoPcrCheck() to check none on purpose",
    "chain.expired": "a stored document verifies at its own time: "
    "verify(data, policy=..., at=document.timestamp)",
    "chain.not-yet-valid": "check this machine's clock, or pass at= to verify",
    "chain.untrusted": "documents from the NSM emulator are signed by its own root: "
    "Verifier(roots=load_pem_roots(root_pem))",
    "policy.stale": "ask the enclave for a fresh document, or widen Policy(max_age=...)",
    "policy.future": "check this machine's clock, or pass at= to verify",
    "policy.nonce-mismatch": "the document must carry the nonce given to Policy(nonce=...)",
}


class MalformedDocument(AttestationError):
    """The bytes are not a well-formed Nitro attestation document (no cryptography involved)."""

    code = "document.malformed"


class UnsupportedDocumentKind(AttestationError):
    """A well-formed document of another kind, e.g. NitroTPM, given to the enclave verifier."""

    code = "document.nitrotpm"


class ChainError(AttestationError):
    """The certificate chain does not lead to a pinned root under AWS's rules at the given time."""

    code = "chain.invalid"


class CertificateExpired(ChainError):
    code = "chain.expired"


class CertificateNotYetValid(ChainError):
    code = "chain.not-yet-valid"


class SignatureError(AttestationError):
    """The COSE_Sign1 signature does not verify under the leaf certificate's key."""

    code = "signature.invalid"


class PolicyError(AttestationError):
    """The document is authentic but the caller's policy refuses it."""

    code = "policy.error"


class InsecurePolicy(PolicyError, ValueError):
    """A policy that checks no PCR was built or passed; also a `ValueError` (a usage error)."""

    code = "policy.no-pcr-check"


class PcrMismatch(PolicyError):
    code = "policy.pcr-mismatch"


class DebugDocument(PolicyError):
    code = "policy.debug"


class NonceMismatch(PolicyError):
    code = "policy.nonce-mismatch"


class UserDataMismatch(PolicyError):
    code = "policy.user-data-mismatch"


class PublicKeyMismatch(PolicyError):
    code = "policy.public-key-mismatch"


class ModuleIdMismatch(PolicyError):
    code = "policy.module-id-mismatch"


class StaleDocument(PolicyError):
    code = "policy.stale"


class FutureDocument(PolicyError):
    code = "policy.future"


class NoPolicyMatched(PolicyError):
    """No alternative of an `AnyOf` accepted the document; `errors` holds each one's reason."""

    code = "policy.none-matched"

    def __init__(self, message: str, *, errors: tuple[PolicyError, ...], code: str | None = None):
        super().__init__(message, code=code)
        self.errors = errors


class RootError(AttestationError):
    """A trust root is unusable (bundled root corrupted, or a supplied PEM is invalid)."""

    code = "root.invalid"
