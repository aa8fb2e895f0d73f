"""What the service's clients see on the wire, shared by the app and its OpenAPI description."""

from __future__ import annotations

__all__ = ["API_VERSION", "CBOR", "JSON", "MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_NONCE_BYTES"]

API_VERSION = "1.0.0"
CBOR = "application/cbor"  # RFC 8949 §9.5
JSON = "application/json"
# AWS CDDL: `nonce = bytes .size (0..1024)`; an empty expected nonce would prove nothing.
MAX_NONCE_BYTES = 1024
# A request head (request line and headers) at most this large, with at most this many headers:
# a real client's is ~200 bytes with fewer than 10. Above either, 431 (RFC 6585 §5).
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
