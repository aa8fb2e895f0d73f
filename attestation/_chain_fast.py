"""The fast path of chain validation: the AWS chain shape, checked rule by rule.

`_chain.ChainValidator` tries `fast_path` first and falls back to the cryptography engine
whenever it declines; `_chain`'s docstring says which rules both enforce and why there are two.
`VerifiedChain`, the result of either path, lives here because this is the lower of the two
modules.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

__all__ = ["VerifiedChain", "anchor_of", "fast_path", "serial_is_positive"]


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A validated path, leaf first and root last, and the window in which all of it is valid."""

    certificates: tuple[x509.Certificate, ...]
    not_before: _dt.datetime
    not_after: _dt.datetime
    leaf_key: ec.EllipticCurvePublicKey


# --- the fast path's view of a certificate ------------------------------------------------

# Longest bundle the fast path models (AWS: 3 intermediates); longer ones go to the engine.
_FAST_MAX_INTERMEDIATES = 6
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())
# AlgorithmIdentifier ecdsa-with-SHA384, parameters absent (RFC 5758 §3.2), DER.
_ECDSA_SHA384_DER = bytes.fromhex("300a06082a8648ce3d040303")
# SubjectPublicKeyInfo algorithm: id-ecPublicKey, namedCurve secp384r1 (RFC 5480 §2.1.1), DER.
_P384_SPKI_DER = bytes.fromhex("301006072a8648ce3d020106052b81040022")
_NOT_A_CA = -1
_BC = ExtensionOID.BASIC_CONSTRAINTS
_KU = ExtensionOID.KEY_USAGE
_AKI = ExtensionOID.AUTHORITY_KEY_IDENTIFIER
_SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER
_AIA = ExtensionOID.AUTHORITY_INFORMATION_ACCESS
_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
_NC = ExtensionOID.NAME_CONSTRAINTS
_EKU = ExtensionOID.EXTENDED_KEY_USAGE


@dataclass(frozen=True, slots=True)
class _Shape:
    """DER fields compared as bytes: names, SPKI algorithm, signature algorithm."""

    issuer: bytes
    subject: bytes
    spki_algorithm: bytes
    signature_algorithm: bytes
    tbs: bytes
    """The TBSCertificate element exactly as received: the bytes its issuer signed."""
    signature: bytes
    """The signatureValue BIT STRING's content after its unused-bits byte (DER ECDSA-Sig-Value)."""


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at `pos`; ValueError/IndexError if bad."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 3:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    end = pos + length
    if end > len(der):
        raise ValueError("DER element runs past its parent")
    return tag, pos, end


def _time_ok(der: bytes, pos: int) -> int:
    """End of the Time at `pos`; webpki: GeneralizedTime only from 2050 (RFC 5280 §4.1.2.5)."""
    tag, start, end = _tlv(der, pos)
    if tag == 0x18 and 1950 <= int(der[start : start + 4]) <= 2049:
        raise ValueError("GeneralizedTime before 2050")
    if tag not in (0x17, 0x18):
        raise ValueError("not a Time")
    return end


def _tbs_serial(der: bytes) -> bytes:
    """The content octets of the TBSCertificate's serialNumber; ValueError/IndexError if bad."""
    _, start, _ = _tlv(der, 0)  # Certificate
    _, tbs_start, _ = _tlv(der, start)  # TBSCertificate
    tag, begin, pos = _tlv(der, tbs_start)
    if tag == 0xA0:  # [0] version
        tag, begin, pos = _tlv(der, pos)
    if tag != 0x02:
        raise ValueError("no serial number")
    return der[begin:pos]


def serial_is_positive(der: bytes) -> bool:
    """False if the DER's serial number is negative or zero (RFC 5280 §4.1.2.2: positive).

    Checked before cryptography parses the certificate: cryptography accepts such a serial with
    a deprecation warning (to become an error), and a warning is no way to refuse a
    certificate. True if the DER is too broken to find the serial: the parser then says why.
    """
    try:
        serial = _tbs_serial(der)
    except (ValueError, IndexError):
        return True
    return bool(serial) and not serial[0] & 0x80 and any(serial)


