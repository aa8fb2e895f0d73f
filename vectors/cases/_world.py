"""What every case builds on: the fixed inputs, the PKIs, the baseline document and its tools.

Everything comes from a fixed seed and fixed instants: keys are derived from the seed
(`attestation.builder.derive_key`), ECDSA signatures are deterministic (RFC 6979), serial
numbers are hashes of fixed labels, and the only key that cannot be derived (RSA) is a committed
public test key in `vectors/keys/`. Two builds therefore give byte-identical files.

The CBOR comes from `attestation.builder`'s writer (`encode` with the `Raw`, `Tag`, `Map` and
`Array` wrappers), because most cases are about bytes an ordinary encoder would never produce.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from attestation import builder
from attestation.builder import Raw, encode
from vectors.corpus import PolicySpec

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
#: Real documents are signed minutes into their leaf's life (vectors/real); the odd milliseconds
#: make a verifier that truncates the timestamp to seconds visible.
TIMESTAMP = LEAF_START + timedelta(minutes=14, seconds=7, milliseconds=123)
#: Verification time of most cases: 30 s after the document, well inside every window.
AT = TIMESTAMP + timedelta(seconds=30)
#: The freshness bound of most cases' policies (the `Policy` default).
MAX_AGE = timedelta(minutes=5)

ROOT_FILE = "roots/synthetic-root.pem"
_MS = timedelta(milliseconds=1)
#: AWS CDDL: `payload: bstr .size (1..16384)`.
MAX_PAYLOAD = 16384
_RSA_KEY_FILE = Path(__file__).resolve().parents[1] / "keys" / "rsa-leaf-test-key.pub.pem"

# COSE (RFC 9052) and AWS constants, as raw CBOR.
PROTECTED = builder.PROTECTED_HEADER  # a1 01 38 22 = {1: -35}
EMPTY_MAP = b"\xa0"
_SCALAR_SIZE = builder.SIGNATURE_LENGTH // 2  # P-384 r and s, 48 bytes each
P384_ORDER = builder.curve_order(ec.SECP384R1())

# --- Deterministic material ---------------------------------------------------------------------


def sha384(label: str) -> bytes:
    """A SHA-384-sized value named by `label` (PCRs)."""
    return hashlib.sha384(f"nsm-attestation/vectors/v1/{label}".encode()).digest()


def filler(label: str, size: int) -> bytes:
    """`size` pseudo-random bytes named by `label`."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"nsm-attestation/vectors/v1/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def serial(label: str) -> int:
    """127 bits, positive, non-zero: like the builder's serials but named by the case."""
    digest = hashlib.sha256(f"nsm-attestation/vectors/v1/serial/{label}".encode()).digest()
    return (int.from_bytes(digest, "big") >> 129) or 1


def ms(instant: datetime) -> int:
    """Milliseconds since the Unix epoch, the payload's `timestamp`."""
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // _MS


def production_pcrs(instance_id: str = INSTANCE_ID) -> dict[int, bytes]:
    """16 PCRs shaped like a production enclave's (vectors/real): 0-2 measured, 4 the instance."""
    pcrs = {index: bytes(builder.PCR_LENGTH) for index in range(16)}
    pcrs[0] = sha384("pcr0")
    pcrs[1] = sha384("pcr1")
    pcrs[2] = sha384("pcr2")
    pcrs[4] = hashlib.sha384(bytes(48) + instance_id.encode()).digest()
    return pcrs


def nitrotpm_pcrs() -> dict[int, bytes]:
    """A NitroTPM document's 24 registers (PCR0..PCR23, SHA-384 bank), each named by its index."""
    return {index: sha384(f"nitrotpm/{index}") for index in range(24)}


def debug_pcrs() -> dict[int, bytes]:
    """A debug-mode enclave's PCRs: all zero (AWS User Guide)."""
    return {index: bytes(builder.PCR_LENGTH) for index in range(16)}


def policy_for(pcrs: dict[int, bytes]) -> PolicySpec:
    """Policies check PCR0-2, the enclave image (AWS User Guide), unless a case says otherwise."""
    return PolicySpec(pcrs={index: pcrs[index] for index in (0, 1, 2) if index in pcrs})


DEFAULT_POLICY = policy_for(production_pcrs())


def rsa_public_key() -> rsa.RSAPublicKey:
    """The committed RSA test key (an RSA key cannot be derived from the seed cheaply)."""
    text = _RSA_KEY_FILE.read_bytes()
    # The file starts with a comment; PEM loaders want the armour first.
    key = serialization.load_pem_public_key(text[text.index(b"-----BEGIN") :])
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError(f"{_RSA_KEY_FILE} is not an RSA public key")
    return key


# --- Certificates -------------------------------------------------------------------------------

#: `reissue`'s extension changes: OID -> replacement `(value, critical)`, or None to drop it.
Changes = dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool] | None]


