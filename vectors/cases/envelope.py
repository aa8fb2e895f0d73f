"""`envelope/`: the COSE_Sign1 structure around the payload."""

from __future__ import annotations

from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric import utils

from attestation.builder import Map, Raw, Tag, encode
from vectors.cases import case, variant
from vectors.cases._world import (
    EMPTY_MAP,
    MAX_PAYLOAD,
    PROTECTED,
    World,
    envelope,
    filler,
    sign,
)


@case("document.size")
def empty_input(w: World) -> bytes:
    """Zero bytes."""
    return b""


@case("envelope.not-array")
def not_array_map(w: World) -> bytes:
    """The top-level item is a map holding the four COSE_Sign1 parts under keys 0-3."""
    return encode({0: PROTECTED, 1: Raw(EMPTY_MAP), 2: w.payload, 3: w.signature})


@case("envelope.not-array")
def not_array_bstr(w: World) -> bytes:
    """The top-level item is a byte string wrapping a valid document."""
    return encode(w.document)


@case("envelope.wrong-length")
def wrong_length_3(w: World) -> bytes:
    """COSE_Sign1 array of 3 (the signature is missing)."""
    return encode([PROTECTED, Raw(EMPTY_MAP), w.payload])


@case("envelope.wrong-length")
def wrong_length_5(w: World) -> bytes:
    """COSE_Sign1 array of 5 (an extra empty byte string after the signature)."""
    return encode([PROTECTED, Raw(EMPTY_MAP), w.payload, w.signature, b""])


@case("envelope.tag")
def tag_98(w: World) -> bytes:
    """Wrapped in tag 98 (COSE_Sign) instead of 18."""
    return encode(Tag(98, Raw(w.document)))


@case("envelope.tag")
def tag_61_cwt(w: World) -> bytes:
    """Wrapped in tag 61 (CWT) around tag 18: only a single tag 18 may wrap the envelope."""
    return encode(Tag(61, Tag(18, Raw(w.document))))


@case("envelope.tag")
def tag_18_twice(w: World) -> bytes:
    """Tag 18 applied twice."""
    return encode(Tag(18, Tag(18, Raw(w.document))))


@case(
    None,
    variants=[
        variant(f"tag-18-head-{len(head) // 2}-bytes", head=head)
        for head in ("d812", "d90012", "da00000012", "db0000000000000012")
    ],
)
def tag_18_head(w: World, *, head: str) -> bytes:
    """Tag 18 written with the head {head} instead of d2: valid, a CBOR head may use any of its
    length forms and its argument is read by value."""
    return bytes.fromhex(head) + w.document


@case(
    "envelope.tag",
    variants=[
        variant("tag-19", head="d813", what="d8 13 (tag 19)"),
        variant("tag-19-head-3-bytes", head="d90013", what="d9 00 13 (tag 19, 3-byte head)"),
        variant("tag-18-long-head-twice", head="d812d2", what="d8 12 d2 (tag 18 twice)"),
    ],
)
def tag_long_head(w: World, *, head: str, what: str) -> bytes:
    """Wrapped in {what}: only a single tag 18 may wrap the envelope, whatever its head form."""
    return bytes.fromhex(head) + w.document


@case(
    "envelope.protected-header",
    variants=[
        variant(f"protected-{name}", header=header, what=what)
        for name, header, what in (
            ("alg-es256", encode({1: -7}), "{1: -7} (ES256)"),
            ("alg-es512", encode({1: -36}), "{1: -36} (ES512)"),
            ("alg-text", encode({1: "ES384"}), '{1: "ES384"} (alg as text)'),
            ("empty-bstr", b"", "the empty byte string (RFC 9052's form of an empty map)"),
            ("empty-map", EMPTY_MAP, "{} (no alg)"),
            (
                "extra-kid",
                encode(Map(((1, -35), (4, b"kid")))),
                "{1: -35, 4: h'6b6964'} (extra kid)",
            ),
            ("crit", encode(Map(((1, -35), (2, [4])))), "{1: -35, 2: [4]} (crit)"),
            (
                "duplicate-alg",
                encode(Map(((1, -35), (1, -35)))),
                "{1: -35, 1: -35} (duplicate key)",
            ),
        )
    ],
)
def protected_header(w: World, *, header: bytes, what: str) -> bytes:
    """Protected header {what}, correctly signed over those bytes by the leaf; only {{1: -35}}
    is allowed."""
    return envelope(w.payload, sign(w.payload, w.leaf.key, protected=header), protected=header)