# Directory string types the fast path decodes itself (X.520): UTF8String must be valid UTF-8
# (no overlong form, no surrogate), PrintableString (its alphabet is checked when cryptography
# loads the certificate) and IA5String in ASCII. Any other attribute value (TeletexString,
# BMPString, UniversalString, a SEQUENCE, ...) is left to the engine, which decodes it or says
# `chain.certificate-malformed`.
_UTF8_STRING = 0x0C
_ASCII_STRINGS = (0x13, 0x16)


@functools.lru_cache(maxsize=256)
def _name_decodes(name: bytes) -> bool:
    """Whether every attribute value of the DER Name `name` is a string the engine decodes.

    The fast path compares names as bytes and never builds `x509.Name` objects (about 30 µs
    each); this walk is what keeps it from accepting a name the engine would refuse to decode.
    Names recur across chains (one CA per parent instance, per zone), hence the cache.
    """
    try:
        tag, pos, end = _tlv(name, 0)
        if tag != 0x30 or end != len(name):
            return False
        while pos < end:
            tag, attribute, rdn_end = _tlv(name, pos)  # RelativeDistinguishedName: SET OF
            if tag != 0x31 or attribute == rdn_end:
                return False
            while attribute < rdn_end:
                tag, oid, attribute_end = _tlv(name, attribute)  # AttributeTypeAndValue
                if tag != 0x30:
                    return False
                tag, _, value = _tlv(name, oid)
                if tag != 0x06:
                    return False
                tag, start, stop = _tlv(name, value)
                if stop != attribute_end:
                    return False
                content = name[start:stop]
                if tag == _UTF8_STRING:
                    content.decode("utf-8")
                elif tag not in _ASCII_STRINGS or not content.isascii():
                    return False
                attribute = attribute_end
            pos = rdn_end
    except (ValueError, IndexError):  # UnicodeDecodeError is a ValueError
        return False
    return True


def _shape(der: bytes) -> _Shape | None:
    """The fields above, or None if the certificate breaks a webpki basic rule.

    Basic rules (cryptography's `permits_basic`): outer signature algorithm equal to the TBS
    one; serial 1..21 bytes and not negative; issuer not empty; UTCTime before 2050.
    """
    _, start, end = _tlv(der, 0)  # Certificate
    _, tbs_start, tbs_end = _tlv(der, start)  # TBSCertificate
    _, _, outer_end = _tlv(der, tbs_end)
    outer_algorithm = der[tbs_end:outer_end]
    # signatureValue: a BIT STRING with no unused bits, the last element of the certificate.
    tag, value_start, value_end = _tlv(der, outer_end)
    if tag != 0x03 or value_end != end or der[value_start] != 0:
        return None
    tag, begin, pos = _tlv(der, tbs_start)
    if tag == 0xA0:  # [0] version
        tag, begin, pos = _tlv(der, pos)
    if tag != 0x02 or not 1 <= pos - begin <= 21 or der[begin] & 0x80:
        return None  # serial
    algorithm_start = pos
    _, _, pos = _tlv(der, pos)
    if der[algorithm_start:pos] != outer_algorithm:
        return None
    issuer_start = pos
    _, issuer_content, pos = _tlv(der, pos)
    if pos == issuer_content:
        return None  # empty issuer
    issuer = der[issuer_start:pos]
    _, validity, pos = _tlv(der, pos)
    _time_ok(der, _time_ok(der, validity))
    subject_start = pos
    _, _, pos = _tlv(der, pos)
    subject = der[subject_start:pos]
    _, spki, _ = _tlv(der, pos)
    _, _, spki_algorithm_end = _tlv(der, spki)
    return _Shape(
        issuer,
        subject,
        der[spki:spki_algorithm_end],
        outer_algorithm,
        der[start:tbs_end],
        der[value_start + 1 : value_end],
    )


