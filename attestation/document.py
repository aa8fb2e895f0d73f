"""Parse an attestation document (COSE_Sign1 over a CBOR map) without trusting any of it.

`AttestationDocument.parse(data)` checks syntax only: nothing here is authenticated.
`Verifier.verify` turns one into a `VerifiedDocument` (defined here too, so that policies and the
verifier both depend on this module and not on each other).

Envelope (RFC 9052 COSE_Sign1; AWS `attestation_process.md` §3.1, User Guide "COSE and CBOR"):

- optionally wrapped in tag 18 (AWS shows it tagged; no real document is), an array of exactly 4.
  The tag's head may take any length form (`d2`, `d8 12`, `d9 00 12`, ...), like every other
  head (`_cbor`); any other tag, or a second tag, is refused;
- protected header: a byte string whose content decodes to exactly `{1: -35}` (alg ES384), no
  other label (so no `crit` either); its bytes are kept as received for the signature;
- unprotected header: must be the **empty** map. AWS always sends `{}`; it is not signed, so
  anything in it is attacker-controlled, and RFC 9052 §3 forbids repeating `alg` there. Accepting
  content would only widen the set of byte strings that verify without any use for it;
- payload: a byte string of 1..16384 bytes (AWS CDDL); signature: 96 bytes (P-384 `r || s`; AWS's
  "32/48/64" in §3.1 is wrong for ES384).

Payload map: definite or indefinite, any key order, no duplicate keys, no unknown keys. Where AWS
contradicts itself (`attestation_process.md` §2.2 CDDL vs §3.2.2.2, as reported in
aws/aws-nitro-enclaves-nsm-api#52) this module chooses:

- `public_key`, `user_data`, `nonce`: byte strings of **0..1024** bytes (the CDDL and the User
  Guide), or `null`/absent. Not §3.2.2.2's `public_key` ∈ [1, 1024]: a real 2021 document carries an
  empty `public_key`, and not its [0, 512] for user_data/nonce: the NSM accepts 1024 and AWS's own
  device test sends 1024. An empty byte string stays distinct from absent.
- `null` means absent for the optional fields (the NSM encodes `None` as `null`, contradicting
  §3.2.2.1 "No field content can be null"); a mandatory field set to `null` is missing.
- mandatory: `module_id` (non-empty text), `digest` (`"SHA384"`), `timestamp` (uint > 0, ms since
  the epoch, any integer length form), `pcrs` (1..32 entries, index 0..31, value 32/48/64 bytes),
  `certificate` (1..1024 bytes), `cabundle` (1+ byte strings of 1..1024 bytes each).
- a payload with `nitrotpm_pcrs` instead of `pcrs` is a NitroTPM (EC2 instance) document: it parses
  as `kind == "nitrotpm"`, with the same rules except that its registers are indexed 0..23 (a
  TPM's 24 PCRs; every real NitroTPM document carries exactly those). The enclave verifier
  refuses it with `document.nitrotpm`; `Verifier.verify(..., kind="nitrotpm")` verifies it. A
  payload with both keys (whatever their values, `null` included) is refused.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from cryptography import x509

from attestation._cbor import CborError, decode, tag_head
from attestation._cose_writer import sig_structure
from attestation._output import certificate_json, hex_or_none, iso_time
from attestation._payload_fast import NsmLayout, fast_envelope, fast_payload, nsm_layout
from attestation.errors import MalformedDocument
from nsm_attestation_cli import dump

__all__ = [
    "MAX_DOCUMENT_SIZE",
    "MAX_FIELD_SIZE",
    "MAX_PAYLOAD_SIZE",
    "AttestationDocument",
    "DocumentKind",
    "VerifiedDocument",
]

# AWS CDDL: `payload: bstr .size (1..16384)`.
MAX_PAYLOAD_SIZE = 16384
# The payload plus the rest of the envelope (tag, array head, 4-byte protected header, empty map,
# 96-byte signature, string heads): 512 bytes is several times what that needs. The NSM itself
# returns at most 12288 bytes (NSM_RESPONSE_MAX_SIZE in Linux drivers/misc/nsm.c), so this
# never refuses a real document.
MAX_DOCUMENT_SIZE = MAX_PAYLOAD_SIZE + 512
# AWS CDDL: `user_data = bytes .size (0..1024)`, used for public_key, user_data and nonce.
MAX_FIELD_SIZE = 1024
# AWS CDDL: `cert = bytes .size (1..1024)` for `certificate` and each `cabundle` entry.
MAX_CERT_SIZE = 1024
# AWS CDDL: `index = 0..31`, `pcrs: { + index => pcr }`, `pcr = bytes .size (32/48/64)`.
MAX_PCRS = 32
# A NitroTPM document carries the TPM's PCRs: 24 registers, 0..23 (TPM PC Client profile; AWS EC2
# User Guide "NitroTPM Attestation Document contents" lists PCR0..PCR23).
NITROTPM_PCRS = 24
PCR_SIZES = frozenset({32, 48, 64})
_PCR_INDICES = frozenset(range(MAX_PCRS))
# RFC 9052: tag 18 is COSE_Sign1; label 1 is alg, -35 is ES384.
_COSE_SIGN1_TAG = 18
_PROTECTED_ES384 = {1: -35}
_PROTECTED_ES384_BYTES = b"\xa1\x01\x38\x22"  # {1: -35}, shortest form
# P-384 ECDSA in COSE form: r || s, 48 bytes each (RFC 9053 §2.1).
SIGNATURE_SIZE = 96

DocumentKind = Literal["nitro-enclave", "nitrotpm"]

_MANDATORY = ("module_id", "digest", "timestamp", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
_KNOWN = frozenset((*_MANDATORY, *_OPTIONAL, "pcrs", "nitrotpm_pcrs"))
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
# The largest `timestamp` that is still a datetime (year 9999): later ones are refused as out of
# range rather than overflowing when `timestamp` is read.
_MAX_TIMESTAMP_MS = (_dt.datetime.max.replace(tzinfo=_dt.UTC) - _EPOCH) // _dt.timedelta(
    milliseconds=1
)


def _malformed(code: str, message: str) -> MalformedDocument:
    return MalformedDocument(message, code=code)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationDocument:
    """A syntactically valid attestation document. **Not verified**: nothing here is trusted."""

    kind: DocumentKind
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    protected: bytes
    """The protected header bytes exactly as received."""
    payload: bytes
    """The payload bytes exactly as received (the content of the payload byte string)."""
    signature: bytes
    tagged: bool
    raw: bytes

    def __repr__(self) -> str:
        # Values in hex, certificates and raw bytes by size: a repr to read, not to re-parse.
        return (
            f"AttestationDocument(kind={self.kind!r}, module_id={self.module_id!r}, "
            f"timestamp={iso_time(self.timestamp)!r}, digest={self.digest!r}, "
            f"pcrs={_hex_pcrs(self.pcrs)}, public_key={_hex_repr(self.public_key)}, "
            f"user_data={_hex_repr(self.user_data)}, nonce={_hex_repr(self.nonce)}, "
            f"certificates={1 + len(self.cabundle)}, tagged={self.tagged}, "
            f"raw=<{len(self.raw)} bytes>)  # NOT VERIFIED"
        )

    @property
    def timestamp(self) -> _dt.datetime:
        """The document's own `timestamp` as an aware UTC datetime (parse checked the range)."""
        return _EPOCH + _dt.timedelta(milliseconds=self.timestamp_ms)

    @property
    def is_debug(self) -> bool:
        """PCR0 all zero: an enclave started in debug mode (User Guide: "How to get an
        enclave's attestation document")."""
        pcr0 = self.pcrs.get(0)
        return pcr0 is not None and not any(pcr0)

    def sig_structure(self) -> bytes:
        """`Sig_structure` (RFC 9052 §4.4) over the protected header and payload as received."""
        return sig_structure(self.payload, protected=self.protected)

    @classmethod
    def parse(cls, data: bytes) -> AttestationDocument:
        """Parse `data` (raw CBOR bytes) or raise `MalformedDocument` / a subclass with a code."""
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError("attestation document must be bytes")
            data = bytes(data)
        if not data or len(data) > MAX_DOCUMENT_SIZE:
            raise _malformed("document.size", f"document is {len(data)} bytes")
        if data[0] == 0x84:  # an untagged array of 4, as the NSM writes it
            tagged, body = False, data
        else:
            try:
                # Tag 18 in any head form (`d2`, `d8 12`, ...): the decoder's rule for every head.
                tag, start = tag_head(data)
                tagged = tag == _COSE_SIGN1_TAG
                body = data[start:]
                if (tag is not None and not tagged) or tag_head(body)[0] is not None:
                    raise _malformed(
                        "envelope.tag", "only tag 18 (COSE_Sign1) may wrap the envelope"
                    )
            except CborError as exc:
                raise _malformed(exc.code, f"not an attestation document: envelope: {exc}") from exc
        envelope = _decode(body, fast_envelope, "not an attestation document: envelope")
        if not isinstance(envelope, list):
            raise _malformed(
                "envelope.not-array", "not an attestation document: COSE_Sign1 must be a CBOR array"
            )
        if len(envelope) != 4:
            raise _malformed("envelope.wrong-length", f"COSE_Sign1 has {len(envelope)} elements")
        protected, unprotected, payload, signature = envelope
        if not (
            type(protected) is bytes and type(payload) is bytes and type(signature) is bytes
        ) or not isinstance(unprotected, dict):
            raise _malformed("envelope.field-type", "COSE_Sign1 element has the wrong type")
        # The header every NSM writes is compared as bytes first; any other encoding is decoded
        # and must still mean exactly {1: -35} (e.g. a non-shortest integer form).
        if protected == _PROTECTED_ES384_BYTES:
            header: object = _PROTECTED_ES384
        else:
            try:
                header = decode(protected)
            except CborError as exc:
                raise _malformed("envelope.protected-header", f"protected header: {exc}") from exc
        # Compare types too: {1: -35} == {True: -35} in Python, but decode never yields bool keys.
        if not (isinstance(header, dict) and header == _PROTECTED_ES384):
            raise _malformed("envelope.protected-header", "protected header must be {1: -35}")
        if unprotected:
            raise _malformed("envelope.unprotected-header", "unprotected header must be empty")
        if len(signature) != SIGNATURE_SIZE:
            raise _malformed("envelope.signature-size", f"signature is {len(signature)} bytes")
        if not 1 <= len(payload) <= MAX_PAYLOAD_SIZE:
            raise _malformed("envelope.payload-size", f"payload is {len(payload)} bytes")
        layout = nsm_layout(payload)
        if layout is not None:
            document = cls._from_layout(layout, protected, payload, signature, tagged, data)
            if document is not None:
                return document
        fields = _decode(payload, fast_payload, "payload")
        if not isinstance(fields, dict):
            raise _malformed("payload.not-map", "payload must be a CBOR map")
        return cls._from_fields(fields, protected, payload, signature, tagged, data)

    @classmethod
    def _from_layout(
        cls,
        layout: NsmLayout,
        protected: bytes,
        payload: bytes,
        signature: bytes,
        tagged: bool,
        raw: bytes,
    ) -> AttestationDocument | None:
        """`_from_fields` for a payload in the NSM's own layout, or None to let it decide.

        The layout already fixes the keys, their order, `digest`, the value types and the
        register indices (0..23); what is left are the sizes and ranges below. Anything outside
        them returns None, and `_from_fields` (via the general decoder) names the error.
        """
        module_id, timestamp, tpm, pcrs, size, certificate, bundle, public_key, user_data, nonce = (
            layout
        )
        if not (
            module_id
            and 0 < timestamp <= _MAX_TIMESTAMP_MS
            and pcrs
            and size in PCR_SIZES
            and 0 < len(certificate) <= MAX_CERT_SIZE
            and bundle
            and min(map(len, bundle)) > 0  # type: ignore[arg-type]
            and max(map(len, bundle)) <= MAX_CERT_SIZE  # type: ignore[arg-type]
            and (public_key is None or len(public_key) <= MAX_FIELD_SIZE)  # type: ignore[arg-type]
            and (user_data is None or len(user_data) <= MAX_FIELD_SIZE)  # type: ignore[arg-type]
            and (nonce is None or len(nonce) <= MAX_FIELD_SIZE)  # type: ignore[arg-type]
        ):
            return None
        return cls(
            kind="nitrotpm" if tpm else "nitro-enclave",
            module_id=module_id,
            digest="SHA384",
            timestamp_ms=timestamp,
            pcrs=MappingProxyType(pcrs),  # type: ignore[arg-type]
            certificate=certificate,
            cabundle=tuple(bundle),  # type: ignore[arg-type]
            public_key=public_key,  # type: ignore[arg-type]
            user_data=user_data,  # type: ignore[arg-type]
            nonce=nonce,  # type: ignore[arg-type]
            protected=protected,
            payload=payload,
            signature=signature,
            tagged=tagged,
            raw=raw,
        )

    @classmethod
    def _from_fields(
        cls,
        fields: dict[object, object],
        protected: bytes,
        payload: bytes,
        signature: bytes,
        tagged: bool,
        raw: bytes,
    ) -> AttestationDocument:
        unknown = () if _KNOWN.issuperset(fields) else fields.keys() - _KNOWN
        if unknown:
            shown = ", ".join(sorted(repr(k) for k in unknown))
            raise _malformed("payload.unknown-field", f"unknown payload keys: {shown}")
        for name in _MANDATORY:
            if fields.get(name) is None:
                raise _malformed("payload.missing-field", f"{name} is missing")

        module_id = fields["module_id"]
        if type(module_id) is not str:
            raise _malformed("payload.field-type", "module_id must be a text string")
        if not module_id:
            raise _malformed("payload.field-size", "module_id is empty")

        digest = fields["digest"]
        if type(digest) is not str:
            raise _malformed("payload.field-type", "digest must be a text string")
        if digest != "SHA384":
            raise _malformed("payload.field-value", f"digest {digest!r} is not SHA384")

        timestamp = fields["timestamp"]
        if type(timestamp) is not int:
            raise _malformed("payload.field-type", "timestamp must be an unsigned integer")
        if timestamp <= 0:
            raise _malformed("payload.field-value", "timestamp must be > 0")
        if timestamp > _MAX_TIMESTAMP_MS:
            raise _malformed("payload.field-value", "timestamp out of range")

        tpm_pcrs = fields.get("nitrotpm_pcrs")
        enclave_pcrs = fields.get("pcrs")
        kind: DocumentKind
        # The key decides the kind, whatever its value: an enclave document that also names
        # `nitrotpm_pcrs` (even as null) is neither kind and is refused.
        if "pcrs" in fields and "nitrotpm_pcrs" in fields:
            raise _malformed("payload.unknown-field", "both pcrs and nitrotpm_pcrs present")
        if enclave_pcrs is not None:
            kind, pcrs = "nitro-enclave", _pcrs(enclave_pcrs, "pcrs")
        elif tpm_pcrs is not None:
            kind, pcrs = "nitrotpm", _pcrs(tpm_pcrs, "nitrotpm_pcrs")
            if max(pcrs) >= NITROTPM_PCRS:
                raise _malformed(
                    "payload.field-value", f"nitrotpm_pcrs index {max(pcrs)} outside 0..23"
                )
        else:
            raise _malformed("payload.missing-field", "pcrs is missing")

        certificate = _cert(fields["certificate"], "certificate")
        bundle = fields["cabundle"]
        if type(bundle) is not list:
            raise _malformed("payload.field-type", "cabundle must be an array")
        if not bundle:
            raise _malformed("payload.field-size", "cabundle is empty")
        cabundle = tuple(_cert(c, f"cabundle[{i}]") for i, c in enumerate(bundle))

        return cls(
            kind=kind,
            module_id=module_id,
            digest=digest,
            timestamp_ms=timestamp,
            pcrs=pcrs,
            certificate=certificate,
            cabundle=cabundle,
            public_key=_optional(fields.get("public_key"), "public_key"),
            user_data=_optional(fields.get("user_data"), "user_data"),
            nonce=_optional(fields.get("nonce"), "nonce"),
            protected=protected,
            payload=payload,
            signature=signature,
            tagged=tagged,
            raw=raw,
        )


