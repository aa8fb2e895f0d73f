"""`chain/`: the X.509 path from the leaf through `cabundle[1:]` to the pinned root."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtensionOID

from attestation import builder
from vectors.cases import Built, case, variant
from vectors.cases._world import (
    AT,
    BAD_NAMES,
    SEED,
    Changes,
    Doc,
    World,
    der,
    der_tlv,
    filler,
    ms,
    pem,
    reissue,
    resign,
    rsa_public_key,
    serial,
)

_MINUTE = timedelta(minutes=1)
_BC = ExtensionOID.BASIC_CONSTRAINTS
_KU = ExtensionOID.KEY_USAGE
_UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.99.2"), b"\x05\x00")
_ROLES = ("regional", "zonal", "instance")  # cabundle[1], [2], [3]


def _ca(w: World, index: int) -> builder.CertifiedKey:
    """The CA at `cabundle[index]` (0 is the root)."""
    pki = w.pki
    return (pki.root, pki.regional, pki.zonal, pki.instance)[index]


def ca_variant(
    w: World,
    index: int,
    label: str,
    *,
    change: Changes | None = None,
    append: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Doc:
    """The baseline with the CA at `cabundle[index]` reissued by its issuer, as changed."""
    issuer = _ca(w, index - 1)
    certificate = reissue(
        _ca(w, index).certificate,
        label=label,
        issuer=issuer.certificate,
        issuer_key=issuer.key,
        change=change,
        append=append,
    )
    return w.with_bundle((index, certificate))


def leaf_variant(
    w: World,
    label: str,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: CertificateIssuerPrivateKeyTypes | None = None,
    public_key: CertificatePublicKeyTypes | None = None,
    change: Changes | None = None,
    append: Sequence[tuple[x509.ExtensionType, bool]] = (),
    hash_algorithm: hashes.SHA256 | None = None,
) -> Doc:
    """The baseline with the leaf reissued (by the instance CA unless told otherwise)."""
    certificate = reissue(
        w.leaf.certificate,
        label=label,
        issuer=w.pki.instance.certificate if issuer is None else issuer,
        issuer_key=w.pki.instance.key if issuer_key is None else issuer_key,
        public_key=public_key,
        change=change,
        append=append,
        hash_algorithm=hash_algorithm,
    )
    return replace(w.base, leaf_der=der(certificate))


# Validity, level by level: each certificate reissued with one window that misses AT.


@case(
    None,
    variants=[
        variant(
            f"{role}-{state}",
            index=index,
            expired=state == "expired",
            role=role,
            when="expired one minute before"
            if state == "expired"
            else "becomes valid one minute after",
            error="chain.expired" if state == "expired" else "chain.not-yet-valid",
        )
        for index, role in enumerate(_ROLES, start=1)
        for state in ("expired", "not-yet-valid")
    ],
)
def ca_validity(w: World, *, index: int, expired: bool, role: str, when: str) -> bytes:
    """The {role} CA (cabundle[{index}]) {when} the verification time; every other certificate
    is valid."""
    original = _ca(w, index).certificate
    lifetime = original.not_valid_after_utc - original.not_valid_before_utc
    start = AT - _MINUTE - lifetime if expired else AT + _MINUTE
    issuer = _ca(w, index - 1)
    certificate = reissue(
        original,
        label=f"{role}-{'expired' if expired else 'not-yet-valid'}",
        issuer=issuer.certificate,
        issuer_key=issuer.key,
        not_before=start,
        not_after=start + lifetime,
    )
    return w.with_bundle((index, certificate)).encode()


@case(
    None,
    variants=[
        variant(
            f"root-{name}",
            root_file=f"roots/root-{name}.pem",
            state=state,
            window=window,
            error=error,
        )
        for name, state, window, error in (
            (
                "expired",
                "expired",
                (datetime(2020, 1, 1, tzinfo=UTC), AT - _MINUTE),
                "chain.expired",
            ),
            (
                "not-yet-valid",
                "not yet valid",
                (AT + _MINUTE, datetime(2050, 1, 1, tzinfo=UTC)),
                "chain.not-yet-valid",
            ),
        )
    ],
)
def root_validity(
    w: World, *, root_file: str, state: str, window: tuple[datetime, datetime]
) -> Built:
    """The pinned root (same key and name, {root_file}) is {state} at the verification time;
    cabundle[0] is that root; AWS: every certificate including the root must be valid."""
    root = reissue(
        w.pki.root.certificate,
        label=root_file.removeprefix("roots/").removesuffix(".pem"),
        issuer=None,
        issuer_key=w.pki.root.key,
        not_before=window[0],
        not_after=window[1],
    )
    return Built(w.with_bundle((0, root)).encode(), roots={root_file: pem(root)})


@case("chain.expired")
def leaf_expired(w: World) -> bytes:
    """The leaf expired one minute before the verification time; the document was signed two
    minutes before it (inside the leaf's life and the policy's max age)."""
    start = AT - _MINUTE - builder.LEAF_LIFETIME
    doc = _leaf_window(w, "leaf-expired", start)
    return replace(doc, timestamp_ms=ms(AT - 2 * _MINUTE)).encode()


@case("chain.not-yet-valid")
def leaf_not_yet_valid(w: World) -> bytes:
    """The leaf becomes valid one minute after the verification time."""
    return _leaf_window(w, "leaf-not-yet-valid", AT + _MINUTE).encode()


def _leaf_window(w: World, label: str, start: datetime) -> Doc:
    certificate = reissue(
        w.leaf.certificate,
        label=label,
        issuer=w.pki.instance.certificate,
        issuer_key=w.pki.instance.key,
        not_before=start,
        not_after=start + builder.LEAF_LIFETIME,
    )
    return replace(w.base, leaf_der=der(certificate))


@case("chain.untrusted")
def leaf_wrong_issuer_key(w: World) -> bytes:
    """The leaf names the instance CA as issuer (and its key identifier) but is signed by
    another P-384 key."""
    stranger = builder.derive_key(SEED, "vectors/stranger")
    return leaf_variant(w, "leaf-wrong-issuer-key", issuer_key=stranger).encode()


@case("chain.untrusted")
def leaf_wrong_issuer_name(w: World) -> bytes:
    """The leaf is signed by the instance CA's key but names the zonal CA as its issuer."""
    return leaf_variant(w, "leaf-wrong-issuer-name", issuer=w.pki.zonal.certificate).encode()