def reissue(
    original: x509.Certificate,
    *,
    label: str,
    issuer: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    public_key: CertificatePublicKeyTypes | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    change: Changes | None = None,
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
        serial_number=serial(label),
        hash_algorithm=hash_algorithm,
    )


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


_PADDING_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.99.1")  # private arc, test only


def padding(size: int, variant: int = 0) -> tuple[x509.ExtensionType, bool]:
    """A non-critical unknown extension whose value is an OCTET STRING of `size` bytes."""
    body = filler(f"padding/{variant}", size)
    value = b"\x04\x82" + len(body).to_bytes(2, "big") + body
    return x509.UnrecognizedExtension(_PADDING_OID, value), False


def padded_to(size: int, make: Callable[[int, int], x509.Certificate]) -> x509.Certificate:
    """`make(n, variant)` for the first padding size and variant giving exactly `size` bytes.

    The ECDSA signature's DER length varies by a byte or two with the signed content, so the
    search also varies the padding's content (the `variant`) until one signature fits.
    """
    estimate = size - len(der(make(0, 0)))
    # Length fields grow once the padding passes 127 and 255 bytes: correct for that once.
    estimate += size - len(der(make(estimate, 0)))
    for variant in range(64):
        for n in (estimate, estimate - 1, estimate + 1, estimate - 2, estimate + 2):
            certificate = make(n, variant)
            if len(der(certificate)) == size:
                return certificate
    raise RuntimeError(f"cannot pad a certificate to {size} bytes")


# --- Raw DER ------------------------------------------------------------------------------------
# Certificates that cryptography's builder refuses to write (an invalid UTF8String, a negative
# serial, another X.509 version) are made from a built one: its TBS fields are replaced as raw
# DER and the TBS is signed again, so the certificate is broken in that one field only.


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element: `tag`, the definite length of `content`, `content`."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def der_children(element: bytes) -> list[bytes]:
    """The DER elements inside the constructed element `element`, each with its tag and length."""
    out = []
    pos = 2 + (element[1] & 0x7F if element[1] & 0x80 else 0)
    while pos < len(element):
        head = 2
        size = element[pos + 1]
        if size & 0x80:
            head += size & 0x7F
            size = int.from_bytes(element[pos + 2 : pos + head], "big")
        out.append(element[pos : pos + head + size])
        pos += head + size
    return out


_CN = bytes.fromhex("0603550403")  # OID 2.5.4.3 commonName, DER


def raw_name(tag: int, value: bytes) -> bytes:
    """A Name of one RDN: commonName with a value of any tag and content (DER)."""
    return der_tlv(0x30, der_tlv(0x31, der_tlv(0x30, _CN + der_tlv(tag, value))))


#: Names a verifier can decode, one per string type AWS-like chains might use.
GOOD_NAMES = {
    "utf8": raw_name(0x0C, "Nitro CA é".encode()),
    "printable": raw_name(0x13, b"Nitro CA"),
    "ia5": raw_name(0x16, b"nitro@ca"),
    "teletex-7bit": raw_name(0x14, b"Nitro CA"),
    "bmp": raw_name(0x1E, "Nitro".encode("utf-16-be")),
}
#: Names that cannot be decoded: a certificate carrying one is malformed.
BAD_NAMES = {
    "utf8-invalid": raw_name(0x0C, b"Nitro \xff CA"),
    "utf8-overlong": raw_name(0x0C, b"Nitro \xc0\xaf CA"),
    "utf8-lone-surrogate": raw_name(0x0C, b"Nitro \xed\xa0\x80 CA"),
    "utf8-truncated": raw_name(0x0C, b"Nitro \xe2\x82"),
    "teletex-8bit": raw_name(0x14, b"Nitro \xe9t\xe9"),
    "sequence-value": raw_name(0x30, der_tlv(0x02, b"\x01")),
    "bmp-lone-surrogate": raw_name(0x1E, b"\xd8\x00\x00a"),
}

#: TBSCertificate's leading fields in order (RFC 5280 §4.1), the explicit [0] version included.
TBS_FIELDS = ("version", "serial", "signature", "issuer", "validity", "subject", "spki")


def resign(
    certificate: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
    **fields: bytes,
) -> bytes:
    """`certificate` (DER) with the named `TBS_FIELDS` replaced by raw DER, signed again by `key`.

    The signature algorithm is kept, so `hash_algorithm` (default SHA-384) must be the one it
    names.
    """
    tbs, algorithm, _ = der_children(certificate)
    children = der_children(tbs)
    for name, value in fields.items():
        children[TBS_FIELDS.index(name)] = value
    body = der_tlv(0x30, b"".join(children))
    digest = hash_algorithm or hashes.SHA384()
    signature = key.sign(body, ec.ECDSA(digest, deterministic_signing=True))
    return der_tlv(0x30, body + algorithm + der_tlv(0x03, b"\x00" + signature))


