"""Build attestation documents and a synthetic Nitro PKI with AWS's exact shapes.

This is the producing side of the library, used by the NSM emulator, by the conformance corpus
generator (`vectors/`) and by tests. Nothing here verifies anything. Its pieces:

- this module: the wire constants and the documents (payload, Sig_structure, COSE_Sign1, ES384);
- `attestation._pki` (re-exported here): keys, the certificate profile, the four-CA chain and
  its leaves, shaped like the real chains in vectors/real;
- `attestation._cose_writer` (the CBOR wrappers re-exported here): the one CBOR/COSE writer.

Documents are untagged COSE_Sign1 (optionally tag 18) with the protected header `{1: -35}`, an
empty unprotected map, a 9-key payload in AWS's key order with nulls for absent fields, the
timestamp always in the 8-byte form, and a 96-byte raw `r || s` ES384 signature, as in every
real document in vectors/real. The CBOR is written by hand, so every byte is chosen on purpose
rather than by an encoder's canonical form. With a seeded PKI, everything is reproducible: all
ECDSA signatures are deterministic (RFC 6979).

The encoders encode what they are given: they do not enforce AWS's content rules (PCR lengths,
field sizes, digest name), so that the conformance corpus can build invalid documents too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NotRequired, TypedDict, Unpack

from cryptography.hazmat.primitives.asymmetric import ec

from attestation import _cose_writer
from attestation._cose_writer import (
    Array,
    Map,
    Raw,
    Tag,
    cose_sign1,
    curve_order,
    ecdsa_signature,
    encode,
    uint64,
)
from attestation._pki import (
    CA_KEY_USAGE,
    INSTANCE_KEY_USAGE,
    INSTANCE_LIFETIME,
    LEAF_KEY_USAGE,
    LEAF_LIFETIME,
    REGIONAL_LIFETIME,
    ROOT_COMMON_NAME,
    ROOT_LIFETIME,
    ZONAL_LIFETIME,
    CertifiedKey,
    Pki,
    derive_key,
    generate_pki,
    issue_certificate,
    key_usage,
)

__all__ = [
    "CA_KEY_USAGE",
    "INSTANCE_KEY_USAGE",
    "INSTANCE_LIFETIME",
    "LEAF_KEY_USAGE",
    "LEAF_LIFETIME",
    "PAYLOAD_KEYS",
    "PCR_LENGTH",
    "PROTECTED_HEADER",
    "REGIONAL_LIFETIME",
    "ROOT_COMMON_NAME",
    "ROOT_LIFETIME",
    "SIGNATURE_LENGTH",
    "UNPROTECTED_HEADER",
    "ZONAL_LIFETIME",
    "Array",
    "CertifiedKey",
    "Map",
    "PayloadFields",
    "Pki",
    "Raw",
    "Tag",
    "build_document",
    "cose_sign1",
    "curve_order",
    "derive_key",
    "ecdsa_signature",
    "encode",
    "encode_payload",
    "encode_sign1",
    "generate_pki",
    "issue_certificate",
    "key_usage",
    "payload_entries",
    "sig_structure",
    "sign_payload",
    "uint64",
]

#: The NIST curve orders, where the builder's tests look for them.
_CURVE_ORDERS = _cose_writer.CURVE_ORDERS

# --- Wire constants (AWS attestation_process.md §2.2, §3.1; the documents in vectors/real) ------

#: The protected header of every real document: `{1: -35}`, alg ES384.
PROTECTED_HEADER = bytes.fromhex("a1013822")
#: The unprotected header of every real document: an empty map.
UNPROTECTED_HEADER = b"\xa0"
#: Raw `r || s`, 48 bytes each, for P-384 (COSE's ECDSA encoding, not DER).
SIGNATURE_LENGTH = 96
#: Every PCR is a SHA-384 value (the module's digest is SHA384).
PCR_LENGTH = 48
#: The payload keys in the order the NSM emits them (Rust `AttestationDoc`, src/api/mod.rs).
PAYLOAD_KEYS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)


# --- Documents ----------------------------------------------------------------------------------


class PayloadFields(TypedDict):
    """The payload's fields, by name (`encode_payload`, `payload_entries`)."""

    module_id: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: Sequence[bytes]
    public_key: NotRequired[bytes | None]
    user_data: NotRequired[bytes | None]
    nonce: NotRequired[bytes | None]
    digest: NotRequired[str]
    """`"SHA384"` unless given: the only value AWS defines."""


