"""The reference enclave application: an attested price oracle.

It fetches prices over HTTPS from inside a Nitro enclave (through vsock, no DNS in the
enclave), signs reports with a secp256k1 key born in the enclave, and binds that key to an
attestation document.
"""

from __future__ import annotations

__all__: list[str] = []
