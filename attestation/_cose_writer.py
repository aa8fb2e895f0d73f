"""The one CBOR (RFC 8949) and COSE_Sign1 (RFC 9052) writer: builder, emulator and corpus.

Encoding is by hand rather than through an encoder library, so that every byte is chosen on
purpose: the NSM's 8-byte timestamp, an indefinite payload map, and, for the conformance corpus,
the forms an encoder would never produce (duplicate keys, wrong types, non-preferred lengths,
arbitrary tags). Plain values use the preferred (shortest) serialization of RFC 8949 §4.1;
anything else is spelled with the wrappers `Raw`, `Tag`, `Map` and `Array`.

The writer writes what it is given; AWS's content rules are the verifier's business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

__all__ = [
    "COSE_TAG_SIGN1",
    "CURVE_ORDERS",
    "SIGNATURE1_CONTEXT",
    "Array",
    "Map",
    "Raw",
    "Tag",
    "cose_sign1",
    "curve_order",
    "ecdsa_signature",
    "encode",
    "head",
    "sig_structure",
    "uint64",
]

COSE_TAG_SIGN1 = 18  # RFC 9052 §4.2
SIGNATURE1_CONTEXT = "Signature1"  # RFC 9052 §4.4
_NULL = b"\xf6"
# array(4), text(10) "Signature1": how every Sig_structure AWS signs begins.
_SIGNATURE1_PREFIX = b"\x84\x6aSignature1"
_BREAK = b"\xff"

# Orders of the NIST curves, for moving a signature between its low-S and high-S forms and for
# deriving keys (SEC 2 v2 §2.4-§2.6).
CURVE_ORDERS: dict[str, int] = {
    "secp256r1": int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16),
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B"
        "7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


@dataclass(frozen=True)
class Raw:
    """Already-encoded CBOR, inserted verbatim (non-preferred forms, broken items)."""

    data: bytes


@dataclass(frozen=True)
class Tag:
    """A tagged item (major type 6)."""

    tag: int
    value: object


@dataclass(frozen=True)
class Map:
    """A map as an ordered list of pairs, so that order, duplicates and length form are chosen."""

    items: tuple[tuple[object, object], ...]
    indefinite: bool = False


@dataclass(frozen=True)
class Array:
    """An array whose length form is chosen."""

    items: tuple[object, ...]
    indefinite: bool = False


def head(major: int, value: int) -> bytes:
    """The shortest head for `value` (RFC 8949 §3; preferred serialization, §4.1)."""
    if value < 0:
        raise ValueError("CBOR argument must be non-negative")
    kind = major << 5
    if value < 24:
        return bytes((kind | value,))
    if value < 0x100:
        return bytes((kind | 24, value))
    if value < 0x10000:
        return bytes((kind | 25,)) + value.to_bytes(2, "big")
    if value < 1 << 32:
        return bytes((kind | 26,)) + value.to_bytes(4, "big")
    if value < 1 << 64:
        return bytes((kind | 27,)) + value.to_bytes(8, "big")
    raise ValueError("CBOR argument must fit 64 bits")


def uint64(value: int) -> Raw:
    """An unsigned integer in the 8-byte form, as the NSM writes the timestamp (vectors/real)."""
    if not 0 <= value < 1 << 64:
        raise ValueError("CBOR uint64 must be in [0, 2**64)")
    return Raw(b"\x1b" + value.to_bytes(8, "big"))


def encode(value: object) -> bytes:
    """Encode int, bytes, str, None, bool, float (always float64), list, tuple, dict, or the
    wrappers above. Dicts keep their insertion order."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        return head(3, len(encoded)) + encoded
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, Tag):
        return head(6, value.tag) + encode(value.value)
    if isinstance(value, list | tuple):
        value = Array(tuple(value))
    if isinstance(value, dict):
        value = Map(tuple(value.items()))
    if isinstance(value, Array):
        body = b"".join(encode(item) for item in value.items)
        if value.indefinite:
            return b"\x9f" + body + _BREAK
        return head(4, len(value.items)) + body
    if isinstance(value, Map):
        body = b"".join(encode(k) + encode(v) for k, v in value.items)
        if value.indefinite:
            return b"\xbf" + body + _BREAK
        return head(5, len(value.items)) + body
    raise TypeError(f"cannot encode {type(value).__name__}")


# --- COSE_Sign1 (RFC 9052) -----------------------------------------------------------------------


def sig_structure(
    payload: bytes,
    *,
    protected: bytes,
    context: str = SIGNATURE1_CONTEXT,
    external_aad: bytes = b"",
) -> bytes:
    """The bytes a COSE_Sign1 signature covers: `[context, protected, external_aad, payload]`
    (RFC 9052 §4.4). Only `"Signature1"` and an empty `external_aad` are what AWS signs; the
    others exist so that the corpus can sign the wrong structure on purpose."""
    # Written out rather than through `encode`: the verifier rebuilds this on every verification.
    prefix = _SIGNATURE1_PREFIX if context == SIGNATURE1_CONTEXT else b"\x84" + encode(context)
    return b"".join(
        (
            prefix,
            head(2, len(protected)),
            protected,
            head(2, len(external_aad)),
            external_aad,
            head(2, len(payload)),
            payload,
        )
    )


def cose_sign1(
    payload: object,
    signature: object,
    *,
    protected: object,
    unprotected: object,
    tag18: bool = False,
) -> bytes:
    """COSE_Sign1 `[protected, unprotected, payload, signature]`, untagged like the NSM's or in
    tag 18. Every part is any value `encode` takes, so envelopes with wrong types can be built."""
    body = encode([protected, unprotected, payload, signature])
    return encode(Tag(COSE_TAG_SIGN1, Raw(body))) if tag18 else body


def curve_order(curve: ec.EllipticCurve) -> int:
    """The group order of a NIST curve; ValueError for a curve not in `CURVE_ORDERS`."""
    order = CURVE_ORDERS.get(curve.name)
    if order is None:
        raise ValueError(f"no known group order for curve {curve.name}")
    return order


def ecdsa_signature(
    message: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    high_s: bool | None = None,
    scalar_size: int | None = None,
) -> bytes:
    """COSE's raw `r || s` ECDSA signature over SHA-384, deterministic (RFC 6979).

    `high_s=True` forces `s > n/2`, `False` forces `s <= n/2`, `None` leaves `s` as signed (the
    real NSM emits high-S about half the time). r and s are padded to `scalar_size` bytes
    (default: the curve's size, 48 for P-384).
    """
    r, s = utils.decode_dss_signature(
        key.sign(message, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    )
    if high_s is not None:
        order = curve_order(key.curve)
        if (s > order // 2) != high_s:
            s = order - s
    size = scalar_size if scalar_size is not None else (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")
