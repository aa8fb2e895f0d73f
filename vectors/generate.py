"""Generate the attestation conformance corpus (`vectors/corpus/`) deterministically.

    python vectors/generate.py [--out vectors/corpus] [--check]

Everything comes from a fixed seed and fixed instants: keys are derived from the seed
(`attestation.builder.derive_key`), ECDSA signatures are deterministic (RFC 6979), serial
numbers are hashes of fixed labels, and the only key that cannot be derived (RSA) is a committed
public test key in `vectors/keys/`. Two runs therefore write byte-identical files, and `--check`
(run by CI through `tests/vectors/test_corpus.py`) fails on any difference from the committed
corpus.

Every invalid case changes exactly one thing in an otherwise valid document (where that cannot be
done, its description says what else differs), so the expected error code is the one a correct
verifier must report. The CBOR is written by hand below rather than by an encoder, because most
cases are about bytes an encoder would never produce.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtensionOID

from attestation import builder

__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "Case",
    "PolicyData",
    "build_cases",
    "build_corpus",
    "check_corpus",
    "main",
    "write_corpus",
]

FORMAT_VERSION = 1
#: Case families, in manifest order. `valid` holds the baseline shapes; valid cases that belong
#: to a topic (high-S twins, the foreign root in `cabundle[0]`) live in that topic's family.
FAMILIES = ("valid", "envelope", "payload", "chain", "signature", "policy")

DEFAULT_OUT = Path(__file__).resolve().parent / "corpus"
_KEYS_DIR = Path(__file__).resolve().parent / "keys"
_RSA_KEY_FILE = _KEYS_DIR / "rsa-leaf-test-key.pub.pem"

# --- Fixed inputs ------------------------------------------------------------------------------
# Changing any of these changes every file in the corpus; that is what the seed is for.

SEED = 3_2026
FOREIGN_SEED = 3_2027
REGION = "eu-west-1"
INSTANCE_ID = "i-0c0ffee0ddba11a57"
MODULE_ID = f"{INSTANCE_ID}-enc019a0c0ffee0c0de"
#: The instance CA's notBefore; the other CAs start earlier (builder profile).
CHAIN_START = datetime(2026, 1, 12, 6, 0, tzinfo=UTC)
#: The leaf starts two hours into the instance CA's day and lives three hours.
LEAF_START = CHAIN_START + timedelta(hours=2)
#: Real documents are signed minutes into their leaf's life (nsm.md §4.4); the odd milliseconds
#: make a verifier that truncates the timestamp to seconds visible.
TIMESTAMP = LEAF_START + timedelta(minutes=14, seconds=7, milliseconds=123)
#: Verification time of most cases: 30 s after the document, well inside every window.
AT = TIMESTAMP + timedelta(seconds=30)
#: The freshness bound of most cases' policies (the issue's `Policy` default).
MAX_AGE = timedelta(minutes=5)

ROOT_FILE = "roots/synthetic-root.pem"
_MS = timedelta(milliseconds=1)
#: AWS CDDL: `payload: bstr .size (1..16384)`.
MAX_PAYLOAD = 16384

# COSE (RFC 9052) and AWS constants, as raw CBOR.
PROTECTED = builder.PROTECTED_HEADER  # a1 01 38 22 = {1: -35}
_EMPTY_MAP = b"\xa0"
_NULL = b"\xf6"
_SCALAR_SIZE = builder.SIGNATURE_LENGTH // 2  # P-384 r and s, 48 bytes each
_P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
    "581A0DB248B0A77AECEC196ACCC52973",
    16,
)

# --- A minimal CBOR writer ----------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """Already-encoded CBOR, inserted verbatim (non-preferred forms, broken items)."""

    data: bytes


@dataclass(frozen=True)
class Tag:
    tag: int
    value: object


@dataclass(frozen=True)
class Map:
    """A map as an ordered list of pairs, so that order, duplicates and length form are chosen."""

    items: tuple[tuple[object, object], ...]
    indefinite: bool = False


@dataclass(frozen=True)
class Array:
    items: tuple[object, ...]
    indefinite: bool = False


def _head(major: int, value: int) -> bytes:
    # Preferred (shortest) serialization, RFC 8949 §4.1; other forms go through `Raw`.
    kind = major << 5
    if value < 24:
        return bytes([kind | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([kind | info]) + value.to_bytes(size, "big")
    raise ValueError("CBOR argument must fit 64 bits")


def cbor(value: object) -> bytes:
    """Encode `value`: int, bytes, str, None, bool, list, dict, or the wrappers above."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        encoded = value.encode()
        return _head(3, len(encoded)) + encoded
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, Tag):
        return _head(6, value.tag) + cbor(value.value)
    if isinstance(value, list | tuple):
        value = Array(tuple(value))
    if isinstance(value, dict):
        value = Map(tuple(value.items()))
    if isinstance(value, Array):
        body = b"".join(cbor(item) for item in value.items)
        if value.indefinite:
            return b"\x9f" + body + b"\xff"
        return _head(4, len(value.items)) + body
    if isinstance(value, Map):
        body = b"".join(cbor(k) + cbor(v) for k, v in value.items)
        if value.indefinite:
            return b"\xbf" + body + b"\xff"
        return _head(5, len(value.items)) + body
    raise TypeError(f"cannot encode {type(value).__name__}")


def _uint64(value: int) -> Raw:
    # The NSM always writes the timestamp in the 8-byte form (nsm.md §4.2).
    return Raw(b"\x1b" + value.to_bytes(8, "big"))


# --- Deterministic material ---------------------------------------------------------------------


def _sha384(label: str) -> bytes:
    return hashlib.sha384(f"nsm-attestation/vectors/v1/{label}".encode()).digest()


def _filler(label: str, size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"nsm-attestation/vectors/v1/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def _serial(label: str) -> int:
    # 127 bits, positive, non-zero: like the builder's serials but named by the case.
    digest = hashlib.sha256(f"nsm-attestation/vectors/v1/serial/{label}".encode()).digest()
    return (int.from_bytes(digest, "big") >> 129) or 1


def _ms(instant: datetime) -> int:
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // _MS


def production_pcrs(instance_id: str = INSTANCE_ID) -> dict[int, bytes]:
    """16 PCRs shaped like a production enclave's (nsm.md §4.4): 0-2 measured, 4 the instance."""
    pcrs = {index: bytes(builder.PCR_LENGTH) for index in range(16)}
    pcrs[0] = _sha384("pcr0")
    pcrs[1] = _sha384("pcr1")
    pcrs[2] = _sha384("pcr2")
    pcrs[4] = hashlib.sha384(bytes(48) + instance_id.encode()).digest()
    return pcrs


def debug_pcrs() -> dict[int, bytes]:
    """A debug-mode enclave's PCRs: all zero (AWS User Guide)."""
    return {index: bytes(builder.PCR_LENGTH) for index in range(16)}


# --- Certificates -------------------------------------------------------------------------------


def reissue(
    original: x509.Certificate,
    *,
    label: str,
    issuer: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    public_key: CertificatePublicKeyTypes | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    change: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool] | None] | None = None,
    append: Sequence[tuple[x509.ExtensionType, bool]] = (),
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
) -> x509.Certificate:
    """`original` again, with its extensions in their order, changing only what is named.

    `change` maps an extension OID to a replacement `(value, critical)` or to `None` (drop it);
    `append` adds extensions at the end. The serial number comes from `label`, so no two
    certificates in the corpus share an issuer and serial.
    """
    change = change or {}
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    for extension in original.extensions:
        if extension.oid in change:
            replacement = change[extension.oid]
            if replacement is not None:
                extensions.append(replacement)
        else:
            extensions.append((extension.value, extension.critical))
    extensions.extend(append)
    return builder.issue_certificate(
        subject=original.subject,
        public_key=public_key if public_key is not None else original.public_key(),
        issuer=issuer,
        issuer_key=issuer_key,
        not_before=not_before or original.not_valid_before_utc,
        not_after=not_after or original.not_valid_after_utc,
        ca=None,
        key_usage=None,
        extra_extensions=extensions,
        serial_number=_serial(label),
        hash_algorithm=hash_algorithm,
    )


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


_PADDING_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.99.1")  # private arc, test only