def encode_payload(*, indefinite: bool = False, **fields: Unpack[PayloadFields]) -> bytes:
    """The attestation payload map, byte for byte as the NSM writes it (vectors/real).

    Keys in AWS's order; `None` optionals are null, never omitted; the timestamp in the 8-byte
    form; `pcrs` a definite map in ascending index order; `cabundle` a definite array; the
    top-level map definite (`0xa9`) or, like documents since mid-2025, indefinite (`0xbf ... 0xff`).
    """
    return encode(Map(tuple(payload_entries(**fields)), indefinite))


def payload_entries(**fields: Unpack[PayloadFields]) -> list[tuple[object, object]]:
    """The nine payload entries in the NSM's order, as values for `encode` (see `encode_payload`).

    The conformance corpus starts from these and changes one entry to build a broken payload.
    """
    values = (
        fields["module_id"],
        fields.get("digest", "SHA384"),
        uint64(fields["timestamp_ms"]),
        Map(tuple(sorted(fields["pcrs"].items()))),
        fields["certificate"],
        list(fields["cabundle"]),
        fields.get("public_key"),
        fields.get("user_data"),
        fields.get("nonce"),
    )
    return list(zip(PAYLOAD_KEYS, values, strict=True))


def sig_structure(
    payload: bytes,
    *,
    protected: bytes = PROTECTED_HEADER,
    context: str = _cose_writer.SIGNATURE1_CONTEXT,
    external_aad: bytes = b"",
) -> bytes:
    """The bytes ES384 signs: `["Signature1", protected, h'', payload]` (RFC 9052 §4.4).

    `context` and `external_aad` exist so that the conformance corpus can sign the wrong
    structure on purpose; AWS signs with the defaults.
    """
    return _cose_writer.sig_structure(
        payload, protected=protected, context=context, external_aad=external_aad
    )


def encode_sign1(
    *,
    payload: bytes,
    signature: bytes,
    protected: bytes = PROTECTED_HEADER,
    unprotected: bytes = UNPROTECTED_HEADER,
    tag18: bool = False,
) -> bytes:
    """A COSE_Sign1 array from its parts; `unprotected` is already-encoded CBOR."""
    return cose_sign1(
        payload, signature, protected=protected, unprotected=Raw(unprotected), tag18=tag18
    )


def sign_payload(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    tag18: bool = False,
    high_s: bool = False,
    low_s: bool = False,
    protected: bytes = PROTECTED_HEADER,
) -> bytes:
    """Sign `payload` with ECDSA over SHA-384 and return the COSE_Sign1 bytes.

    The signature is deterministic (RFC 6979) and raw `r || s`, each padded to the curve's
    size (96 bytes for P-384). The real NSM emits high-S about half the time (vectors/real,
    MANIFEST.json `signature_s_is_high`): `high_s=True` forces `s > n/2` and `low_s=True` forces
    `s <= n/2`, which gives the conformance corpus both twins of one signature; by default `s` is
    left as signed.
    """
    if high_s and low_s:
        raise ValueError("high_s and low_s are mutually exclusive")
    signature = ecdsa_signature(
        sig_structure(payload, protected=protected), key, high_s=high_s if high_s or low_s else None
    )
    return encode_sign1(payload=payload, signature=signature, protected=protected, tag18=tag18)


def build_document(
    *,
    leaf: CertifiedKey,
    cabundle: Sequence[bytes],
    module_id: str,
    timestamp_ms: int,
    pcrs: Mapping[int, bytes],
    public_key: bytes | None = None,
    user_data: bytes | None = None,
    nonce: bytes | None = None,
    indefinite: bool = False,
    tag18: bool = False,
    high_s: bool = False,
) -> bytes:
    """A complete attestation document signed by `leaf`, in the NSM's exact byte shape."""
    payload = encode_payload(
        module_id=module_id,
        timestamp_ms=timestamp_ms,
        pcrs=pcrs,
        certificate=leaf.der,
        cabundle=cabundle,
        public_key=public_key,
        user_data=user_data,
        nonce=nonce,
        indefinite=indefinite,
    )
    return sign_payload(payload, leaf.key, tag18=tag18, high_s=high_s)
