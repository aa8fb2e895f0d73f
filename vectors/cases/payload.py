"""`payload/`: the attestation map's syntax (AWS's CDDL and §3.2.2)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from attestation.builder import Map, Raw, Tag, encode, uint64
from vectors.cases import case, variant
from vectors.cases._world import (
    INSTANCE_ID,
    MODULE_ID,
    Doc,
    World,
    big_leaf,
    der,
    drop_entry,
    filler,
    nitrotpm_pcrs,
    padded_to,
    padding,
    policy_for,
    reissue,
    set_entry,
    sha384,
)

_TPM_PCRS = nitrotpm_pcrs()


@case("payload.not-map")
def not_map(w: World) -> bytes:
    """The payload is a CBOR array of the nine values, signed by the leaf."""
    return w.base.encode(payload=encode([v for _, v in w.base.fields()]))


@case(
    "payload.missing-field",
    variants=[
        variant(f"missing-{key.replace('_', '-')}", key=key)
        for key in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
    ],
)
def missing(w: World, *, key: str) -> bytes:
    """The mandatory field {key} is absent."""
    return w.base.encode(entries=drop_entry(w.base.fields(), key))


@case("payload.missing-field")
def null_timestamp(w: World) -> bytes:
    """The mandatory field timestamp is null; null means absent (vectors/README.md), so it is
    missing."""
    return w.base.encode(entries=set_entry(w.base.fields(), "timestamp", None))


@case("payload.unknown-field")
def unknown_field_text(w: World) -> bytes:
    """An extra key "foo" with a byte string value."""
    return w.base.encode(entries=[*w.base.fields(), ("foo", b"bar")])


@case("payload.unknown-field")
def unknown_field_int(w: World) -> bytes:
    """An extra integer key 1."""
    return w.base.encode(entries=[*w.base.fields(), (1, b"bar")])


@case("payload.unknown-field")
def pcrs_and_nitrotpm_pcrs(w: World) -> bytes:
    """Both pcrs and nitrotpm_pcrs: neither an enclave nor a NitroTPM document."""
    tpm = ("nitrotpm_pcrs", Map(tuple(sorted(w.base.pcrs.items()))))
    return w.base.encode(entries=[*w.base.fields(), tpm])


@case("payload.unknown-field")
def nitrotpm_pcrs_null(w: World) -> bytes:
    """pcrs and a nitrotpm_pcrs key whose value is null: the key alone makes it neither an
    enclave nor a NitroTPM document, null or not."""
    return w.base.encode(entries=[*w.base.fields(), ("nitrotpm_pcrs", None)])


@case("cbor.duplicate-key")
def duplicate_nonce(w: World) -> bytes:
    """The nonce key appears twice (with different values): a duplicate map key."""
    return w.base.encode(
        entries=[*set_entry(w.base.fields(), "nonce", b"\x01"), ("nonce", b"\x02")]
    )


@case("cbor.duplicate-key")
def duplicate_pcr_index(w: World) -> bytes:
    """PCR index 0 appears twice in the pcrs map."""
    pcrs = Map((*sorted(w.base.pcrs.items()), (0, sha384("dup-pcr0"))))
    return w.base.encode(entries=set_entry(w.base.fields(), "pcrs", pcrs))


@case(
    "payload.field-type",
    variants=[
        variant(name, key=key, value=value, what=what)
        for name, key, value, what in (
            (
                "module-id-bytes",
                "module_id",
                lambda _: MODULE_ID.encode(),
                "module_id is a byte string",
            ),
            ("digest-bytes", "digest", lambda _: b"SHA384", "digest is a byte string"),
            (
                "timestamp-text",
                "timestamp",
                lambda b: str(b.timestamp_ms),
                "timestamp is a text string",
            ),
            (
                "pcrs-array",
                "pcrs",
                lambda b: [b.pcrs[i] for i in sorted(b.pcrs)],
                "pcrs is an array",
            ),
            ("certificate-text", "certificate", lambda _: "MIIC", "certificate is a text string"),
            (
                "cabundle-map",
                "cabundle",
                lambda b: dict(enumerate(b.cabundle)),
                "cabundle is a map",
            ),
            (
                "cabundle-item-text",
                "cabundle",
                lambda b: [*b.cabundle[:3], "MIIC"],
                "cabundle[3] is text",
            ),
            ("public-key-text", "public_key", lambda _: "key", "public_key is a text string"),
            ("user-data-int", "user_data", lambda _: 7, "user_data is an integer"),
            ("nonce-array", "nonce", lambda _: [b"\x01"], "nonce is an array"),
            ("nonce-false", "nonce", lambda _: False, "nonce is false"),
        )
    ],
)
def wrong_type(w: World, *, key: str, value: Callable[[Doc], object], what: str) -> bytes:
    """Wrong type: {what}."""
    return w.base.encode(entries=set_entry(w.base.fields(), key, value(w.base)))


@case("payload.field-type")
def pcr_index_text(w: World) -> bytes:
    """A PCR index is the text "0" instead of an integer."""
    pcrs = Map((("0", w.base.pcrs[0]), *sorted(w.base.pcrs.items())[1:]))
    return w.base.encode(entries=set_entry(w.base.fields(), "pcrs", pcrs))


@case("payload.field-type")
def pcr_value_text(w: World) -> bytes:
    """PCR0 is hex text instead of a byte string."""
    pcrs = Map(((0, w.base.pcrs[0].hex()), *sorted(w.base.pcrs.items())[1:]))
    return w.base.encode(entries=set_entry(w.base.fields(), "pcrs", pcrs))


@case("cbor.unsupported")
def timestamp_float(w: World) -> bytes:
    """timestamp is a float64 (floats never occur in a document)."""
    return w.base.encode(
        entries=set_entry(w.base.fields(), "timestamp", float(w.base.timestamp_ms))
    )


@case("cbor.unsupported")
def timestamp_tagged(w: World) -> bytes:
    """timestamp wrapped in tag 1 (epoch date/time): tags never occur inside the payload."""
    tagged = Tag(1, uint64(w.base.timestamp_ms))
    return w.base.encode(entries=set_entry(w.base.fields(), "timestamp", tagged))


@case("payload.field-value")
def digest_sha256(w: World) -> bytes:
    """digest is "SHA256"; only "SHA384" exists."""
    return w.base.encode(entries=set_entry(w.base.fields(), "digest", "SHA256"))


@case("payload.field-value")
def digest_lowercase(w: World) -> bytes:
    """digest is "sha384": the value is case-sensitive."""
    return w.base.encode(entries=set_entry(w.base.fields(), "digest", "sha384"))


@case("payload.field-value")
def timestamp_zero(w: World) -> bytes:
    """timestamp is 0 (AWS: an integer > 0), in the NSM's 8-byte form."""
    return w.base.encode(entries=set_entry(w.base.fields(), "timestamp", uint64(0)))