def _padding(size: int, variant: int = 0) -> tuple[x509.ExtensionType, bool]:
    # A non-critical unknown extension whose value is an OCTET STRING of `size` bytes.
    body = _filler(f"padding/{variant}", size)
    value = b"\x04\x82" + len(body).to_bytes(2, "big") + body
    return x509.UnrecognizedExtension(_PADDING_OID, value), False


def _padded_to(size: int, make: Callable[[int, int], x509.Certificate]) -> x509.Certificate:
    """`make(n, variant)` for the first padding size and variant giving exactly `size` bytes.

    The ECDSA signature's DER length varies by a byte or two with the signed content, so the
    search also varies the padding's content (the `variant`) until one signature fits.
    """
    estimate = size - len(_der(make(0, 0)))
    # Length fields grow once the padding passes 127 and 255 bytes: correct for that once.
    estimate += size - len(_der(make(estimate, 0)))
    for variant in range(64):
        for n in (estimate, estimate - 1, estimate + 1, estimate - 2, estimate + 2):
            certificate = make(n, variant)
            if len(_der(certificate)) == size:
                return certificate
    raise RuntimeError(f"cannot pad a certificate to {size} bytes")


# --- Corpus model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyData:
    """A policy as data: what `Policy(...)` takes, in a form any language can read."""

    pcrs: dict[int, bytes]
    nonce: bytes | None = None
    max_age: timedelta | None = MAX_AGE
    allow_debug: bool = False
    user_data: bytes | None = None
    public_key: bytes | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "pcrs": {str(index): value.hex() for index, value in sorted(self.pcrs.items())},
            "nonce": None if self.nonce is None else self.nonce.hex(),
            "max_age_ms": None if self.max_age is None else self.max_age // _MS,
            "allow_debug": self.allow_debug,
            "user_data": None if self.user_data is None else self.user_data.hex(),
            "public_key": None if self.public_key is None else self.public_key.hex(),
        }


def _policy_for(pcrs: dict[int, bytes]) -> PolicyData:
    # Policies check PCR0-2, the enclave image (AWS User Guide), unless a case says otherwise.
    chosen: dict[int, bytes] = {index: pcrs[index] for index in (0, 1, 2) if index in pcrs}
    return PolicyData(pcrs=chosen)


DEFAULT_POLICY = _policy_for(production_pcrs())


