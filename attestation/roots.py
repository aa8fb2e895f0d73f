"""Trust roots: the pinned AWS Nitro Enclaves Root-G1, and loading other roots from PEM.

The AWS root ships as package data (`attestation/roots/aws_nitro_enclaves_root_g1.pem`) and is
checked against its DER SHA-256 every time it is loaded, so a corrupted or substituted file fails
loudly instead of becoming a trust anchor (a fabricated copy was seen in a public repository).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attestation.errors import RootError

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "aws_nitro_root", "load_pem_roots"]

# DER SHA-256 of AWS_NitroEnclaves_Root-G1: the root.pem in AWS's AWS_NitroEnclaves_Root-G1.zip,
# and cabundle[0] of every real document in vectors/real (MANIFEST.json). Not the 8cf60e2b...
# that AWS publishes (attestation_process.md §2.1): that is the SHA-256 of the ZIP.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_ROOT_RESOURCE = "aws_nitro_enclaves_root_g1.pem"


def aws_nitro_root() -> x509.Certificate:
    """The AWS Nitro Enclaves Root-G1 certificate, verified against its pinned DER digest."""
    pem = resources.files("attestation").joinpath("roots", _ROOT_RESOURCE).read_bytes()
    (root,) = load_pem_roots(pem)
    digest = hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
    if digest != AWS_NITRO_ROOT_G1_SHA256:
        raise RootError(f"bundled AWS root has DER SHA-256 {digest}", code="root.pin-mismatch")
    return root


def load_pem_roots(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; `RootError` if there is none or one is invalid."""
    try:
        roots = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise RootError(f"cannot load root certificates: {exc}") from exc
    return roots