@case("envelope.field-type")
def protected_not_bstr(w: World) -> bytes:
    """The protected header is a bare map {1: -35} instead of a byte string wrapping it."""
    return envelope(w.payload, w.signature, protected=Raw(PROTECTED))


@case("envelope.unprotected-header")
def unprotected_kid(w: World) -> bytes:
    """Unprotected header {4: h'01'} (kid): it is not signed, so it must be empty."""
    return envelope(w.payload, w.signature, unprotected={4: b"\x01"})


@case("envelope.unprotected-header")
def unprotected_alg(w: World) -> bytes:
    """Unprotected header repeats {1: -35}; RFC 9052 §3 forbids alg there."""
    return envelope(w.payload, w.signature, unprotected={1: -35})


@case("cbor.duplicate-key")
def unprotected_duplicate_key(w: World) -> bytes:
    """Unprotected header {4: h'01', 4: h'01'}: a duplicate map key in the envelope."""
    return envelope(w.payload, w.signature, unprotected=Map(((4, b"\x01"), (4, b"\x01"))))


@case("envelope.field-type")
def unprotected_not_map(w: World) -> bytes:
    """Unprotected header is an empty byte string instead of a map."""
    return envelope(w.payload, w.signature, unprotected=b"")


@case("envelope.field-type")
def payload_not_bstr(w: World) -> bytes:
    """The payload is the attestation map itself instead of a byte string holding it."""
    return envelope(Raw(w.payload), w.signature)


@case("envelope.field-type")
def payload_null(w: World) -> bytes:
    """A detached (null) payload."""
    return envelope(None, w.signature)


@case("envelope.payload-size")
def payload_empty(w: World) -> bytes:
    """An empty payload byte string, signed by the leaf (AWS: payload is 1..16384 bytes)."""
    return envelope(b"", sign(b"", w.leaf.key))


@case("envelope.payload-size")
def payload_oversize(w: World) -> bytes:
    """The payload is 16385 bytes, one over AWS's 16384 (padded with a long nonce, which is
    also over its own 1024-byte limit; the envelope's size check comes first)."""
    # A nonce just long enough to make the payload 16385 bytes: null (1 byte) becomes a byte
    # string with a 3-byte head. The document stays far below any sane whole-document limit.
    nonce_size = MAX_PAYLOAD + 1 - (len(w.payload) - 1 + 3)
    oversized = replace(w.base, nonce=filler("nonce-oversize", nonce_size))
    assert len(oversized.payload()) == MAX_PAYLOAD + 1
    return oversized.encode()


@case("envelope.field-type")
def signature_not_bstr(w: World) -> bytes:
    """The signature is a text string."""
    return envelope(w.payload, w.signature.hex())


@case(
    "envelope.signature-size",
    variants=[
        variant(f"signature-{size}-bytes", size=size, what=what)
        for size, what in ((0, "empty"), (64, "64 bytes (a P-256 size)"), (97, "97 bytes"))
    ],
)
def signature_size(w: World, *, size: int, what: str) -> bytes:
    """The signature is {what}; ES384 is exactly 96."""
    return envelope(w.payload, (w.signature + b"\x00")[:size])


@case("envelope.signature-size")
def signature_der(w: World) -> bytes:
    """The same signature DER-encoded (ECDSA-Sig-Value) instead of COSE's raw r || s."""
    r, s = int.from_bytes(w.signature[:48], "big"), int.from_bytes(w.signature[48:], "big")
    return envelope(w.payload, utils.encode_dss_signature(r, s))


@case("cbor.trailing-bytes")
def trailing_byte(w: World) -> bytes:
    """A valid document followed by one 0x00 byte."""
    return w.document + b"\x00"


@case("cbor.trailing-bytes")
def trailing_document(w: World) -> bytes:
    """A valid document followed by a second copy of itself."""
    return w.document + w.document


@case("cbor.truncated")
def truncated(w: World) -> bytes:
    """A valid document without its last byte."""
    return w.document[:-1]


@case("cbor.truncated")
def truncated_payload_length(w: World) -> bytes:
    """The document cut in the middle of the payload byte string."""
    return w.document[: len(w.document) // 2]