@dataclass(frozen=True)
class Case:
    id: str
    description: str
    document: bytes
    error_code: str | None
    """None when the document must verify."""
    at: datetime = AT
    roots: tuple[str, ...] = (ROOT_FILE,)
    policy: PolicyData = DEFAULT_POLICY

    @property
    def family(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def path(self) -> str:
        return f"{self.id}.cbor"

    def to_json(self) -> dict[str, object]:
        expected: dict[str, object] = {"valid": self.error_code is None}
        if self.error_code is not None:
            expected["error_code"] = self.error_code
        return {
            "id": self.id,
            "family": self.family,
            "description": self.description,
            "document": self.path,
            "document_sha256": hashlib.sha256(self.document).hexdigest(),
            "at": _iso(self.at),
            "roots": list(self.roots),
            "policy": self.policy.to_json(),
            "expected": expected,
        }


def _iso(instant: datetime) -> str:
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# --- Documents ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    """One document's parts, before encoding; cases change one part and call `encode`."""

    leaf_der: bytes
    cabundle: tuple[bytes, ...]
    signer: ec.EllipticCurvePrivateKey
    timestamp_ms: int = _ms(TIMESTAMP)
    pcrs: dict[int, bytes] = field(default_factory=production_pcrs)
    module_id: str = MODULE_ID
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    indefinite: bool = False

    def fields(self) -> list[tuple[object, object]]:
        """The nine payload entries in the NSM's order (nsm.md §4.2)."""
        return [
            ("module_id", self.module_id),
            ("digest", "SHA384"),
            ("timestamp", _uint64(self.timestamp_ms)),
            ("pcrs", Map(tuple(sorted(self.pcrs.items())))),
            ("certificate", self.leaf_der),
            ("cabundle", list(self.cabundle)),
            ("public_key", self.public_key),
            ("user_data", self.user_data),
            ("nonce", self.nonce),
        ]

    def payload(self, entries: Sequence[tuple[object, object]] | None = None) -> bytes:
        return cbor(Map(tuple(self.fields() if entries is None else entries), self.indefinite))

    def encode(
        self,
        *,
        entries: Sequence[tuple[object, object]] | None = None,
        payload: bytes | None = None,
        tag18: bool = False,
        high_s: bool | None = None,
    ) -> bytes:
        body = self.payload(entries) if payload is None else payload
        return envelope(body, sign(body, self.signer, high_s=high_s), tag18=tag18)


def sign(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    protected: bytes = PROTECTED,
    high_s: bool | None = None,
    context: str = "Signature1",
    external_aad: bytes = b"",
) -> bytes:
    """Raw `r || s` (48 bytes each) over the COSE Sig_structure, deterministic (RFC 6979).

    A P-256 key's r and s are left-padded to 48 bytes; `high_s` applies to P-384 keys only.
    """
    to_sign = cbor([context, protected, external_aad, payload])
    # Our hand-written Sig_structure must be the builder's (RFC 9052 §4.4), byte for byte.
    standard = context == "Signature1" and not external_aad
    if standard and to_sign != builder.sig_structure(payload, protected=protected):
        raise AssertionError("Sig_structure differs from attestation.builder's")
    r, s = utils.decode_dss_signature(
        key.sign(to_sign, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    )
    if high_s is not None and (s > _P384_ORDER // 2) != high_s:
        s = _P384_ORDER - s
    return r.to_bytes(_SCALAR_SIZE, "big") + s.to_bytes(_SCALAR_SIZE, "big")


def envelope(
    payload: object,
    signature: object,
    *,
    protected: object = PROTECTED,
    unprotected: object = Raw(_EMPTY_MAP),
    tag18: bool = False,
) -> bytes:
    """COSE_Sign1 `[protected, unprotected, payload, signature]`, untagged like the NSM's.

    Every part is any CBOR value (see `cbor`), so that envelopes with wrong types can be built.
    """
    body = cbor([protected, unprotected, payload, signature])
    return cbor(Tag(18, Raw(body))) if tag18 else body


def _with_optional(doc: Doc, key: str, value: bytes) -> Doc:
    if key == "public_key":
        return replace(doc, public_key=value)
    if key == "user_data":
        return replace(doc, user_data=value)
    return replace(doc, nonce=value)


def _set(
    entries: list[tuple[object, object]], key: str, value: object
) -> list[tuple[object, object]]:
    return [(k, value if k == key else v) for k, v in entries]


def _drop(entries: list[tuple[object, object]], key: str) -> list[tuple[object, object]]:
    return [(k, v) for k, v in entries if k != key]


# --- The cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The PKIs and keys every case builds on."""

    pki: builder.Pki
    leaf: builder.CertifiedKey
    foreign: builder.Pki
    foreign_leaf: builder.CertifiedKey
    base: Doc


def make_world() -> World:
    pki = builder.generate_pki(
        seed=SEED, not_before=CHAIN_START, region=REGION, instance_id=INSTANCE_ID
    )
    leaf = pki.issue_leaf(module_id=MODULE_ID, not_before=LEAF_START)
    foreign = builder.generate_pki(
        seed=FOREIGN_SEED, not_before=CHAIN_START, region=REGION, instance_id=INSTANCE_ID
    )
    foreign_leaf = foreign.issue_leaf(module_id=MODULE_ID, not_before=LEAF_START)
    base = Doc(leaf_der=leaf.der, cabundle=tuple(pki.cabundle), signer=leaf.key)
    return World(pki=pki, leaf=leaf, foreign=foreign, foreign_leaf=foreign_leaf, base=base)


def build_cases() -> tuple[list[Case], dict[str, bytes]]:
    """Every case, in manifest order, and the root PEM files they reference."""
    world = make_world()
    roots: dict[str, bytes] = {ROOT_FILE: world.pki.root_pem()}
    cases: list[Case] = []
    for family in (_valid, _envelope, _payload, _chain, _signature, _policy):
        cases.extend(family(world, roots))
    return cases, roots


def _valid(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base = w.base
    yield Case(
        "valid/definite-map",
        "The NSM's shape up to 2025: untagged, definite 9-entry payload map (0xa9) in AWS's key "
        "order, null public_key/user_data/nonce, 8-byte timestamp, 16 PCRs, 4-certificate "
        "cabundle root first.",
        base.encode(),
        None,
    )
    yield Case(
        "valid/indefinite-map",
        "The NSM's shape since mid-2025: the payload map is indefinite-length (0xbf ... 0xff).",
        replace(base, indefinite=True).encode(),
        None,
    )
    yield Case(
        "valid/tag18",
        "The envelope wrapped in tag 18 (COSE_Sign1), as AWS's documentation shows it.",
        base.encode(tag18=True),
        None,
    )
    yield Case(
        "valid/tag18-indefinite-map",
        "Tag 18 and an indefinite-length payload map together.",
        replace(base, indefinite=True).encode(tag18=True),
        None,
    )
    full = replace(
        base,
        public_key=_filler("public_key", 91),
        user_data=_filler("user_data", 64),
        nonce=_filler("nonce", 32),
    )
    yield Case(
        "valid/all-optional-fields",
        "public_key, user_data and nonce all present; the policy checks all three.",
        full.encode(),
        None,
        policy=replace(
            DEFAULT_POLICY,
            nonce=full.nonce,
            user_data=full.user_data,
            public_key=full.public_key,
        ),
    )
    yield Case(
        "valid/empty-optional-fields",
        "public_key, user_data and nonce are empty byte strings (not null). AWS's CDDL allows "
        "0..1024 bytes; an empty public_key occurs in a real 2021 document.",
        replace(base, public_key=b"", user_data=b"", nonce=b"").encode(),
        None,
    )
    yield Case(
        "valid/empty-public-key",
        "Only public_key is an empty byte string, like the real 2021 hf/nitrite document; "
        "attestation_process.md §3.2.2.2's [1, 1024] rule would wrongly reject it.",
        replace(base, public_key=b"").encode(),
        None,
    )
    biggest = replace(
        base,
        public_key=_filler("public_key", 1024),
        user_data=_filler("user_data", 1024),
        nonce=_filler("nonce", 1024),
    )
    yield Case(
        "valid/max-size-fields",
        "public_key, user_data and nonce each exactly 1024 bytes (the CDDL maximum; AWS's own "
        "device test sends 1024), checked by the policy.",
        biggest.encode(),
        None,
        policy=replace(
            DEFAULT_POLICY,
            nonce=biggest.nonce,
            user_data=biggest.user_data,
            public_key=biggest.public_key,
        ),
    )
    yield Case(
        "valid/optional-fields-absent",
        "The three optional keys are left out instead of null (the CDDL marks them optional).",
        base.encode(entries=[e for e in base.fields() if e[0] not in builder.PAYLOAD_KEYS[6:]]),
        None,
    )
    order = sorted(base.fields(), key=lambda e: (len(cbor(e[0])), cbor(e[0])))
    yield Case(
        "valid/key-order-canonical",
        "Payload keys in RFC 8949 length-first (canonical) order instead of AWS's: key order "
        "carries no meaning.",
        base.encode(entries=order),
        None,
    )
    yield Case(
        "valid/key-order-reversed",
        "Payload keys in reverse of AWS's order.",
        base.encode(entries=list(reversed(base.fields()))),
        None,
    )
    all_pcrs = {index: _sha384(f"pcr-32/{index}") for index in range(32)}
    yield Case(
        "valid/pcrs-32",
        "All 32 PCRs present (0-15 boot-locked, 16-31 locked by the application).",
        replace(base, pcrs=all_pcrs).encode(),
        None,
        policy=PolicyData(pcrs={0: all_pcrs[0], 17: all_pcrs[17], 31: all_pcrs[31]}),
    )
    one = {0: _sha384("pcr-single/0")}
    yield Case(
        "valid/pcrs-single",
        "A single PCR (the CDDL requires at least one).",
        replace(base, pcrs=one).encode(),
        None,
        policy=PolicyData(pcrs=one),
    )
    mixed = {
        0: _sha384("pcr-mixed/0"),
        1: _filler("pcr-mixed/1", 32),
        2: _filler("pcr-mixed/2", 64),
    }
    yield Case(
        "valid/pcr-sizes-32-48-64",
        "PCR values of 48, 32 and 64 bytes (the CDDL allows 32/48/64).",
        replace(base, pcrs=mixed).encode(),
        None,
        policy=PolicyData(pcrs=mixed),
    )
    sparse = {0: _sha384("pcr-sparse/0"), 8: _sha384("pcr-sparse/8"), 31: _sha384("pcr-sparse/31")}
    yield Case(
        "valid/pcrs-sparse",
        "PCRs 0, 8 and 31 only, checked by the policy.",
        replace(base, pcrs=sparse).encode(),
        None,
        policy=PolicyData(pcrs=sparse),
    )
    yield Case(
        "valid/certificate-1024-bytes",
        "The leaf certificate is exactly 1024 bytes (AWS's maximum), padded with a non-critical "
        "private extension.",
        replace(base, leaf_der=_der(_big_leaf(w, 1024))).encode(),
        None,
    )


def _big_leaf(w: World, size: int) -> x509.Certificate:
    return _padded_to(
        size,
        lambda n, variant: reissue(
            w.leaf.certificate,
            label=f"leaf-size-{size}",
            issuer=w.pki.instance.certificate,
            issuer_key=w.pki.instance.key,
            append=[_padding(n, variant)],
        ),
    )


def _envelope(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base = w.base
    payload = base.payload()
    signature = sign(payload, w.leaf.key)
    good = envelope(payload, signature)
    yield Case(
        "envelope/empty-input",
        "Zero bytes.",
        b"",
        "document.size",
    )
    yield Case(
        "envelope/not-array-map",
        "The top-level item is a map holding the four COSE_Sign1 parts under keys 0-3.",
        cbor({0: PROTECTED, 1: Raw(_EMPTY_MAP), 2: payload, 3: signature}),
        "envelope.not-array",
    )
    yield Case(
        "envelope/not-array-bstr",
        "The top-level item is a byte string wrapping a valid document.",
        cbor(good),
        "envelope.not-array",
    )
    yield Case(
        "envelope/wrong-length-3",
        "COSE_Sign1 array of 3 (the signature is missing).",
        cbor([PROTECTED, Raw(_EMPTY_MAP), payload]),
        "envelope.wrong-length",
    )
    yield Case(
        "envelope/wrong-length-5",
        "COSE_Sign1 array of 5 (an extra empty byte string after the signature).",
        cbor([PROTECTED, Raw(_EMPTY_MAP), payload, signature, b""]),
        "envelope.wrong-length",
    )
    yield Case(
        "envelope/tag-98",
        "Wrapped in tag 98 (COSE_Sign) instead of 18.",
        cbor(Tag(98, Raw(good))),
        "envelope.tag",
    )
    yield Case(
        "envelope/tag-61-cwt",
        "Wrapped in tag 61 (CWT) around tag 18: only a single tag 18 may wrap the envelope.",
        cbor(Tag(61, Tag(18, Raw(good)))),
        "envelope.tag",
    )
    yield Case(
        "envelope/tag-18-twice",
        "Tag 18 applied twice.",
        cbor(Tag(18, Tag(18, Raw(good)))),
        "envelope.tag",
    )
    for name, header, what in (
        ("alg-es256", cbor({1: -7}), "{1: -7} (ES256)"),
        ("alg-es512", cbor({1: -36}), "{1: -36} (ES512)"),
        ("alg-text", cbor({1: "ES384"}), '{1: "ES384"} (alg as text)'),
        ("empty-bstr", b"", "the empty byte string (RFC 9052's form of an empty map)"),
        ("empty-map", _EMPTY_MAP, "{} (no alg)"),
        ("extra-kid", cbor(Map(((1, -35), (4, b"kid")))), "{1: -35, 4: h'6b6964'} (extra kid)"),
        ("crit", cbor(Map(((1, -35), (2, [4])))), "{1: -35, 2: [4]} (crit)"),
        ("duplicate-alg", cbor(Map(((1, -35), (1, -35)))), "{1: -35, 1: -35} (duplicate key)"),
    ):
        yield Case(
            f"envelope/protected-{name}",
            f"Protected header {what}, correctly signed over those bytes by the leaf; only "
            "{1: -35} is allowed.",
            envelope(payload, sign(payload, w.leaf.key, protected=header), protected=header),
            "envelope.protected-header",
        )
    yield Case(
        "envelope/protected-not-bstr",
        "The protected header is a bare map {1: -35} instead of a byte string wrapping it.",
        envelope(payload, signature, protected=Raw(PROTECTED)),
        "envelope.field-type",
    )
    yield Case(
        "envelope/unprotected-kid",
        "Unprotected header {4: h'01'} (kid): it is not signed, so it must be empty.",
        envelope(payload, signature, unprotected={4: b"\x01"}),
        "envelope.unprotected-header",
    )
    yield Case(
        "envelope/unprotected-alg",
        "Unprotected header repeats {1: -35}; RFC 9052 §3 forbids alg there.",
        envelope(payload, signature, unprotected={1: -35}),
        "envelope.unprotected-header",
    )
    yield Case(
        "envelope/unprotected-duplicate-key",
        "Unprotected header {4: h'01', 4: h'01'}: a duplicate map key in the envelope.",
        envelope(payload, signature, unprotected=Map(((4, b"\x01"), (4, b"\x01")))),
        "cbor.duplicate-key",
    )
    yield Case(
        "envelope/unprotected-not-map",
        "Unprotected header is an empty byte string instead of a map.",
        envelope(payload, signature, unprotected=b""),
        "envelope.field-type",
    )
    yield Case(
        "envelope/payload-not-bstr",
        "The payload is the attestation map itself instead of a byte string holding it.",
        envelope(Raw(payload), signature),
        "envelope.field-type",
    )
    yield Case(
        "envelope/payload-null",
        "A detached (null) payload.",
        envelope(None, signature),
        "envelope.field-type",
    )
    yield Case(
        "envelope/payload-empty",
        "An empty payload byte string, signed by the leaf (AWS: payload is 1..16384 bytes).",
        envelope(b"", sign(b"", w.leaf.key)),
        "envelope.payload-size",
    )
    # A nonce just long enough to make the payload 16385 bytes: null (1 byte) becomes a byte
    # string with a 3-byte head. The document stays far below any sane whole-document limit.
    nonce_size = MAX_PAYLOAD + 1 - (len(payload) - 1 + 3)
    oversized = replace(base, nonce=_filler("nonce-oversize", nonce_size))
    assert len(oversized.payload()) == MAX_PAYLOAD + 1
    yield Case(
        "envelope/payload-oversize",
        "The payload is 16385 bytes, one over AWS's 16384 (padded with a long nonce, which is "
        "also over its own 1024-byte limit; the envelope's size check comes first).",
        oversized.encode(),
        "envelope.payload-size",
    )
    yield Case(
        "envelope/signature-not-bstr",
        "The signature is a text string.",
        envelope(payload, signature.hex()),
        "envelope.field-type",
    )
    for size, what in ((0, "empty"), (64, "64 bytes (a P-256 size)"), (97, "97 bytes")):
        yield Case(
            f"envelope/signature-{size}-bytes",
            f"The signature is {what}; ES384 is exactly 96.",
            envelope(payload, (signature + b"\x00")[:size]),
            "envelope.signature-size",
        )
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    yield Case(
        "envelope/signature-der",
        "The same signature DER-encoded (ECDSA-Sig-Value) instead of COSE's raw r || s.",
        envelope(payload, utils.encode_dss_signature(r, s)),
        "envelope.signature-size",
    )
    yield Case(
        "envelope/trailing-byte",
        "A valid document followed by one 0x00 byte.",
        good + b"\x00",
        "cbor.trailing-bytes",
    )
    yield Case(
        "envelope/trailing-document",
        "A valid document followed by a second copy of itself.",
        good + good,
        "cbor.trailing-bytes",
    )
    yield Case(
        "envelope/truncated",
        "A valid document without its last byte.",
        good[:-1],
        "cbor.truncated",
    )
    yield Case(
        "envelope/truncated-payload-length",
        "The document cut in the middle of the payload byte string.",
        good[: len(good) // 2],
        "cbor.truncated",
    )


def _payload(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base = w.base
    fields = base.fields()
    yield Case(
        "payload/not-map",
        "The payload is a CBOR array of the nine values, signed by the leaf.",
        base.encode(payload=cbor([v for _, v in fields])),
        "payload.not-map",
    )
    for key in ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"):
        yield Case(
            f"payload/missing-{key.replace('_', '-')}",
            f"The mandatory field {key} is absent.",
            base.encode(entries=_drop(fields, key)),
            "payload.missing-field",
        )
    yield Case(
        "payload/null-timestamp",
        "The mandatory field timestamp is null; null means absent (nsm.md §4.2), so it is missing.",
        base.encode(entries=_set(fields, "timestamp", None)),
        "payload.missing-field",
    )
    yield Case(
        "payload/unknown-field-text",
        'An extra key "foo" with a byte string value.',
        base.encode(entries=[*fields, ("foo", b"bar")]),
        "payload.unknown-field",
    )
    yield Case(
        "payload/unknown-field-int",
        "An extra integer key 1.",
        base.encode(entries=[*fields, (1, b"bar")]),
        "payload.unknown-field",
    )
    yield Case(
        "payload/pcrs-and-nitrotpm-pcrs",
        "Both pcrs and nitrotpm_pcrs: neither an enclave nor a NitroTPM document.",
        base.encode(entries=[*fields, ("nitrotpm_pcrs", Map(tuple(sorted(base.pcrs.items()))))]),
        "payload.unknown-field",
    )
    yield Case(
        "payload/duplicate-nonce",
        "The nonce key appears twice (with different values): a duplicate map key.",
        base.encode(entries=[*_set(fields, "nonce", b"\x01"), ("nonce", b"\x02")]),
        "cbor.duplicate-key",
    )
    dup_pcrs = Map((*sorted(base.pcrs.items()), (0, _sha384("dup-pcr0"))))
    yield Case(
        "payload/duplicate-pcr-index",
        "PCR index 0 appears twice in the pcrs map.",
        base.encode(entries=_set(fields, "pcrs", dup_pcrs)),
        "cbor.duplicate-key",
    )
    wrong_types: list[tuple[str, str, object, str]] = [
        ("module-id-bytes", "module_id", MODULE_ID.encode(), "module_id is a byte string"),
        ("digest-bytes", "digest", b"SHA384", "digest is a byte string"),
        ("timestamp-text", "timestamp", str(base.timestamp_ms), "timestamp is a text string"),
        ("pcrs-array", "pcrs", [base.pcrs[i] for i in sorted(base.pcrs)], "pcrs is an array"),
        ("certificate-text", "certificate", "MIIC", "certificate is a text string"),
        ("cabundle-map", "cabundle", dict(enumerate(base.cabundle)), "cabundle is a map"),
        ("cabundle-item-text", "cabundle", [*base.cabundle[:3], "MIIC"], "cabundle[3] is text"),
        ("public-key-text", "public_key", "key", "public_key is a text string"),
        ("user-data-int", "user_data", 7, "user_data is an integer"),
        ("nonce-array", "nonce", [b"\x01"], "nonce is an array"),
        ("nonce-false", "nonce", False, "nonce is false"),
    ]
    for name, key, value, what in wrong_types:
        yield Case(
            f"payload/{name}",
            f"Wrong type: {what}.",
            base.encode(entries=_set(fields, key, value)),
            "payload.field-type",
        )
    pcr_text_key = Map((("0", base.pcrs[0]), *sorted(base.pcrs.items())[1:]))
    yield Case(
        "payload/pcr-index-text",
        'A PCR index is the text "0" instead of an integer.',
        base.encode(entries=_set(fields, "pcrs", pcr_text_key)),
        "payload.field-type",
    )
    pcr_text_value = Map(((0, base.pcrs[0].hex()), *sorted(base.pcrs.items())[1:]))
    yield Case(
        "payload/pcr-value-text",
        "PCR0 is hex text instead of a byte string.",
        base.encode(entries=_set(fields, "pcrs", pcr_text_value)),
        "payload.field-type",
    )
    yield Case(
        "payload/timestamp-float",
        "timestamp is a float64 (floats never occur in a document).",
        base.encode(entries=_set(fields, "timestamp", float(base.timestamp_ms))),
        "cbor.unsupported",
    )
    yield Case(
        "payload/timestamp-tagged",
        "timestamp wrapped in tag 1 (epoch date/time): tags never occur inside the payload.",
        base.encode(entries=_set(fields, "timestamp", Tag(1, _uint64(base.timestamp_ms)))),
        "cbor.unsupported",
    )
    yield Case(
        "payload/digest-sha256",
        'digest is "SHA256"; only "SHA384" exists.',
        base.encode(entries=_set(fields, "digest", "SHA256")),
        "payload.field-value",
    )
    yield Case(
        "payload/digest-lowercase",
        'digest is "sha384": the value is case-sensitive.',
        base.encode(entries=_set(fields, "digest", "sha384")),
        "payload.field-value",
    )
    yield Case(
        "payload/timestamp-zero",
        "timestamp is 0 (AWS: an integer > 0), in the NSM's 8-byte form.",
        base.encode(entries=_set(fields, "timestamp", _uint64(0))),
        "payload.field-value",
    )
    yield Case(
        "payload/timestamp-negative",
        "timestamp is a negative integer (AWS §3.2.2.2: an integer > 0).",
        base.encode(entries=_set(fields, "timestamp", -base.timestamp_ms)),
        "payload.field-value",
    )
    yield Case(
        "payload/module-id-empty",
        "module_id is the empty text string (AWS: length != 0).",
        base.encode(entries=_set(fields, "module_id", "")),
        "payload.field-size",
    )
    for size in (0, 47, 96):
        bad = dict(base.pcrs)
        bad[5] = _filler(f"pcr-size-{size}", size)
        yield Case(
            f"payload/pcr-size-{size}",
            f"PCR5 is {size} bytes (AWS: 32, 48 or 64).",
            replace(base, pcrs=bad).encode(),
            "payload.field-size",
        )
    for index, what in ((32, "32 (the NSM has PCRs 0-31)"), (-1, "-1")):
        bad = {**base.pcrs, index: bytes(48)}
        yield Case(
            f"payload/pcr-index-{'minus-1' if index < 0 else index}",
            f"A PCR with index {what}.",
            base.encode(entries=_set(fields, "pcrs", Map(tuple(bad.items())))),
            "payload.field-value",
        )
    yield Case(
        "payload/pcrs-empty",
        "pcrs is the empty map (AWS: 1 to 32 entries).",
        replace(base, pcrs={}).encode(),
        "payload.field-size",
    )
    yield Case(
        "payload/cabundle-empty",
        "cabundle is the empty array (AWS: length > 0).",
        replace(base, cabundle=()).encode(),
        "payload.field-size",
    )
    yield Case(
        "payload/certificate-empty",
        "certificate is the empty byte string (AWS: 1..1024 bytes).",
        replace(base, leaf_der=b"").encode(),
        "payload.field-size",
    )
    yield Case(
        "payload/certificate-1025-bytes",
        "The leaf certificate is 1025 bytes, one over AWS's maximum; it is otherwise valid and "
        "correctly signed (padded with a non-critical private extension).",
        replace(base, leaf_der=_der(_big_leaf(w, 1025))).encode(),
        "payload.field-size",
    )
    big_instance = _padded_to(
        1025,
        lambda n, variant: reissue(
            w.pki.instance.certificate,
            label="instance-size-1025",
            issuer=w.pki.zonal.certificate,
            issuer_key=w.pki.zonal.key,
            append=[_padding(n, variant)],
        ),
    )
    yield Case(
        "payload/cabundle-entry-1025-bytes",
        "cabundle[3] (the instance CA) is 1025 bytes, one over AWS's maximum; otherwise valid.",
        replace(base, cabundle=(*base.cabundle[:3], _der(big_instance))).encode(),
        "payload.field-size",
    )
    yield Case(
        "payload/cabundle-entry-empty",
        "cabundle[1] is the empty byte string (AWS: 1..1024 bytes).",
        replace(base, cabundle=(base.cabundle[0], b"", *base.cabundle[2:])).encode(),
        "payload.field-size",
    )
    for key in ("public_key", "user_data", "nonce"):
        yield Case(
            f"payload/{key.replace('_', '-')}-1025-bytes",
            f"{key} is 1025 bytes, one over the CDDL's 1024.",
            _with_optional(base, key, _filler(f"{key}-1025", 1025)).encode(),
            "payload.field-size",
        )
    tpm_pcrs = {index: _sha384(f"nitrotpm/{index}") for index in range(24)}
    tpm_entries = [
        (k, v)
        for k, v in _set(fields, "module_id", f"{INSTANCE_ID}-tpm0000000000000000")
        if k != "pcrs"
    ]
    tpm_entries.insert(3, ("nitrotpm_pcrs", Map(tuple(sorted(tpm_pcrs.items())))))
    yield Case(
        "payload/nitrotpm-document",
        "A NitroTPM (EC2 instance) document: nitrotpm_pcrs (24 registers) instead of pcrs, "
        "otherwise valid and signed. The enclave verifier must refuse the kind.",
        base.encode(entries=tpm_entries),
        "document.nitrotpm",
        policy=_policy_for(tpm_pcrs),
    )
    yield Case(
        "payload/trailing-bytes",
        "The payload byte string holds the map followed by an extra 0x00, signed as such.",
        base.encode(payload=base.payload() + b"\x00"),
        "cbor.trailing-bytes",
    )
    yield Case(
        "payload/truncated-map",
        "The indefinite payload map lacks its final break byte, signed as such.",
        replace(base, indefinite=True).encode(
            payload=replace(base, indefinite=True).payload()[:-1]
        ),
        "cbor.truncated",
    )


def _chain(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base, pki = w.base, w.pki
    minute = timedelta(minutes=1)

    def with_bundle(*replaced: tuple[int, x509.Certificate]) -> Doc:
        bundle = list(base.cabundle)
        for index, certificate in replaced:
            bundle[index] = _der(certificate)
        return replace(base, cabundle=tuple(bundle))

    # Validity, level by level: each certificate reissued with one window that misses AT.
    for role, index, issuer in (
        ("regional", 1, pki.root),
        ("zonal", 2, pki.regional),
        ("instance", 3, pki.zonal),
    ):
        original: builder.CertifiedKey = getattr(pki, role)
        lifetime = (
            original.certificate.not_valid_after_utc - original.certificate.not_valid_before_utc
        )
        expired = reissue(
            original.certificate,
            label=f"{role}-expired",
            issuer=issuer.certificate,
            issuer_key=issuer.key,
            not_before=AT - minute - lifetime,
            not_after=AT - minute,
        )
        yield Case(
            f"chain/{role}-expired",
            f"The {role} CA (cabundle[{index}]) expired one minute before the verification time; "
            "every other certificate is valid.",
            with_bundle((index, expired)).encode(),
            "chain.expired",
        )
        early = reissue(
            original.certificate,
            label=f"{role}-not-yet-valid",
            issuer=issuer.certificate,
            issuer_key=issuer.key,
            not_before=AT + minute,
            not_after=AT + minute + lifetime,
        )
        yield Case(
            f"chain/{role}-not-yet-valid",
            f"The {role} CA (cabundle[{index}]) becomes valid one minute after the verification "
            "time; every other certificate is valid.",
            with_bundle((index, early)).encode(),
            "chain.not-yet-valid",
        )

    for name, not_before, not_after, code in (
        ("expired", datetime(2020, 1, 1, tzinfo=UTC), AT - minute, "chain.expired"),
        ("not-yet-valid", AT + minute, datetime(2050, 1, 1, tzinfo=UTC), "chain.not-yet-valid"),
    ):
        root = reissue(
            pki.root.certificate,
            label=f"root-{name}",
            issuer=None,
            issuer_key=pki.root.key,
            not_before=not_before,
            not_after=not_after,
        )
        root_file = f"roots/root-{name}.pem"
        roots[root_file] = _pem(root)
        yield Case(
            f"chain/root-{name}",
            f"The pinned root (same key and name, {root_file}) is "
            f"{'expired' if name == 'expired' else 'not yet valid'} at the verification time; "
            "cabundle[0] is that root; AWS: every certificate including the root must be valid.",
            with_bundle((0, root)).encode(),
            code,
            roots=(root_file,),
        )

    leaf = w.leaf
    lifetime = builder.LEAF_LIFETIME
    expired_leaf = reissue(
        leaf.certificate,
        label="leaf-expired",
        issuer=pki.instance.certificate,
        issuer_key=pki.instance.key,
        not_before=AT - minute - lifetime,
        not_after=AT - minute,
    )
    yield Case(
        "chain/leaf-expired",
        "The leaf expired one minute before the verification time; the document was signed "
        "two minutes before it (inside the leaf's life and the policy's max age).",
        replace(
            base,
            leaf_der=_der(expired_leaf),
            timestamp_ms=_ms(AT - 2 * minute),
        ).encode(),
        "chain.expired",
    )
    early_leaf = reissue(
        leaf.certificate,
        label="leaf-not-yet-valid",
        issuer=pki.instance.certificate,
        issuer_key=pki.instance.key,
        not_before=AT + minute,
        not_after=AT + minute + lifetime,
    )
    yield Case(
        "chain/leaf-not-yet-valid",
        "The leaf becomes valid one minute after the verification time.",
        replace(base, leaf_der=_der(early_leaf)).encode(),
        "chain.not-yet-valid",
    )

    def leaf_variant(
        label: str,
        *,
        issuer: x509.Certificate = pki.instance.certificate,
        issuer_key: CertificateIssuerPrivateKeyTypes = pki.instance.key,
        public_key: CertificatePublicKeyTypes | None = None,
        change: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool] | None] | None = None,
        append: Sequence[tuple[x509.ExtensionType, bool]] = (),
        hash_algorithm: hashes.SHA256 | None = None,
    ) -> Doc:
        certificate = reissue(
            leaf.certificate,
            label=label,
            issuer=issuer,
            issuer_key=issuer_key,
            public_key=public_key,
            change=change,
            append=append,
            hash_algorithm=hash_algorithm,
        )
        return replace(base, leaf_der=_der(certificate))

    stranger = builder.derive_key(SEED, "vectors/stranger")
    yield Case(
        "chain/leaf-wrong-issuer-key",
        "The leaf names the instance CA as issuer (and its key identifier) but is signed by "
        "another P-384 key.",
        leaf_variant("leaf-wrong-issuer-key", issuer_key=stranger).encode(),
        "chain.untrusted",
    )
    yield Case(
        "chain/leaf-wrong-issuer-name",
        "The leaf is signed by the instance CA's key but names the zonal CA as its issuer.",
        leaf_variant("leaf-wrong-issuer-name", issuer=pki.zonal.certificate).encode(),
        "chain.untrusted",
    )
    yield Case(
        "chain/missing-intermediate",
        "The zonal CA is left out of cabundle: the instance CA has no issuer in the bundle.",
        replace(base, cabundle=(base.cabundle[0], base.cabundle[1], base.cabundle[3])).encode(),
        "chain.untrusted",
    )
    yield Case(
        "chain/cabundle-reversed",
        "cabundle[1:] in leaf-first order (instance, zonal, regional) instead of AWS's root-first "
        "order: the bundle is not the ordered path (AWS §3.2.3 defines the order).",
        replace(base, cabundle=(base.cabundle[0], *reversed(base.cabundle[1:]))).encode(),
        "chain.path-mismatch",
    )
    yield Case(
        "chain/cabundle-extra-certificate",
        "A foreign CA certificate inserted between the zonal and instance CAs: the bundle is not "
        "exactly the path.",
        replace(
            base,
            cabundle=(*base.cabundle[:3], w.foreign.zonal.der, base.cabundle[3]),
        ).encode(),
        "chain.path-mismatch",
    )
    by_zonal = builder.issue_certificate(
        subject=leaf.certificate.subject,
        public_key=leaf.key.public_key(),
        issuer=pki.zonal.certificate,
        issuer_key=pki.zonal.key,
        not_before=leaf.certificate.not_valid_before_utc,
        not_after=leaf.certificate.not_valid_after_utc,
        ca=False,
        key_usage=builder.LEAF_KEY_USAGE,
        key_usage_critical=False,
        serial_number=_serial("leaf-issued-by-zonal"),
    )
    yield Case(
        "chain/leaf-issued-by-zonal",
        "A correctly signed leaf issued by the zonal CA, with the full bundle: the path skips "
        "the instance CA, so it is not leaf + reversed cabundle[1:].",
        replace(base, leaf_der=_der(by_zonal)).encode(),
        "chain.path-mismatch",
    )

    def ca_variant(
        role: str,
        index: int,
        label: str,
        *,
        change: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool] | None] | None = None,
        append: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> Doc:
        original: builder.CertifiedKey = getattr(pki, role)
        issuer = (pki.root, pki.regional, pki.zonal)[index - 1]
        certificate = reissue(
            original.certificate,
            label=label,
            issuer=issuer.certificate,
            issuer_key=issuer.key,
            change=change,
            append=append,
        )
        return with_bundle((index, certificate))

    bc = ExtensionOID.BASIC_CONSTRAINTS
    ku = ExtensionOID.KEY_USAGE
    yield Case(
        "chain/intermediate-ca-false",
        "The instance CA has basicConstraints CA:false (keyUsage keyCertSign kept).",
        ca_variant(
            "instance",
            3,
            "instance-ca-false",
            change={bc: (x509.BasicConstraints(ca=False, path_length=None), True)},
        ).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/intermediate-no-basic-constraints",
        "The zonal CA has no basicConstraints extension at all.",
        ca_variant("zonal", 2, "zonal-no-bc", change={bc: None}).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/intermediate-basic-constraints-not-critical",
        "The regional CA's basicConstraints is not critical (AWS §3.2.3.2: it must be).",
        ca_variant(
            "regional",
            1,
            "regional-bc-noncritical",
            change={bc: (x509.BasicConstraints(ca=True, path_length=2), False)},
        ).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/pathlen-violation",
        "The zonal CA has pathLen 0, yet the instance CA follows it.",
        ca_variant(
            "zonal",
            2,
            "zonal-pathlen-0",
            change={bc: (x509.BasicConstraints(ca=True, path_length=0), True)},
        ).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/intermediate-missing-key-usage",
        "The instance CA has no keyUsage extension.",
        ca_variant("instance", 3, "instance-no-ku", change={ku: None}).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/intermediate-missing-key-cert-sign",
        "The zonal CA's keyUsage is digitalSignature and cRLSign, without keyCertSign.",
        ca_variant(
            "zonal",
            2,
            "zonal-no-keycertsign",
            change={ku: (builder.key_usage(digital_signature=True, crl_sign=True), True)},
        ).encode(),
        "chain.invalid",
    )
    unknown = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.57264.99.2"), b"\x05\x00"
    )
    yield Case(
        "chain/intermediate-unknown-critical-extension",
        "The zonal CA carries an unknown extension marked critical (RFC 5280 §4.2: reject).",
        ca_variant("zonal", 2, "zonal-unknown-critical", append=[(unknown, True)]).encode(),
        "chain.invalid",
    )
    yield Case(
        "chain/leaf-unknown-critical-extension",
        "The leaf carries an unknown extension marked critical.",
        leaf_variant("leaf-unknown-critical", append=[(unknown, True)]).encode(),
        "chain.invalid",
    )

    # A control for every case above: `reissue` with nothing changed keeps a valid chain, so
    # each failure comes from the one change its case makes.
    regional = ca_variant("regional", 1, "regional-control")
    zonal = reissue(
        pki.zonal.certificate,
        label="zonal-control",
        issuer=pki.regional.certificate,
        issuer_key=pki.regional.key,
    )
    instance = reissue(
        pki.instance.certificate,
        label="instance-control",
        issuer=pki.zonal.certificate,
        issuer_key=pki.zonal.key,
    )
    yield Case(
        "chain/reissued-control",
        "Control: every intermediate and the leaf reissued by the corpus's own certificate "
        "copier with nothing changed (new serials only). Valid, which shows that each chain "
        "failure above comes from the one change its case makes.",
        replace(
            regional,
            cabundle=(*regional.cabundle[:2], _der(zonal), _der(instance)),
            leaf_der=leaf_variant("leaf-control").leaf_der,
        ).encode(),
        None,
    )

    # The trust anchor.
    yield Case(
        "chain/foreign-root-in-cabundle0",
        "cabundle[0] is another self-signed root, while cabundle[1:] chains to the pinned root. "
        "cabundle[0] is never the anchor (the chain is built to the pinned root), so it carries "
        "no trust and the document is valid.",
        with_bundle((0, w.foreign.root.certificate)).encode(),
        None,
    )
    foreign = replace(
        base,
        leaf_der=w.foreign_leaf.der,
        cabundle=tuple(w.foreign.cabundle),
        signer=w.foreign_leaf.key,
    )
    yield Case(
        "chain/foreign-anchor",
        "A complete, well-formed chain under another root (in cabundle[0]) that is not pinned.",
        foreign.encode(),
        "chain.untrusted",
    )

    # The leaf's key and signature algorithm.
    p256 = builder.derive_key(SEED, "vectors/leaf-p256", curve=ec.SECP256R1())
    yield Case(
        "chain/leaf-p256",
        "The leaf key is ECDSA P-256 instead of P-384 (the leaf is otherwise valid). The "
        "document is signed by that key (ECDSA with SHA-384, r and s left-padded to 48 bytes), "
        "so a verifier that takes any curve from the leaf would accept it.",
        replace(leaf_variant("leaf-p256", public_key=p256.public_key()), signer=p256).encode(),
        "chain.leaf-key",
    )
    p521 = builder.derive_key(SEED, "vectors/leaf-p521", curve=ec.SECP521R1())
    yield Case(
        "chain/leaf-p521",
        "The leaf key is ECDSA P-521 instead of P-384 (the leaf is otherwise valid, signed "
        "ecdsa-with-SHA384). A P-521 signature does not fit the 96-byte envelope, so the "
        "envelope carries the real P-384 leaf's signature; the leaf must be refused first.",
        leaf_variant("leaf-p521", public_key=p521.public_key()).encode(),
        "chain.leaf-key",
    )
    yield Case(
        "chain/leaf-rsa",
        "The leaf key is RSA-2048 (vectors/keys/rsa-leaf-test-key.pub.pem). An RSA signature "
        "does not fit the 96-byte envelope, so the envelope carries the real P-384 leaf's "
        "signature; the leaf must be refused first.",
        leaf_variant("leaf-rsa", public_key=_rsa_public_key()).encode(),
        "chain.leaf-key",
    )
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(_filler("leaf-ed25519", 32))
    yield Case(
        "chain/leaf-ed25519",
        "The leaf key is Ed25519. The envelope carries the real P-384 leaf's signature (an "
        "Ed25519 signature is 64 bytes); the leaf must be refused first.",
        leaf_variant("leaf-ed25519", public_key=ed.public_key()).encode(),
        "chain.leaf-key",
    )
    yield Case(
        "chain/leaf-signed-sha256",
        "The leaf is signed by the instance CA with ecdsa-with-SHA256 instead of SHA384.",
        leaf_variant("leaf-sha256", hash_algorithm=hashes.SHA256()).encode(),
        "chain.leaf-algorithm",
    )
    yield Case(
        "chain/leaf-is-ca",
        "The leaf has basicConstraints CA:true (critical).",
        leaf_variant(
            "leaf-is-ca", change={bc: (x509.BasicConstraints(ca=True, path_length=None), True)}
        ).encode(),
        "chain.leaf-usage",
    )
    yield Case(
        "chain/leaf-no-digital-signature",
        "The leaf's keyUsage is nonRepudiation only (AWS §3.2.3.3: it needs digitalSignature).",
        leaf_variant(
            "leaf-no-ds", change={ku: (builder.key_usage(non_repudiation=True), False)}
        ).encode(),
        "chain.leaf-usage",
    )
    yield Case(
        "chain/leaf-missing-key-usage",
        "The leaf has no keyUsage extension (it needs digitalSignature).",
        leaf_variant("leaf-no-ku", change={ku: None}).encode(),
        "chain.leaf-usage",
    )
    yield Case(
        "chain/leaf-malformed-der",
        "certificate holds bytes that are not a DER certificate (the leaf's DER with its first "
        "byte changed).",
        replace(base, leaf_der=b"\x31" + base.leaf_der[1:]).encode(),
        "chain.certificate-malformed",
    )


def _rsa_public_key() -> rsa.RSAPublicKey:
    text = _RSA_KEY_FILE.read_bytes()
    # The file starts with a comment; PEM loaders want the armour first.
    key = serialization.load_pem_public_key(text[text.index(b"-----BEGIN") :])
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError(f"{_RSA_KEY_FILE} is not an RSA public key")
    return key


def _signature(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base = w.base
    payload = base.payload()
    signature = sign(payload, w.leaf.key)

    def flipped(index: int) -> bytes:
        out = bytearray(signature)
        out[index] ^= 0x01
        return bytes(out)

    yield Case(
        "signature/high-s-twin",
        "The signature with s replaced by n - s where needed so that s > n/2. ECDSA accepts "
        "both twins and the NSM emits high-S (36 of 66 real documents): must verify.",
        base.encode(high_s=True),
        None,
    )
    yield Case(
        "signature/low-s-twin",
        "The same signature in its low-S form (s <= n/2): must verify.",
        base.encode(high_s=False),
        None,
    )
    yield Case(
        "signature/r-bit-flip",
        "The last bit of r flipped.",
        envelope(payload, flipped(47)),
        "signature.invalid",
    )
    yield Case(
        "signature/s-bit-flip",
        "The last bit of s flipped.",
        envelope(payload, flipped(95)),
        "signature.invalid",
    )
    yield Case(
        "signature/r-top-bit-flip",
        "The first bit of r flipped.",
        envelope(payload, flipped(0)),
        "signature.invalid",
    )
    yield Case(
        "signature/zero",
        "r = s = 0 (96 zero bytes).",
        envelope(payload, bytes(96)),
        "signature.invalid",
    )
    yield Case(
        "signature/s-equals-order",
        "s = n (out of range; a verifier must not reduce it modulo n).",
        envelope(payload, signature[:48] + _P384_ORDER.to_bytes(48, "big")),
        "signature.invalid",
    )
    yield Case(
        "signature/truncated",
        "The signature without its last byte (95 bytes).",
        envelope(payload, signature[:-1]),
        "envelope.signature-size",
    )
    stranger = builder.derive_key(SEED, "vectors/stranger")
    yield Case(
        "signature/wrong-key",
        "Signed by another P-384 key than the leaf's.",
        envelope(payload, sign(payload, stranger)),
        "signature.invalid",
    )
    yield Case(
        "signature/signed-by-instance-ca",
        "Signed by the instance CA's key (the leaf's issuer) instead of the leaf's.",
        envelope(payload, sign(payload, w.pki.instance.key)),
        "signature.invalid",
    )
    yield Case(
        "signature/context-signature",
        'Signed over a Sig_structure with context "Signature" (COSE_Sign) instead of "Signature1".',
        envelope(payload, sign(payload, w.leaf.key, context="Signature")),
        "signature.invalid",
    )
    yield Case(
        "signature/external-aad",
        "Signed over a Sig_structure with a non-empty external_aad; the verifier uses h''.",
        envelope(payload, sign(payload, w.leaf.key, external_aad=b"aad")),
        "signature.invalid",
    )
    yield Case(
        "signature/payload-byte-flip",
        "One bit of PCR0 flipped inside the signed payload (the Signal test).",
        envelope(_flip_in(payload, base.pcrs[0]), signature),
        "signature.invalid",
    )
    long_pcr0 = Map(((0, Raw(b"\x59\x00\x30" + base.pcrs[0])), *sorted(base.pcrs.items())[1:]))
    reencodings = (
        (
            "indefinite-map",
            "the same map written indefinite-length (0xbf ... 0xff)",
            replace(base, indefinite=True).payload(),
        ),
        (
            "pcr-long-length",
            "PCR0's length written in two bytes (0x59 0x00 0x30) instead of one",
            base.payload(_set(base.fields(), "pcrs", long_pcr0)),
        ),
        (
            "pcrs-indefinite",
            "the pcrs map written indefinite-length",
            base.payload(_set(base.fields(), "pcrs", Map(tuple(sorted(base.pcrs.items())), True))),
        ),
        (
            "canonical-key-order",
            "the keys in RFC 8949 canonical order",
            base.payload(sorted(base.fields(), key=lambda e: (len(cbor(e[0])), cbor(e[0])))),
        ),
    )
    for name, what, reencoded in reencodings:
        assert reencoded != payload
        yield Case(
            f"signature/reencoded-{name}",
            f"The payload re-encoded as {what}: equivalent content, but the original "
            "signature covers the original bytes, so it must fail (never verify a re-encoding).",
            envelope(reencoded, signature),
            "signature.invalid",
        )
    yield Case(
        "signature/protected-header-reencoded",
        "The protected header written a1 01 39 00 22 (still {1: -35}, non-preferred integer) "
        "with the signature made over a1 01 38 22: the signed bytes differ.",
        envelope(payload, signature, protected=bytes.fromhex("a101390022")),
        "signature.invalid",
    )


def _flip_in(payload: bytes, needle: bytes) -> bytes:
    out = bytearray(payload)
    out[payload.index(needle)] ^= 0x01
    return bytes(out)


def _policy(w: World, roots: dict[str, bytes]) -> Iterator[Case]:
    base = w.base
    pcrs = base.pcrs
    yield Case(
        "policy/pcr-mismatch",
        "The policy expects a different PCR1.",
        base.encode(),
        "policy.pcr-mismatch",
        policy=replace(DEFAULT_POLICY, pcrs={**DEFAULT_POLICY.pcrs, 1: _sha384("other-pcr1")}),
    )
    yield Case(
        "policy/pcr-absent",
        "The policy expects PCR16, which the document does not carry.",
        base.encode(),
        "policy.pcr-mismatch",
        policy=replace(DEFAULT_POLICY, pcrs={**DEFAULT_POLICY.pcrs, 16: _sha384("pcr16")}),
    )
    yield Case(
        "policy/pcr8-zero-expected-signed",
        "The policy expects a signing-certificate PCR8, the image is unsigned (PCR8 zero).",
        base.encode(),
        "policy.pcr-mismatch",
        policy=PolicyData(pcrs={0: pcrs[0], 8: _sha384("pcr8")}),
    )
    debug = replace(base, pcrs=debug_pcrs())
    debug_policy = _policy_for(debug_pcrs())
    yield Case(
        "policy/debug-refused",
        "A debug-mode document (all PCRs zero), and a policy that expects exactly those zero "
        "PCRs but does not allow debug.",
        debug.encode(),
        "policy.debug",
        policy=debug_policy,
    )
    yield Case(
        "policy/debug-allowed",
        "The same debug-mode document under allow_debug=true: valid.",
        debug.encode(),
        None,
        policy=replace(debug_policy, allow_debug=True),
    )
    with_nonce = replace(base, nonce=_filler("nonce", 32))
    yield Case(
        "policy/nonce-match",
        "The document's nonce equals the policy's.",
        with_nonce.encode(),
        None,
        policy=replace(DEFAULT_POLICY, nonce=with_nonce.nonce),
    )
    yield Case(
        "policy/nonce-mismatch",
        "The document's nonce differs from the policy's in its last byte.",
        with_nonce.encode(),
        "policy.nonce-mismatch",
        policy=replace(DEFAULT_POLICY, nonce=_filler("nonce", 31) + b"\x00"),
    )
    yield Case(
        "policy/nonce-absent",
        "The policy expects a nonce; the document's is null.",
        base.encode(),
        "policy.nonce-mismatch",
        policy=replace(DEFAULT_POLICY, nonce=_filler("nonce", 32)),
    )
    yield Case(
        "policy/nonce-empty-vs-absent",
        "The policy expects an empty nonce; the document's is null (empty is not absent).",
        base.encode(),
        "policy.nonce-mismatch",
        policy=replace(DEFAULT_POLICY, nonce=b""),
    )
    bound = replace(base, user_data=_filler("user_data", 48), public_key=_filler("public_key", 65))
    yield Case(
        "policy/user-data-mismatch",
        "The document's user_data differs from the expected value.",
        bound.encode(),
        "policy.user-data-mismatch",
        policy=replace(DEFAULT_POLICY, user_data=_filler("other-user_data", 48)),
    )
    yield Case(
        "policy/user-data-absent",
        "The policy expects user_data; the document's is null.",
        base.encode(),
        "policy.user-data-mismatch",
        policy=replace(DEFAULT_POLICY, user_data=_filler("user_data", 48)),
    )
    yield Case(
        "policy/public-key-mismatch",
        "The document's public_key differs from the expected value.",
        bound.encode(),
        "policy.public-key-mismatch",
        policy=replace(DEFAULT_POLICY, public_key=_filler("other-public_key", 65)),
    )
    yield Case(
        "policy/stale",
        "The document is max_age + 1 ms old at the verification time.",
        replace(base, timestamp_ms=_ms(AT - MAX_AGE) - 1).encode(),
        "policy.stale",
    )
    yield Case(
        "policy/age-equals-max-age",
        "The document is exactly max_age old: the bound is inclusive.",
        replace(base, timestamp_ms=_ms(AT - MAX_AGE)).encode(),
        None,
    )
    yield Case(
        "policy/old-without-max-age",
        "A document verified 2 h 30 min after it was signed (inside every certificate's "
        "window) with max_age null: freshness is not checked, the document is valid.",
        base.encode(),
        None,
        at=TIMESTAMP + timedelta(hours=2, minutes=30),
        policy=replace(DEFAULT_POLICY, max_age=None),
    )
    future = replace(base, timestamp_ms=_ms(AT + timedelta(hours=1)))
    yield Case(
        "policy/future",
        "The document's timestamp is one hour after the verification time, far beyond any "
        "clock skew; every certificate is valid at both instants.",
        future.encode(),
        "policy.future",
    )
    yield Case(
        "policy/future-without-max-age",
        "The same future document with max_age null: a future timestamp is refused whatever "
        "the freshness bound.",
        future.encode(),
        "policy.future",
        policy=replace(DEFAULT_POLICY, max_age=None),
    )


# --- Output -------------------------------------------------------------------------------------


def manifest(cases: Sequence[Case], roots: dict[str, bytes]) -> dict[str, object]:
    return {
        "$schema": "../schema.json",
        "format_version": FORMAT_VERSION,
        "generator": "vectors/generate.py",
        "seed": SEED,
        "description": (
            "Conformance corpus for Nitro Enclaves attestation verifiers: synthetic AWS-profile "
            "PKI, deterministic documents. See vectors/README.md."
        ),
        "roots": sorted(roots),
        "cases": [case.to_json() for case in cases],
    }


def build_corpus() -> dict[str, bytes]:
    """Every file of the corpus: relative path -> bytes."""
    cases, roots = build_cases()
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise AssertionError("duplicate case ids")
    files: dict[str, bytes] = dict(roots)
    for case in cases:
        files[case.path] = case.document
    text = json.dumps(manifest(cases, roots), indent=2, ensure_ascii=False) + "\n"
    files["manifest.json"] = text.encode()
    return files


def _existing(out: Path) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def check_corpus(out: Path) -> list[str]:
    """The differences between a fresh build and the files in `out` (empty if identical)."""
    fresh = build_corpus()
    current = _existing(out)
    problems = [f"missing: {name}" for name in sorted(fresh.keys() - current.keys())]
    problems += [f"unexpected: {name}" for name in sorted(current.keys() - fresh.keys())]
    problems += [
        f"differs: {name}"
        for name in sorted(fresh.keys() & current.keys())
        if fresh[name] != current[name]
    ]
    return problems


def write_corpus(out: Path) -> int:
    """Replace the contents of `out` with a fresh build; returns the number of files.

    `out` must be absent, empty, or a previous corpus (it has a `manifest.json`): it is
    deleted and rewritten, so a mistyped `--out` must not take a source directory with it.
    """
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise SystemExit(f"{out} is not empty and holds no manifest.json: refusing to replace it")
    files = build_corpus()
    # Build next to the target and swap, so a failure never leaves a half-written corpus.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".corpus-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the corpus is ordinary repository data
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return len(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus directory")
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the directory differs from a fresh build",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_corpus(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{args.out}: corpus is stale; run python vectors/generate.py", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    count = write_corpus(args.out)
    print(f"wrote {count} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