@case("chain.untrusted")
def missing_intermediate(w: World) -> bytes:
    """The zonal CA is left out of cabundle: the instance CA has no issuer in the bundle."""
    bundle = w.base.cabundle
    return replace(w.base, cabundle=(bundle[0], bundle[1], bundle[3])).encode()


@case("chain.path-mismatch")
def cabundle_reversed(w: World) -> bytes:
    """cabundle[1:] in leaf-first order (instance, zonal, regional) instead of AWS's root-first
    order: the bundle is not the ordered path (AWS §3.2.3 defines the order)."""
    bundle = w.base.cabundle
    return replace(w.base, cabundle=(bundle[0], *reversed(bundle[1:]))).encode()


@case("chain.path-mismatch")
def cabundle_extra_certificate(w: World) -> bytes:
    """A foreign CA certificate inserted between the zonal and instance CAs: the bundle is not
    exactly the path."""
    bundle = w.base.cabundle
    return replace(w.base, cabundle=(*bundle[:3], w.foreign.zonal.der, bundle[3])).encode()


@case("chain.path-mismatch")
def leaf_issued_by_zonal(w: World) -> bytes:
    """A correctly signed leaf issued by the zonal CA, with the full bundle: the path skips
    the instance CA, so it is not leaf + reversed cabundle[1:]."""
    leaf = w.leaf.certificate
    by_zonal = builder.issue_certificate(
        subject=leaf.subject,
        public_key=w.leaf.key.public_key(),
        issuer=w.pki.zonal.certificate,
        issuer_key=w.pki.zonal.key,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        ca=False,
        key_usage=builder.LEAF_KEY_USAGE,
        key_usage_critical=False,
        serial_number=serial("leaf-issued-by-zonal"),
    )
    return replace(w.base, leaf_der=der(by_zonal)).encode()