def _p384_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The key of a certificate whose SPKI algorithm is P-384 (checked by the caller).

    `Certificate.public_key()` decodes the point and checks that it lies on the curve
    (ValueError if not), and keeps the key on the certificate object: a validator's parsed
    certificates are cached by DER, so an intermediate's key is built once per validator, not
    once per chain it appears in.
    """
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("not an EC key")
    return key


def _leaf_extensions_ok(leaf: x509.Certificate) -> bool:
    """Our leaf rules and the engine's EE policy (webpki, with SAN/AKI/EKU relaxed)."""
    digital_signature = False
    for ext in leaf.extensions:
        oid = ext.oid
        value: Any = ext.value
        if oid == _KU:
            if value.key_cert_sign:
                return False
            digital_signature = value.digital_signature
        elif oid == _BC:
            if value.ca:
                return False
        elif oid == _AIA:
            if ext.critical:
                return False
        elif oid == _NC:
            return False
        elif oid in (_AKI, _SKI, _SAN, _EKU):
            continue
        elif ext.critical:
            return False  # unknown critical extension
    return digital_signature


def _ca_extensions(cert: x509.Certificate, *, intermediate: bool) -> int | None:
    """pathLen (None: unlimited) if `cert` passes the CA policy, else `_NOT_A_CA`.

    webpki CA policy: basicConstraints present, critical, cA; keyUsage present with
    keyCertSign (critical too for a bundle CA: our AWS §3.2.3.2 rule); AKI, SKI, AIA not
    critical, AKI with a keyIdentifier and nothing else; no unknown critical extension. Name
    constraints and extendedKeyUsage are left to the engine.
    """
    path_length: int | None = _NOT_A_CA
    key_cert_sign = False
    for ext in cert.extensions:
        oid = ext.oid
        value: Any = ext.value
        if oid == _BC:
            if not ext.critical or not value.ca:
                return _NOT_A_CA
            path_length = value.path_length
        elif oid == _KU:
            if intermediate and not ext.critical:
                return _NOT_A_CA
            key_cert_sign = value.key_cert_sign
        elif oid == _AKI:
            if ext.critical or value.key_identifier is None:
                return _NOT_A_CA
            if value.authority_cert_issuer is not None:
                return _NOT_A_CA
            if value.authority_cert_serial_number is not None:
                return _NOT_A_CA
        elif oid in (_SKI, _AIA):
            if ext.critical:
                return _NOT_A_CA
        elif oid == _SAN:
            continue
        elif oid in (_NC, _EKU) or ext.critical:
            return _NOT_A_CA
    return path_length if key_cert_sign else _NOT_A_CA


@dataclass(frozen=True, slots=True)
class _Anchor:
    certificate: x509.Certificate
    subject: bytes
    key: ec.EllipticCurvePublicKey
    path_length: int | None
    not_before: _dt.datetime
    not_after: _dt.datetime


