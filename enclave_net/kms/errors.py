"""The error tree of `enclave_net.kms`: one root, `KmsError`.

- `CmsError`: a `CiphertextForRecipient` that is malformed, uses another algorithm, is addressed
  to another key, or does not decrypt. Raised for any input, never a foreign exception.
- `CredentialsError`: the parent's credentials endpoint failed or answered nonsense.
- `KmsTransportError`: the request never got a KMS answer (egress, TLS, timeout, not JSON).
- `KmsServiceError`: KMS answered with an error; one subclass per AWS error name
  (`AccessDeniedException`, ...), found with `service_error(name, message)`.

Messages never contain plaintext, keys or credentials.
"""

from __future__ import annotations

from enclave_net.errors import EnclaveNetError

__all__ = [
    "AccessDeniedException",
    "CmsError",
    "CredentialsError",
    "DisabledException",
    "IncompleteSignatureException",
    "IncorrectKeyException",
    "InvalidCiphertextException",
    "InvalidSignatureException",
    "KMSInternalException",
    "KmsError",
    "KmsServiceError",
    "KmsTransportError",
    "NotFoundException",
    "RecipientError",
    "UnrecognizedClientException",
    "UnsupportedOperationException",
    "ValidationException",
    "service_error",
]


class KmsError(EnclaveNetError):
    """Root of every error raised by `enclave_net.kms` (a branch of the package's one tree)."""


class CmsError(KmsError):
    """A CMS EnvelopedData (CiphertextForRecipient) that we refuse to open."""


class RecipientError(KmsError):
    """The enclave could not make its key pair or its attestation document."""


class CredentialsError(KmsError):
    """No usable AWS credentials from the parent's endpoint."""


class KmsTransportError(KmsError):
    """No KMS answer: the egress, TLS or a timeout failed, or the answer was not KMS JSON."""


class KmsServiceError(KmsError):
    """KMS answered with an error. `code` is AWS's error name, `status` the HTTP status."""

    code = "KmsServiceError"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


# AWS's names, so that `except AccessDeniedException` reads like the KMS API reference.
class AccessDeniedException(KmsServiceError):
    """Not allowed: IAM or the key policy refused the caller, or a `kms:RecipientAttestation:*`
    condition did not match the attestation document."""

    code = "AccessDeniedException"


class DisabledException(KmsServiceError):
    """The KMS key is disabled."""

    code = "DisabledException"


class IncorrectKeyException(KmsServiceError):
    """The ciphertext was not encrypted under the KMS key named by `KeyId`."""

    code = "IncorrectKeyException"


class InvalidCiphertextException(KmsServiceError):
    """The ciphertext, its encryption context or a grant token is invalid or was tampered with."""

    code = "InvalidCiphertextException"


class NotFoundException(KmsServiceError):
    """No such key or alias in this account and region."""

    code = "NotFoundException"


class ValidationException(KmsServiceError):
    """A request parameter failed KMS's validation (also the double's answer to a document that
    does not verify)."""

    code = "ValidationException"


class UnsupportedOperationException(KmsServiceError):
    """The operation is not supported for this key (its spec or usage)."""

    code = "UnsupportedOperationException"


class UnrecognizedClientException(KmsServiceError):
    """The access key id is unknown to AWS (wrong or expired credentials)."""

    code = "UnrecognizedClientException"


class InvalidSignatureException(KmsServiceError):
    """The SigV4 signature does not match: wrong secret key, or a clock far off."""

    code = "InvalidSignatureException"


class IncompleteSignatureException(KmsServiceError):
    """The request's SigV4 authorization is missing a part."""

    code = "IncompleteSignatureException"


class KMSInternalException(KmsServiceError):
    """KMS failed internally; the request may be retried."""

    code = "KMSInternalException"
    status = 500


_BY_NAME: dict[str, type[KmsServiceError]] = {
    cls.code: cls
    for cls in (
        AccessDeniedException,
        DisabledException,
        IncorrectKeyException,
        InvalidCiphertextException,
        NotFoundException,
        ValidationException,
        UnsupportedOperationException,
        UnrecognizedClientException,
        InvalidSignatureException,
        IncompleteSignatureException,
        KMSInternalException,
    )
}


def service_error(name: str, message: str, *, status: int | None = None) -> KmsServiceError:
    """The typed error for AWS error `name` (`"...#AccessDeniedException"` forms accepted)."""
    short = name.rsplit("#", 1)[-1].split(":", 1)[0]
    cls = _BY_NAME.get(short)
    if cls is None:
        return KmsServiceError(message, code=short or "UnknownError", status=status)
    return cls(message, status=status)