@case("chain.invalid")
def intermediate_ca_false(w: World) -> bytes:
    """The instance CA has basicConstraints CA:false (keyUsage keyCertSign kept)."""
    change: Changes = {_BC: (x509.BasicConstraints(ca=False, path_length=None), True)}
    return ca_variant(w, 3, "instance-ca-false", change=change).encode()


@case("chain.invalid")
def intermediate_no_basic_constraints(w: World) -> bytes:
    """The zonal CA has no basicConstraints extension at all."""
    return ca_variant(w, 2, "zonal-no-bc", change={_BC: None}).encode()


@case("chain.invalid")
def intermediate_basic_constraints_not_critical(w: World) -> bytes:
    """The regional CA's basicConstraints is not critical (AWS §3.2.3.2: it must be)."""
    change: Changes = {_BC: (x509.BasicConstraints(ca=True, path_length=2), False)}
    return ca_variant(w, 1, "regional-bc-noncritical", change=change).encode()


@case("chain.invalid")
def pathlen_violation(w: World) -> bytes:
    """The zonal CA has pathLen 0, yet the instance CA follows it."""
    change: Changes = {_BC: (x509.BasicConstraints(ca=True, path_length=0), True)}
    return ca_variant(w, 2, "zonal-pathlen-0", change=change).encode()


@case("chain.invalid")
def intermediate_missing_key_usage(w: World) -> bytes:
    """The instance CA has no keyUsage extension."""
    return ca_variant(w, 3, "instance-no-ku", change={_KU: None}).encode()


@case("chain.invalid")
def intermediate_missing_key_cert_sign(w: World) -> bytes:
    """The zonal CA's keyUsage is digitalSignature and cRLSign, without keyCertSign."""
    change: Changes = {_KU: (builder.key_usage(digital_signature=True, crl_sign=True), True)}
    return ca_variant(w, 2, "zonal-no-keycertsign", change=change).encode()


@case("chain.invalid")
def intermediate_unknown_critical_extension(w: World) -> bytes:
    """The zonal CA carries an unknown extension marked critical (RFC 5280 §4.2: reject)."""
    return ca_variant(w, 2, "zonal-unknown-critical", append=[(_UNKNOWN, True)]).encode()


@case("chain.invalid")
def leaf_unknown_critical_extension(w: World) -> bytes:
    """The leaf carries an unknown extension marked critical."""
    return leaf_variant(w, "leaf-unknown-critical", append=[(_UNKNOWN, True)]).encode()


@case(None)
def reissued_control(w: World) -> bytes:
    """Control: every intermediate and the leaf reissued by the corpus's own certificate copier
    with nothing changed (new serials only). Valid, which shows that each chain failure above
    comes from the one change its case makes."""
    regional = ca_variant(w, 1, "regional-control")
    zonal = reissue(
        w.pki.zonal.certificate,
        label="zonal-control",
        issuer=w.pki.regional.certificate,
        issuer_key=w.pki.regional.key,
    )
    instance = reissue(
        w.pki.instance.certificate,
        label="instance-control",
        issuer=w.pki.zonal.certificate,
        issuer_key=w.pki.zonal.key,
    )
    return replace(
        regional,
        cabundle=(*regional.cabundle[:2], der(zonal), der(instance)),
        leaf_der=leaf_variant(w, "leaf-control").leaf_der,
    ).encode()


# The trust anchor.


