"""Test helpers for code that consumes Nitro attestation documents.

Real documents are signed by AWS and expire within hours, so tests need documents they can make
on demand. This module makes them with the synthetic PKI of `attestation.builder`: the same
byte shape as the NSM's, signed by a root that only your test trusts.

```python
from datetime import timedelta
from attestation.testing import DocumentFactory

factory = DocumentFactory.create(seed=1)
document = factory.document(nonce=b"challenge", user_data=b"hello")
# Pin `factory.root_pem` in the verifier under test and verify at `factory.timestamp`
# (or any instant inside `factory.leaf`'s three hours).
```

With hypothesis, `valid_documents(factory)` draws well-formed documents and
`broken_documents(factory)` draws documents that must be rejected.

This module imports `hypothesis`, which is a test-time dependency (the `dev` extra), not a
runtime one: import it from tests only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cbor2
from hypothesis import strategies as st

from attestation.builder import (
    PCR_LENGTH,
    SIGNATURE_LENGTH,
    CertifiedKey,
    Pki,
    build_document,
    encode_sign1,
    generate_pki,
)

__all__ = [
    "MUTATIONS",
    "DocumentFactory",
    "broken_documents",
    "default_pcrs",
    "generate_pki",
    "pcr_maps",
    "valid_documents",
]

#: AWS's CDDL caps user_data, nonce and public_key at 1024 bytes each (attestation_process.md
#: §2.2).
FIELD_MAX = 1024
#: The NSM has 32 PCRs (`max_pcrs`; AWS's nsm-check test asserts it).
MAX_PCRS = 32
#: Real documents carry PCRs 0-15, the ones locked at boot (vectors/real; AWS's nsm-check test).
BOOT_LOCKED_PCRS = 16
#: Real documents are signed up to hours into their leaf's life (vectors/real); ours 14 minutes in.
_DOCUMENT_AGE = timedelta(minutes=14)
# The factory's leaf starts one hour into the instance CA's day, like the real 2026 chain's
# leaf starts well after its instance CA.
_LEAF_OFFSET = timedelta(hours=1)

#: The mutations `broken_documents` applies, one per document.
MUTATIONS = (
    "signature_bit_flip",
    "payload_byte_flip",
    "truncation",
    "trailing_byte",
    "wrong_protected_header",
)
# Well-formed protected headers other than AWS's: ES256, ES512, an empty map, and ES384 written
# with a non-preferred (two-byte) integer head, which must not be normalized into a pass.
_WRONG_PROTECTED_HEADERS = (
    bytes.fromhex("a10126"),
    bytes.fromhex("a1013823"),
    bytes.fromhex("a0"),
    bytes.fromhex("a101390022"),
)


def default_pcrs(instance_id: str) -> dict[int, bytes]:
    """Plausible boot PCRs 0-15 of a production enclave (User Guide, "Where to get an enclave's
    measurements").

    PCR0-2 stand for image, kernel and application (non-zero, so not a debug document), PCR3
    is zero (no IAM role), PCR4 is `SHA384(0^48 || instance_id)` as AWS documents, the rest zero.
    """
    zero = bytes(PCR_LENGTH)
    pcrs = dict.fromkeys(range(BOOT_LOCKED_PCRS), zero)
    for index, label in enumerate(("image", "kernel", "application")):
        pcrs[index] = hashlib.sha384(zero + hashlib.sha384(label.encode()).digest()).digest()
    pcrs[4] = hashlib.sha384(zero + instance_id.encode()).digest()
    return pcrs


@dataclass(frozen=True)
class DocumentFactory:
    """A synthetic PKI, one leaf, and defaults for making documents quickly.

    Build one with `DocumentFactory.create`. Every document is signed by `leaf` and carries
    `pki.cabundle`; pin `root_pem` in the verifier under test.
    """

    pki: Pki
    leaf: CertifiedKey
    module_id: str
    timestamp: datetime
    """The default document time: inside the leaf's validity, so verify at this instant."""

    @classmethod
    def create(
        cls,
        *,
        seed: int | None = 0,
        not_before: datetime | None = None,
        region: str = "us-east-1",
        instance_id: str = "i-0123456789abcdef0",
        enclave_id: str = "0123456789abcdef",
    ) -> DocumentFactory:
        """A factory over a PKI from `generate_pki(seed=..., not_before=...)`.

        Without `not_before` the chain is valid now and documents default to the current time
        (so two factories made in the same clock hour have the same certificates but documents
        stamped differently); with it, everything including the default timestamp is fixed.
        The leaf starts an hour after the instance CA and lasts three hours.
        """
        module_id = f"{instance_id}-enc{enclave_id}"
        pki = generate_pki(seed=seed, region=region, instance_id=instance_id, not_before=not_before)
        leaf_start = pki.instance.certificate.not_valid_before_utc + _LEAF_OFFSET
        leaf = pki.issue_leaf(module_id=module_id, not_before=leaf_start)
        timestamp = datetime.now(UTC) if not_before is None else leaf_start + _DOCUMENT_AGE
        timestamp = timestamp.replace(microsecond=timestamp.microsecond // 1000 * 1000)
        return cls(pki=pki, leaf=leaf, module_id=module_id, timestamp=timestamp)

    @property
    def root_pem(self) -> bytes:
        """The synthetic root in PEM, to pin in the verifier under test."""
        return self.pki.root_pem()

    @property
    def not_before(self) -> datetime:
        """Start of the window in which documents from this factory verify."""
        return max(self.pki.not_before, self.leaf.certificate.not_valid_before_utc)

    @property
    def not_after(self) -> datetime:
        """End of the window in which documents from this factory verify."""
        return min(self.pki.not_after, self.leaf.certificate.not_valid_after_utc)

    def document(
        self,
        *,
        pcrs: Mapping[int, bytes] | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
        timestamp: datetime | None = None,
        indefinite: bool = False,
        tag18: bool = False,
        high_s: bool = False,
    ) -> bytes:
        """One signed document. `pcrs` defaults to `default_pcrs`; `timestamp` to `self.timestamp`.

        Nothing is checked against AWS's rules, so a test can also make a document that is
        stamped outside the leaf's validity or carries odd PCRs.
        """
        when = self.timestamp if timestamp is None else timestamp
        if when.tzinfo is None:
            raise ValueError("timestamp must be a timezone-aware datetime")
        return build_document(
            leaf=self.leaf,
            cabundle=self.pki.cabundle,
            module_id=self.module_id,
            timestamp_ms=_to_ms(when),
            pcrs=default_pcrs(self.pki.instance_id) if pcrs is None else pcrs,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
            indefinite=indefinite,
            tag18=tag18,
            high_s=high_s,
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_ms(when: datetime) -> int:
    # Integer arithmetic: a float timestamp can round a millisecond down.
    return (when.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)


# --- hypothesis strategies ----------------------------------------------------------------------


def pcr_maps() -> st.SearchStrategy[dict[int, bytes]]:
    """PCR maps as the NSM could send them: 1 to 32 indices in 0..31, 48 bytes each."""
    return st.dictionaries(
        st.integers(min_value=0, max_value=MAX_PCRS - 1),
        st.binary(min_size=PCR_LENGTH, max_size=PCR_LENGTH),
        min_size=1,
        max_size=MAX_PCRS,
    )


def _optional_field() -> st.SearchStrategy[bytes | None]:
    return st.none() | st.binary(max_size=FIELD_MAX)


@st.composite
def valid_documents(
    draw: st.DrawFn,
    factory: DocumentFactory,
    *,
    pcrs: st.SearchStrategy[dict[int, bytes]] | None = None,
    user_data: st.SearchStrategy[bytes | None] | None = None,
    nonce: st.SearchStrategy[bytes | None] | None = None,
    public_key: st.SearchStrategy[bytes | None] | None = None,
) -> bytes:
    """Documents that a correct verifier pinning `factory.root_pem` accepts at their timestamp.

    Draws PCRs (`pcr_maps()` by default), user_data, nonce and public_key (None or up to 1024
    bytes), a timestamp inside the chain's validity, a definite or indefinite payload map, an
    optional tag 18, and a low-S or high-S signature.
    """
    start_ms = _to_ms(factory.not_before)
    end_ms = _to_ms(factory.not_after)
    timestamp_ms = draw(st.integers(min_value=start_ms, max_value=end_ms))
    timestamp = _EPOCH + timedelta(milliseconds=timestamp_ms)
    return factory.document(
        pcrs=draw(pcrs if pcrs is not None else pcr_maps()),
        user_data=draw(user_data if user_data is not None else _optional_field()),
        nonce=draw(nonce if nonce is not None else _optional_field()),
        public_key=draw(public_key if public_key is not None else _optional_field()),
        timestamp=timestamp,
        indefinite=draw(st.booleans()),
        tag18=draw(st.booleans()),
        high_s=draw(st.booleans()),
    )


@st.composite
def broken_documents(
    draw: st.DrawFn, factory: DocumentFactory, *, mutations: Sequence[str] = MUTATIONS
) -> bytes:
    """Documents that must be rejected: a valid one with exactly one of `mutations` applied.

    Each mutation either breaks the CBOR or changes signed bytes without re-signing, so the
    result never carries a valid ES384 signature over an AWS-shaped envelope. Pass a subset of
    `MUTATIONS` to exercise one kind of damage at a time.
    """
    unknown = set(mutations) - set(MUTATIONS)
    if unknown or not mutations:
        raise ValueError(f"mutations must be a non-empty subset of {MUTATIONS}")
    document = draw(valid_documents(factory))
    mutation = draw(st.sampled_from(tuple(mutations)))
    if mutation == "signature_bit_flip":
        # The signature is the last element, so its 96 bytes end the document.
        bit = draw(st.integers(min_value=0, max_value=SIGNATURE_LENGTH * 8 - 1))
        return _flip(document, len(document) - SIGNATURE_LENGTH + bit // 8, 1 << (bit % 8))
    if mutation == "payload_byte_flip":
        payload, _ = _payload_and_signature(document)
        # The payload is followed by the signature's two-byte head (0x58 0x60) and the signature.
        start = len(document) - SIGNATURE_LENGTH - 2 - len(payload)
        offset = draw(st.integers(min_value=0, max_value=len(payload) - 1))
        mask = draw(st.integers(min_value=1, max_value=255))
        return _flip(document, start + offset, mask)
    if mutation == "truncation":
        return document[: draw(st.integers(min_value=0, max_value=len(document) - 1))]
    if mutation == "trailing_byte":
        return document + bytes([draw(st.integers(min_value=0, max_value=255))])
    protected = draw(st.sampled_from(_WRONG_PROTECTED_HEADERS))
    payload, signature = _payload_and_signature(document)
    return encode_sign1(
        payload=payload, signature=signature, protected=protected, tag18=document[0] == 0xD2
    )


def _flip(document: bytes, offset: int, mask: int) -> bytes:
    mutated = bytearray(document)
    mutated[offset] ^= mask
    return bytes(mutated)


def _payload_and_signature(document: bytes) -> tuple[bytes, bytes]:
    decoded = cbor2.loads(document)
    if isinstance(decoded, cbor2.CBORTag):
        decoded = decoded.value
    payload, signature = decoded[2], decoded[3]
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise TypeError("not a document from valid_documents")  # pragma: no cover
    return payload, signature