@case("payload.field-value")
def timestamp_negative(w: World) -> bytes:
    """timestamp is a negative integer (AWS §3.2.2.2: an integer > 0)."""
    return w.base.encode(entries=set_entry(w.base.fields(), "timestamp", -w.base.timestamp_ms))


@case(
    "cbor.invalid",
    variants=[
        variant(
            "module-id-chunked",
            cut=len(MODULE_ID) // 2,
            what="between two ASCII characters: valid",
            error=None,
        ),
        variant("module-id-split-character", cut=len(MODULE_ID) + 1, what='inside "é"'),
    ],
)
def module_id_chunks(w: World, *, cut: int, what: str) -> bytes:
    """module_id is the module id followed by "é" (c3 a9), written as an indefinite-length text
    string of two chunks whose boundary falls {what}; RFC 8949 §3.2.3: each chunk must be
    valid UTF-8 on its own."""
    text = (MODULE_ID + "é").encode()
    # Shortest heads of major type 3 (text), so that only the chunk boundary is in question.
    chunks = b"".join(
        (bytes((0x60 + len(c),)) if len(c) < 24 else bytes((0x78, len(c)))) + c
        for c in (text[:cut], text[cut:])
    )
    return w.base.encode(
        entries=set_entry(w.base.fields(), "module_id", Raw(b"\x7f" + chunks + b"\xff"))
    )


@case("payload.field-size")
def module_id_empty(w: World) -> bytes:
    """module_id is the empty text string (AWS: length != 0)."""
    return w.base.encode(entries=set_entry(w.base.fields(), "module_id", ""))