@case(None)
def foreign_root_in_cabundle0(w: World) -> bytes:
    """cabundle[0] is another self-signed root, while cabundle[1:] chains to the pinned root.
    cabundle[0] is never the anchor (the chain is built to the pinned root), so it carries no
    trust and the document is valid."""
    return w.with_bundle((0, w.foreign.root.certificate)).encode()


@case("chain.untrusted")
def foreign_anchor(w: World) -> bytes:
    """A complete, well-formed chain under another root (in cabundle[0]) that is not pinned."""
    foreign = replace(
        w.base,
        leaf_der=w.foreign_leaf.der,
        cabundle=tuple(w.foreign.cabundle),
        signer=w.foreign_leaf.key,
    )
    return foreign.encode()


# The leaf's key and signature algorithm.


@case("chain.leaf-key")
def leaf_p256(w: World) -> bytes:
    """The leaf key is ECDSA P-256 instead of P-384 (the leaf is otherwise valid). The document
    is signed by that key (ECDSA with SHA-384, r and s left-padded to 48 bytes), so a verifier
    that takes any curve from the leaf would accept it."""
    p256 = builder.derive_key(SEED, "vectors/leaf-p256", curve=ec.SECP256R1())
    doc = leaf_variant(w, "leaf-p256", public_key=p256.public_key())
    return replace(doc, signer=p256).encode()


@case("chain.leaf-key")
def leaf_p521(w: World) -> bytes:
    """The leaf key is ECDSA P-521 instead of P-384 (the leaf is otherwise valid, signed
    ecdsa-with-SHA384). A P-521 signature does not fit the 96-byte envelope, so the envelope
    carries the real P-384 leaf's signature; the leaf must be refused first."""
    p521 = builder.derive_key(SEED, "vectors/leaf-p521", curve=ec.SECP521R1())
    return leaf_variant(w, "leaf-p521", public_key=p521.public_key()).encode()


@case("chain.leaf-key")
def leaf_rsa(w: World) -> bytes:
    """The leaf key is RSA-2048 (vectors/keys/rsa-leaf-test-key.pub.pem). An RSA signature
    does not fit the 96-byte envelope, so the envelope carries the real P-384 leaf's signature;
    the leaf must be refused first."""
    return leaf_variant(w, "leaf-rsa", public_key=rsa_public_key()).encode()


@case("chain.leaf-key")
def leaf_ed25519(w: World) -> bytes:
    """The leaf key is Ed25519. The envelope carries the real P-384 leaf's signature (an
    Ed25519 signature is 64 bytes); the leaf must be refused first."""
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(filler("leaf-ed25519", 32))
    return leaf_variant(w, "leaf-ed25519", public_key=ed.public_key()).encode()


@case("chain.leaf-algorithm")
def leaf_signed_sha256(w: World) -> bytes:
    """The leaf is signed by the instance CA with ecdsa-with-SHA256 instead of SHA384."""
    return leaf_variant(w, "leaf-sha256", hash_algorithm=hashes.SHA256()).encode()


@case("chain.leaf-usage")
def leaf_is_ca(w: World) -> bytes:
    """The leaf has basicConstraints CA:true (critical)."""
    change: Changes = {_BC: (x509.BasicConstraints(ca=True, path_length=None), True)}
    return leaf_variant(w, "leaf-is-ca", change=change).encode()


@case("chain.leaf-usage")
def leaf_no_digital_signature(w: World) -> bytes:
    """The leaf's keyUsage is nonRepudiation only (AWS §3.2.3.3: it needs digitalSignature)."""
    change: Changes = {_KU: (builder.key_usage(non_repudiation=True), False)}
    return leaf_variant(w, "leaf-no-ds", change=change).encode()


@case("chain.leaf-usage")
def leaf_missing_key_usage(w: World) -> bytes:
    """The leaf has no keyUsage extension (it needs digitalSignature)."""
    return leaf_variant(w, "leaf-no-ku", change={_KU: None}).encode()