@functools.lru_cache(maxsize=16)
def anchor_of(root: x509.Certificate) -> _Anchor | None:
    """A root as the fast path uses it, or None if the engine must judge it (not P-384, ...).

    The checks that do not depend on the time are done once per root and process: the root is
    configuration. Its validity is checked at every verification.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        shape = _shape(root.public_bytes(Encoding.DER))
        key = root.public_key()
        path_length = _ca_extensions(root, intermediate=False)
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm, x509.DuplicateExtension):
        return None
    if (
        shape is None
        or root.version is not x509.Version.v3
        or shape.spki_algorithm != _P384_SPKI_DER
        or not isinstance(key, ec.EllipticCurvePublicKey)
        or path_length == _NOT_A_CA
    ):
        return None
    return _Anchor(
        root, shape.subject, key, path_length, root.not_valid_before_utc, root.not_valid_after_utc
    )


def fast_path(
    anchors: tuple[_Anchor, ...],
    leaf_der: bytes,
    leaf: x509.Certificate,
    intermediate_ders: Sequence[bytes],
    intermediates: list[x509.Certificate],
    at: _dt.datetime,
) -> VerifiedChain | None:
    """The whole profile, checked explicitly for the chain shape AWS issues; else `None`.

    Accepts only if every rule of `_validate_engine` (ours and the engine's webpki ones
    for this shape) holds; declines (returns `None`) on anything else, including anything
    it does not model, so that the engine path decides and names the error.
    """
    count = len(intermediates)
    if not anchors or not 1 <= count <= _FAST_MAX_INTERMEDIATES:
        return None
    ders = [leaf_der, *reversed(intermediate_ders)]
    if len(set(ders)) != len(ders):
        return None
    try:
        return _fast_checks(anchors, ders, [leaf, *reversed(intermediates)], at)
    except (ValueError, TypeError, IndexError, InvalidSignature, UnsupportedAlgorithm):
        return None


def _fast_checks(
    anchors: tuple[_Anchor, ...], ders: list[bytes], path: list[x509.Certificate], at: _dt.datetime
) -> VerifiedChain | None:
    shapes = [_shape(der) for der in ders]
    windows = []
    for cert, shape in zip(path, shapes, strict=True):
        # RFC 5280 §4.1.2.5 at full precision; v3; webpki's serial/issuer/time encodings.
        window = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        if shape is None or not window[0] <= at <= window[1]:
            return None
        if not (_name_decodes(shape.subject) and _name_decodes(shape.issuer)):
            return None
        if cert.version is not x509.Version.v3:
            return None
        windows.append(window)
    leaf, leaf_shape = path[0], shapes[0]
    assert leaf_shape is not None  # checked above
    if leaf_shape.spki_algorithm != _P384_SPKI_DER or not _leaf_extensions_ok(leaf):
        return None
    leaf_key = _p384_key(leaf)
    # Links: child signed by parent with ecdsa-with-SHA384 (outer and TBS algorithm the
    # same, no parameters), names chained byte for byte, parent a CA at this depth.
    for depth in range(len(path) - 1):
        parent = path[depth + 1]
        child_shape, parent_shape = shapes[depth], shapes[depth + 1]
        assert child_shape is not None and parent_shape is not None  # checked above
        if (
            child_shape.issuer != parent_shape.subject
            or parent_shape.issuer == parent_shape.subject  # self-issued: engine decides
            or child_shape.signature_algorithm != _ECDSA_SHA384_DER
            or parent_shape.spki_algorithm != _P384_SPKI_DER
        ):
            return None
        path_length = _ca_extensions(parent, intermediate=True)
        if path_length is _NOT_A_CA or (path_length is not None and path_length < depth):
            return None
        # Over the TBS bytes as received (RFC 5280 §4.1.1.3), the bytes cryptography re-encodes
        # for `tbs_certificate_bytes`: its parser is strict DER, so the two are the same.
        _p384_key(parent).verify(child_shape.signature, child_shape.tbs, _ECDSA_SHA384)
    top_shape = shapes[-1]
    assert top_shape is not None
    if top_shape.signature_algorithm != _ECDSA_SHA384_DER:
        return None
    depth = len(path) - 1
    for anchor in anchors:
        if (
            anchor.subject != top_shape.issuer
            or not anchor.not_before <= at <= anchor.not_after
            or (anchor.path_length is not None and anchor.path_length < depth)
        ):
            continue
        try:
            anchor.key.verify(top_shape.signature, top_shape.tbs, _ECDSA_SHA384)
        except InvalidSignature:
            continue
        return VerifiedChain(
            certificates=(*path, anchor.certificate),
            not_before=max(anchor.not_before, *(w[0] for w in windows)),
            not_after=min(anchor.not_after, *(w[1] for w in windows)),
            leaf_key=leaf_key,
        )
    return None