# --- Documents ----------------------------------------------------------------------------------


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

    A P-256 key's r and s are left-padded to 48 bytes, so that it fits the ES384 envelope.
    """
    to_sign = builder.sig_structure(
        payload, protected=protected, context=context, external_aad=external_aad
    )
    return builder.ecdsa_signature(to_sign, key, high_s=high_s, scalar_size=_SCALAR_SIZE)


def envelope(
    payload: object,
    signature: object,
    *,
    protected: object = PROTECTED,
    unprotected: object = Raw(EMPTY_MAP),
    tag18: bool = False,
) -> bytes:
    """COSE_Sign1 `[protected, unprotected, payload, signature]`, untagged like the NSM's.

    Every part is any CBOR value (see `builder.encode`), so envelopes with wrong types can be built.
    """
    return builder.cose_sign1(
        payload, signature, protected=protected, unprotected=unprotected, tag18=tag18
    )


@dataclass(frozen=True)
class Doc:
    """One document's parts, before encoding; cases change one part and call `encode`."""

    leaf_der: bytes
    cabundle: tuple[bytes, ...]
    signer: ec.EllipticCurvePrivateKey
    timestamp_ms: int = ms(TIMESTAMP)
    pcrs: dict[int, bytes] = field(default_factory=production_pcrs)
    module_id: str = MODULE_ID
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    indefinite: bool = False

    def fields(self) -> list[tuple[object, object]]:
        """The nine payload entries in the NSM's order (Rust `AttestationDoc`), from the builder."""
        return builder.payload_entries(
            module_id=self.module_id,
            timestamp_ms=self.timestamp_ms,
            pcrs=self.pcrs,
            certificate=self.leaf_der,
            cabundle=self.cabundle,
            public_key=self.public_key,
            user_data=self.user_data,
            nonce=self.nonce,
        )

    def payload(self, entries: Sequence[tuple[object, object]] | None = None) -> bytes:
        return encode(
            builder.Map(tuple(self.fields() if entries is None else entries), self.indefinite)
        )

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

    def with_optional(self, key: str, value: bytes) -> Doc:
        """This document with `public_key`, `user_data` or `nonce` set to `value`."""
        if key == "public_key":
            return replace(self, public_key=value)
        if key == "user_data":
            return replace(self, user_data=value)
        if key == "nonce":
            return replace(self, nonce=value)
        raise ValueError(f"{key} is not an optional field")


def set_entry(
    entries: list[tuple[object, object]], key: str, value: object
) -> list[tuple[object, object]]:
    """`entries` with the value of `key` replaced."""
    return [(k, value if k == key else v) for k, v in entries]


def drop_entry(entries: list[tuple[object, object]], key: str) -> list[tuple[object, object]]:
    """`entries` without `key`."""
    return [(k, v) for k, v in entries if k != key]


def canonical_order(entries: list[tuple[object, object]]) -> list[tuple[object, object]]:
    """RFC 8949 length-first (canonical) key order."""
    return sorted(entries, key=lambda e: (len(encode(e[0])), encode(e[0])))


def flip_in(data: bytes, needle: bytes) -> bytes:
    """`data` with the first bit of `needle`'s first occurrence flipped."""
    out = bytearray(data)
    out[data.index(needle)] ^= 0x01
    return bytes(out)


# --- The world ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """The PKIs and keys every case builds on, and the baseline document."""

    pki: builder.Pki
    leaf: builder.CertifiedKey
    foreign: builder.Pki
    foreign_leaf: builder.CertifiedKey
    base: Doc

    @cached_property
    def payload(self) -> bytes:
        """The baseline payload."""
        return self.base.payload()

    @cached_property
    def signature(self) -> bytes:
        """The baseline payload's signature by the leaf."""
        return sign(self.payload, self.leaf.key)

    @cached_property
    def document(self) -> bytes:
        """The baseline document."""
        return envelope(self.payload, self.signature)

    def with_bundle(self, *replaced: tuple[int, x509.Certificate]) -> Doc:
        """The baseline with `cabundle[index]` replaced by each given certificate."""
        bundle = list(self.base.cabundle)
        for index, certificate in replaced:
            bundle[index] = der(certificate)
        return replace(self.base, cabundle=tuple(bundle))


def big_leaf(w: World, size: int) -> x509.Certificate:
    """The leaf reissued with a padding extension so that its DER is exactly `size` bytes."""
    return padded_to(
        size,
        lambda n, variant: reissue(
            w.leaf.certificate,
            label=f"leaf-size-{size}",
            issuer=w.pki.instance.certificate,
            issuer_key=w.pki.instance.key,
            append=[padding(n, variant)],
        ),
    )


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