@case("chain.certificate-malformed")
def leaf_malformed_der(w: World) -> bytes:
    """certificate holds bytes that are not a DER certificate (the leaf's DER with its first
    byte changed)."""
    return replace(w.base, leaf_der=b"\x31" + w.base.leaf_der[1:]).encode()


def _serial_der(label: str) -> bytes:
    """A fresh positive serial (DER INTEGER), so no re-signed certificate repeats another's."""
    return der_tlv(0x02, serial(label).to_bytes(16, "big"))


#: What each of `BAD_NAMES` holds, for the descriptions.
_BAD_NAME_WHAT = {
    "utf8-invalid": "a UTF8String with an 0xff byte",
    "utf8-overlong": "a UTF8String with an overlong encoding of '/' (c0 af)",
    "utf8-lone-surrogate": "a UTF8String with an encoded lone surrogate (ed a0 80)",
    "utf8-truncated": "a UTF8String ending in the middle of a character (e2 82)",
    "teletex-8bit": "a TeletexString with 8-bit bytes (e9), which have no agreed decoding",
    "sequence-value": "a SEQUENCE instead of a string",
    "bmp-lone-surrogate": "a BMPString with a lone surrogate (d800)",
}


@case(
    "chain.certificate-malformed",
    variants=[
        variant(
            f"{position}-name-{kind}",
            position=position,
            kind=kind,
            where=where,
            what=_BAD_NAME_WHAT[kind],
        )
        for position, where in (
            ("leaf", "the leaf's subject"),
            ("instance", "the instance CA's subject (and the leaf's issuer)"),
        )
        for kind in BAD_NAMES
    ],
)
def undecodable_name(w: World, *, position: str, kind: str, where: str, what: str) -> bytes:
    """The commonName of {where} is {what}: the name cannot be decoded, so the certificate is
    malformed (every certificate re-signed, so nothing else is wrong)."""
    name = BAD_NAMES[kind]
    label = f"{position}-name-{kind}"
    if position == "leaf":
        leaf = resign(w.leaf.der, w.pki.instance.key, serial=_serial_der(label), subject=name)
        return replace(w.base, leaf_der=leaf).encode()
    instance = resign(
        der(w.pki.instance.certificate),
        w.pki.zonal.key,
        serial=_serial_der(f"{label}/ca"),
        subject=name,
    )
    leaf = resign(w.leaf.der, w.pki.instance.key, serial=_serial_der(label), issuer=name)
    return replace(w.base, leaf_der=leaf, cabundle=(*w.base.cabundle[:3], instance)).encode()


@case("chain.certificate-malformed")
def leaf_serial_negative(w: World) -> bytes:
    """The leaf's serial number INTEGER starts with 0x80: negative, which RFC 5280 §4.1.2.2
    forbids (the leaf is re-signed)."""
    value = b"\x80" + serial("leaf-serial-negative").to_bytes(16, "big")[1:]
    leaf = resign(w.leaf.der, w.pki.instance.key, serial=der_tlv(0x02, value))
    return replace(w.base, leaf_der=leaf).encode()


@case(
    "chain.certificate-malformed",
    variants=[
        variant("leaf-x509-v2", number=1, what="1 (X.509 v2)"),
        variant("leaf-x509-version-5", number=5, what="5, which is no X.509 version"),
    ],
)
def leaf_version(w: World, *, number: int, what: str) -> bytes:
    """The leaf's version number is {what}; only v3 (2) can carry extensions, and the leaf
    needs them (the leaf is re-signed)."""
    label = f"leaf-version-{number}"
    version = der_tlv(0xA0, der_tlv(0x02, bytes((number,))))
    leaf = resign(w.leaf.der, w.pki.instance.key, serial=_serial_der(label), version=version)
    return replace(w.base, leaf_der=leaf).encode()
