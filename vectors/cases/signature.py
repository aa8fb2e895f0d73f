"""`signature/`: the ES384 signature over the COSE Sig_structure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from attestation import builder
from attestation.builder import Map, Raw
from vectors.cases import case, variant
from vectors.cases._world import (
    P384_ORDER,
    SEED,
    World,
    canonical_order,
    envelope,
    flip_in,
    set_entry,
    sign,
)


def _flipped(w: World, index: int) -> bytes:
    out = bytearray(w.signature)
    out[index] ^= 0x01
    return bytes(out)


@case(None)
def high_s_twin(w: World) -> bytes:
    """The signature with s replaced by n - s where needed so that s > n/2. ECDSA accepts both
    twins and the NSM emits high-S (36 of 66 real documents): must verify."""
    return w.base.encode(high_s=True)


@case(None)
def low_s_twin(w: World) -> bytes:
    """The same signature in its low-S form (s <= n/2): must verify."""
    return w.base.encode(high_s=False)


@case(
    "signature.invalid",
    variants=[
        variant("r-bit-flip", index=47, what="The last bit of r"),
        variant("s-bit-flip", index=95, what="The last bit of s"),
        variant("r-top-bit-flip", index=0, what="The first bit of r"),
    ],
)
def bit_flip(w: World, *, index: int, what: str) -> bytes:
    """{what} flipped."""
    return envelope(w.payload, _flipped(w, index))


@case("signature.invalid")
def zero(w: World) -> bytes:
    """r = s = 0 (96 zero bytes)."""
    return envelope(w.payload, bytes(96))


@case("signature.invalid")
def s_equals_order(w: World) -> bytes:
    """s = n (out of range; a verifier must not reduce it modulo n)."""
    return envelope(w.payload, w.signature[:48] + P384_ORDER.to_bytes(48, "big"))


@case("envelope.signature-size")
def truncated(w: World) -> bytes:
    """The signature without its last byte (95 bytes)."""
    return envelope(w.payload, w.signature[:-1])


@case("signature.invalid")
def wrong_key(w: World) -> bytes:
    """Signed by another P-384 key than the leaf's."""
    stranger = builder.derive_key(SEED, "vectors/stranger")
    return envelope(w.payload, sign(w.payload, stranger))


@case("signature.invalid")
def signed_by_instance_ca(w: World) -> bytes:
    """Signed by the instance CA's key (the leaf's issuer) instead of the leaf's."""
    return envelope(w.payload, sign(w.payload, w.pki.instance.key))


@case("signature.invalid")
def context_signature(w: World) -> bytes:
    """Signed over a Sig_structure with context "Signature" (COSE_Sign) instead of
    "Signature1"."""
    return envelope(w.payload, sign(w.payload, w.leaf.key, context="Signature"))


@case("signature.invalid")
def external_aad(w: World) -> bytes:
    """Signed over a Sig_structure with a non-empty external_aad; the verifier uses h''."""
    return envelope(w.payload, sign(w.payload, w.leaf.key, external_aad=b"aad"))


@case("signature.invalid")
def payload_byte_flip(w: World) -> bytes:
    """One bit of PCR0 flipped inside the signed payload (the Signal test)."""
    return envelope(flip_in(w.payload, w.base.pcrs[0]), w.signature)


def _long_pcr0(w: World) -> bytes:
    pcrs = w.base.pcrs
    long_pcr0 = Map(((0, Raw(b"\x59\x00\x30" + pcrs[0])), *sorted(pcrs.items())[1:]))
    return w.base.payload(set_entry(w.base.fields(), "pcrs", long_pcr0))


def _pcrs_indefinite(w: World) -> bytes:
    pcrs = Map(tuple(sorted(w.base.pcrs.items())), True)
    return w.base.payload(set_entry(w.base.fields(), "pcrs", pcrs))


@case(
    "signature.invalid",
    variants=[
        variant(
            "reencoded-indefinite-map",
            what="the same map written indefinite-length (0xbf ... 0xff)",
            reencode=lambda w: replace(w.base, indefinite=True).payload(),
        ),
        variant(
            "reencoded-pcr-long-length",
            what="PCR0's length written in two bytes (0x59 0x00 0x30) instead of one",
            reencode=_long_pcr0,
        ),
        variant(
            "reencoded-pcrs-indefinite",
            what="the pcrs map written indefinite-length",
            reencode=_pcrs_indefinite,
        ),
        variant(
            "reencoded-canonical-key-order",
            what="the keys in RFC 8949 canonical order",
            reencode=lambda w: w.base.payload(canonical_order(w.base.fields())),
        ),
    ],
)
def reencoded(w: World, *, what: str, reencode: Callable[[World], bytes]) -> bytes:
    """The payload re-encoded as {what}: equivalent content, but the original signature covers
    the original bytes, so it must fail (never verify a re-encoding)."""
    payload = reencode(w)
    assert payload != w.payload
    return envelope(payload, w.signature)


@case("signature.invalid")
def protected_header_reencoded(w: World) -> bytes:
    """The protected header written a1 01 39 00 22 (still {1: -35}, non-preferred integer) with
    the signature made over a1 01 38 22: the signed bytes differ."""
    return envelope(w.payload, w.signature, protected=bytes.fromhex("a101390022"))