def _hex_repr(value: bytes | None) -> str:
    return "None" if value is None else f"'{value.hex()}'"


def _hex_pcrs(pcrs: Mapping[int, bytes]) -> str:
    return "{" + ", ".join(f"{i}: '{v.hex()}'" for i, v in sorted(pcrs.items())) + "}"


def _decode(data: bytes, fast: Callable[[bytes], object | None], what: str) -> object:
    """`data` decoded: the NSM's exact forms by the fast path, which declines anything else to
    the strict decoder (same result either way: see _payload_fast.py)."""
    value = fast(data)
    if value is None:
        try:
            value = decode(data)
        except CborError as exc:
            raise _malformed(exc.code, f"{what}: {exc}") from exc
    return value


def _pcrs(value: object, name: str) -> Mapping[int, bytes]:
    if not isinstance(value, dict):
        raise _malformed("payload.field-type", f"{name} must be a map")
    if not 1 <= len(value) <= MAX_PCRS:
        raise _malformed("payload.field-size", f"{name} has {len(value)} entries")
    # Fast path: every index one of 0..31 (ints only: the decoder never yields bool keys, and
    # `_PCR_INDICES` holds ints) and every value a byte string of a PCR size. Anything else
    # goes through the loop below to name the first offending entry.
    if _PCR_INDICES.issuperset(value) and all(
        type(pcr) is bytes and len(pcr) in PCR_SIZES for pcr in value.values()
    ):
        return MappingProxyType(value)
    for index, pcr in value.items():
        if type(index) is not int:
            raise _malformed("payload.field-type", f"{name} index must be an integer")
        if not 0 <= index < MAX_PCRS:
            raise _malformed("payload.field-value", f"{name} index {index} outside 0..31")
        if type(pcr) is not bytes:
            raise _malformed("payload.field-type", f"{name}[{index}] must be a byte string")
        if len(pcr) not in PCR_SIZES:
            raise _malformed("payload.field-size", f"{name}[{index}] is {len(pcr)} bytes")
    return MappingProxyType(value)