@case(
    "payload.field-size",
    variants=[variant(f"pcr-size-{size}", size=size) for size in (0, 47, 96)],
)
def pcr_size(w: World, *, size: int) -> bytes:
    """PCR5 is {size} bytes (AWS: 32, 48 or 64)."""
    return replace(w.base, pcrs={**w.base.pcrs, 5: filler(f"pcr-size-{size}", size)}).encode()


@case(
    "payload.field-value",
    variants=[
        variant("pcr-index-32", index=32, what="32 (the NSM has PCRs 0-31)"),
        variant("pcr-index-minus-1", index=-1, what="-1"),
    ],
)
def pcr_index(w: World, *, index: int, what: str) -> bytes:
    """A PCR with index {what}."""
    pcrs = Map(tuple({**w.base.pcrs, index: bytes(48)}.items()))
    return w.base.encode(entries=set_entry(w.base.fields(), "pcrs", pcrs))


@case("payload.field-size")
def pcrs_empty(w: World) -> bytes:
    """pcrs is the empty map (AWS: 1 to 32 entries)."""
    return replace(w.base, pcrs={}).encode()


@case("payload.field-size")
def cabundle_empty(w: World) -> bytes:
    """cabundle is the empty array (AWS: length > 0)."""
    return replace(w.base, cabundle=()).encode()


@case("payload.field-size")
def certificate_empty(w: World) -> bytes:
    """certificate is the empty byte string (AWS: 1..1024 bytes)."""
    return replace(w.base, leaf_der=b"").encode()


@case("payload.field-size")
def certificate_1025_bytes(w: World) -> bytes:
    """The leaf certificate is 1025 bytes, one over AWS's maximum; it is otherwise valid and
    correctly signed (padded with a non-critical private extension)."""
    return replace(w.base, leaf_der=der(big_leaf(w, 1025))).encode()


@case("payload.field-size")
def cabundle_entry_1025_bytes(w: World) -> bytes:
    """cabundle[3] (the instance CA) is 1025 bytes, one over AWS's maximum; otherwise valid."""
    big_instance = padded_to(
        1025,
        lambda n, variant: reissue(
            w.pki.instance.certificate,
            label="instance-size-1025",
            issuer=w.pki.zonal.certificate,
            issuer_key=w.pki.zonal.key,
            append=[padding(n, variant)],
        ),
    )
    return w.with_bundle((3, big_instance)).encode()


@case("payload.field-size")
def cabundle_entry_empty(w: World) -> bytes:
    """cabundle[1] is the empty byte string (AWS: 1..1024 bytes)."""
    cabundle = w.base.cabundle
    return replace(w.base, cabundle=(cabundle[0], b"", *cabundle[2:])).encode()


@case(
    "payload.field-size",
    variants=[
        variant(f"{key.replace('_', '-')}-1025-bytes", key=key)
        for key in ("public_key", "user_data", "nonce")
    ],
)
def optional_1025_bytes(w: World, *, key: str) -> bytes:
    """{key} is 1025 bytes, one over the CDDL's 1024."""
    return w.base.with_optional(key, filler(f"{key}-1025", 1025)).encode()


@case("document.nitrotpm", policy=policy_for(_TPM_PCRS))
def nitrotpm_document(w: World) -> bytes:
    """A NitroTPM (EC2 instance) document: nitrotpm_pcrs (24 registers) instead of pcrs,
    otherwise valid and signed. The enclave verifier must refuse the kind."""
    entries = [
        (k, v)
        for k, v in set_entry(w.base.fields(), "module_id", f"{INSTANCE_ID}-tpm0000000000000000")
        if k != "pcrs"
    ]
    entries.insert(3, ("nitrotpm_pcrs", Map(tuple(sorted(_TPM_PCRS.items())))))
    return w.base.encode(entries=entries)


@case("cbor.trailing-bytes")
def trailing_bytes(w: World) -> bytes:
    """The payload byte string holds the map followed by an extra 0x00, signed as such."""
    return w.base.encode(payload=w.payload + b"\x00")


@case("cbor.truncated")
def truncated_map(w: World) -> bytes:
    """The indefinite payload map lacks its final break byte, signed as such."""
    indefinite = replace(w.base, indefinite=True)
    return indefinite.encode(payload=indefinite.payload()[:-1])
