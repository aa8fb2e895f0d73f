"""`nitrotpm/`: NitroTPM (EC2 instance) documents, verified as their own kind.

Every case here is verified with `kind="nitrotpm"` (the policy's `kind`), whose policy checks
the `nitrotpm_pcrs` registers. The baseline has the shape of the real ones (vectors/real,
`nitrotpm_*`): module_id `<instance>-tpm0000000000000000` and a leaf named after it, an
indefinite-length payload map, 24 registers of 48 bytes in place of `pcrs`, a 65-byte public key,
a nonce and no user_data. The enclave verifier's refusal of such a document is
`payload/nitrotpm-document`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from attestation.builder import Map
from vectors.cases import case, variant
from vectors.cases._world import (
    INSTANCE_ID,
    LEAF_START,
    MAX_AGE,
    TIMESTAMP,
    Doc,
    World,
    filler,
    nitrotpm_pcrs,
    sha384,
)
from vectors.corpus import PolicySpec

MODULE_ID = f"{INSTANCE_ID}-tpm0000000000000000"
REGISTERS = nitrotpm_pcrs()
NONCE = filler("nitrotpm/nonce", 10)
# An uncompressed P-256 point's size, like the real documents' public_key (65 bytes).
PUBLIC_KEY = b"\x04" + filler("nitrotpm/public-key", 64)
#: PCR4 and PCR12 identify an attestable AMI's boot, PCR7 its Secure Boot policy (AWS EC2 User
#: Guide, "NitroTPM Attestation Document contents"); PCR0 the firmware.
CHECKED = (0, 4, 7, 12)


def _policy(
    registers: dict[int, bytes] = REGISTERS,
    *,
    user_data: bytes | None = None,
    public_key: bytes | None = None,
) -> PolicySpec:
    """The NitroTPM cases' policy: PCR0, 4, 7, 12 of `registers`, the nonce, 5 min freshness."""
    return PolicySpec(
        pcrs={index: registers[index] for index in CHECKED},
        nonce=NONCE,
        user_data=user_data,
        public_key=public_key,
        kind="nitrotpm",
    )


POLICY = _policy()


def _base(w: World) -> Doc:
    """The baseline NitroTPM document's parts (its own leaf, named after the TPM module)."""
    leaf = w.pki.issue_leaf(module_id=MODULE_ID, not_before=LEAF_START)
    return replace(
        w.base,
        leaf_der=leaf.der,
        signer=leaf.key,
        module_id=MODULE_ID,
        pcrs=REGISTERS,
        public_key=PUBLIC_KEY,
        nonce=NONCE,
        indefinite=True,
    )


_OWN = object()


def _entries(doc: Doc, registers: object = _OWN) -> list[tuple[object, object]]:
    """`doc`'s payload entries with `nitrotpm_pcrs` (in `pcrs`' place) holding `registers`
    (any CBOR value; by default the document's own, in index order)."""
    value = Map(tuple(sorted(doc.pcrs.items()))) if registers is _OWN else registers
    return [("nitrotpm_pcrs", value) if k == "pcrs" else (k, v) for k, v in doc.fields()]


def _encode(
    w: World,
    *,
    registers: object = _OWN,
    pcrs: dict[int, bytes] = REGISTERS,
    nonce: bytes | None = NONCE,
    indefinite: bool = True,
) -> bytes:
    doc = replace(_base(w), pcrs=pcrs, nonce=nonce, indefinite=indefinite)
    return doc.encode(entries=_entries(doc, registers))


@case(None, policy=POLICY)
def valid(w: World) -> bytes:
    """A NitroTPM document shaped like the real ones (indefinite map, 24 registers), verified
    as a NitroTPM document under a policy on PCR0, PCR4, PCR7, PCR12 and the nonce."""
    return _encode(w)


@case(None, policy=POLICY)
def valid_definite_map(w: World) -> bytes:
    """The baseline with a definite-length payload map: both forms are valid."""
    return _encode(w, indefinite=False)


_ZERO = {index: bytes(48) for index in range(24)}


@case(None, policy=_policy(_ZERO))
def zero_registers_not_debug(w: World) -> bytes:
    """Every register all zero and a policy expecting exactly that: valid. Debug mode (PCR0
    all zero) is an enclave's notion; a NitroTPM document is never refused as debug."""
    return _encode(w, pcrs=_ZERO)