def _cert(value: object, name: str) -> bytes:
    if type(value) is not bytes:
        raise _malformed("payload.field-type", f"{name} must be a byte string")
    if not 1 <= len(value) <= MAX_CERT_SIZE:
        raise _malformed("payload.field-size", f"{name} is {len(value)} bytes")
    return value


def _optional(value: object, name: str) -> bytes | None:
    if value is None:
        return None
    if type(value) is not bytes:
        raise _malformed("payload.field-type", f"{name} must be a byte string or null")
    if len(value) > MAX_FIELD_SIZE:
        raise _malformed("payload.field-size", f"{name} is {len(value)} bytes (max 1024)")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedDocument:
    """An attestation document whose chain, signature and policy all passed."""

    module_id: str
    timestamp: _dt.datetime
    """The document's own time (aware, UTC), millisecond precision."""
    digest: str
    pcrs: Mapping[int, bytes]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    certificates: tuple[x509.Certificate, ...]
    """The verified path, leaf first, pinned root last."""
    raw: bytes
    """The document bytes exactly as given to `verify`."""
    verified_at: _dt.datetime
    """The time the chain and the policy were judged at (`verify`'s `at`, or its clock)."""
    kind: DocumentKind = "nitro-enclave"
    """Which document this is; `pcrs` holds that kind's registers (`nitrotpm_pcrs` for
    `"nitrotpm"`: the instance's TPM, not an enclave image)."""

    @property
    def is_debug(self) -> bool:
        """PCR0 all zero (only possible if the policy allowed debug documents).

        Debug mode is an enclave's: a NitroTPM document is never a debug document.
        """
        if self.kind != "nitro-enclave":
            return False
        pcr0 = self.pcrs.get(0)
        return pcr0 is not None and not any(pcr0)

    def to_dict(self) -> dict[str, Any]:
        """The verification result as JSON values: the shape `nitro-attest verify --json` prints
        and the service returns (docs/schemas/verification.schema.json); bytes in hex, times in
        RFC 3339 UTC with milliseconds."""
        return {
            "verified": True,
            "verified_at": iso_time(self.verified_at),
            "kind": self.kind,
            "module_id": self.module_id,
            "timestamp": iso_time(self.timestamp),
            "timestamp_ms": (self.timestamp - _EPOCH) // _dt.timedelta(milliseconds=1),
            "digest": self.digest,
            "debug": self.is_debug,
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "public_key": hex_or_none(self.public_key),
            "user_data": hex_or_none(self.user_data),
            "nonce": hex_or_none(self.nonce),
            "certificates": [certificate_json(c) for c in self.certificates],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """`to_dict()` as JSON text."""
        return dump(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        return (
            f"VerifiedDocument(module_id={self.module_id!r}, "
            f"timestamp={iso_time(self.timestamp)!r}, digest={self.digest!r}, "
            f"pcrs={_hex_pcrs(self.pcrs)}, public_key={_hex_repr(self.public_key)}, "
            f"user_data={_hex_repr(self.user_data)}, nonce={_hex_repr(self.nonce)}, "
            f"certificates={[c.subject.rfc4514_string() for c in self.certificates]!r}, "
            f"verified_at={iso_time(self.verified_at)!r}, raw=<{len(self.raw)} bytes>)"
        )