@case("document.nitro-enclave", policy=POLICY)
def enclave_document(w: World) -> bytes:
    """The baseline enclave document (pcrs, not nitrotpm_pcrs), valid as an enclave document,
    given to a NitroTPM verification: the wrong kind."""
    return w.document


@case("payload.unknown-field", policy=POLICY)
def both_register_maps(w: World) -> bytes:
    """Both nitrotpm_pcrs and pcrs: neither kind of document."""
    doc = _base(w)
    return doc.encode(entries=[*_entries(doc), ("pcrs", Map(tuple(sorted(doc.pcrs.items()))))])


@case(
    "payload.field-value",
    policy=POLICY,
    variants=[variant("register-index-24", index=24), variant("register-index-31", index=31)],
)
def register_index(w: World, *, index: int) -> bytes:
    """A 25th register, index {index}: a NitroTPM document has PCR0..PCR23 only."""
    registers = {**REGISTERS, index: sha384(f"nitrotpm/{index}")}
    return _encode(w, registers=Map(tuple(sorted(registers.items()))))


@case("payload.field-size", policy=POLICY)
def registers_empty(w: World) -> bytes:
    """nitrotpm_pcrs is an empty map."""
    return _encode(w, registers=Map(()))


@case("payload.field-size", policy=POLICY)
def register_20_bytes(w: World) -> bytes:
    """Register 5 is 20 bytes (a SHA-1 bank's size); registers are 32, 48 or 64 bytes."""
    registers = {**REGISTERS, 5: REGISTERS[5][:20]}
    return _encode(w, registers=Map(tuple(sorted(registers.items()))))


@case("payload.field-type", policy=POLICY)
def registers_array(w: World) -> bytes:
    """nitrotpm_pcrs is an array of the 24 values instead of a map."""
    return _encode(w, registers=[value for _, value in sorted(REGISTERS.items())])


@case("payload.missing-field", policy=POLICY)
def registers_null(w: World) -> bytes:
    """nitrotpm_pcrs is null (and there is no pcrs): no registers at all."""
    return _encode(w, registers=None)


@case("signature.invalid", policy=POLICY)
def signature_bit_flip(w: World) -> bytes:
    """The baseline with one bit of the signature's s flipped."""
    document = bytearray(_encode(w))
    document[-1] ^= 0x01
    return bytes(document)


@case("policy.pcr-mismatch", policy=_policy({**REGISTERS, 7: sha384("nitrotpm/other-7")}))
def register_mismatch(w: World) -> bytes:
    """The policy expects another PCR7 (Secure Boot policy) than the document's."""
    return _encode(w)


@case("policy.pcr-mismatch", policy=POLICY)
def register_absent(w: World) -> bytes:
    """The document carries registers 0..11 and 13..23: PCR12, which the policy checks, is
    absent."""
    registers = {index: value for index, value in REGISTERS.items() if index != 12}
    return _encode(w, registers=Map(tuple(sorted(registers.items()))))


@case(
    "policy.nonce-mismatch",
    policy=POLICY,
    variants=[
        variant("nonce-other", nonce=filler("nitrotpm/other-nonce", 10), what="another nonce"),
        variant("nonce-null", nonce=None, what="no nonce (null)"),
    ],
)
def nonce(w: World, *, nonce: bytes | None, what: str) -> bytes:
    """The document carries {what} where the policy expects the verifier's nonce."""
    return _encode(w, nonce=nonce)


@case("policy.user-data-mismatch", policy=_policy(user_data=filler("nitrotpm/user-data", 32)))
def user_data_absent(w: World) -> bytes:
    """The policy expects user_data; the document's is null."""
    return _encode(w)


@case("policy.public-key-mismatch", policy=_policy(public_key=b"\x04" + bytes(64)))
def public_key_other(w: World) -> bytes:
    """The policy expects another public_key than the document's 65 bytes."""
    return _encode(w)


@case("policy.stale", policy=POLICY, at=TIMESTAMP + MAX_AGE + timedelta(milliseconds=1))
def stale(w: World) -> bytes:
    """Verified 5 minutes and 1 ms after its timestamp under the 5-minute freshness bound."""
    return _encode(w)


@case("policy.future", policy=POLICY, at=TIMESTAMP - timedelta(seconds=61))
def future(w: World) -> bytes:
    """Verified 61 s before its timestamp, past the allowed 60 s of clock skew."""
    return _encode(w)
