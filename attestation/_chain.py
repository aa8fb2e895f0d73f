"""X.509 path validation from the document's leaf through `cabundle[1:]` to a pinned root.

AWS rules (`attestation_process.md` §3.2.3; reference/nsm.md §4.3), and who enforces each:

- the path is `[certificate, cabundle[N], ..., cabundle[1], ROOT]` with ROOT a pinned root, never
  the document's own `cabundle[0]` (it is not looked at: a document could carry anything there and
  the trust decision must not depend on it). The path must be exactly that order
  (`chain.path-mismatch` otherwise): AWS defines the bundle as the ordered chain;
- every certificate, including the root, valid at the verification time (explicit checks, so the
  error says `chain.expired` / `chain.not-yet-valid`);
- signatures, name chaining, basicConstraints critical with CA on CAs, pathLen, unknown critical
  extensions: cryptography's `x509.verification` rules with the webpki CA policy;
- keyUsage keyCertSign on CAs (critical on bundle CAs): explicit (the webpki CA policy does not
  require it critical);
- the leaf: ECDSA P-384 key, ecdsa-with-SHA384 signature, not a CA, keyUsage digitalSignature:
  explicit. The webpki EE policy is relaxed only where Nitro leaves differ from TLS certificates:
  they have no subjectAltName, no authorityKeyIdentifier and no extendedKeyUsage.

Two implementations of those rules, one decision:

- `_validate_engine` is the reference: the explicit checks above around cryptography's path
  builder (`x509.verification`, client verifier, the two extension policies). Every rejection
  and its code come from here.
- `_fast_path` checks the same rules explicitly, for the chain shape AWS issues (1 to 6
  intermediates, P-384 keys, ecdsa-with-SHA384, no self-issued CA, no name constraints or
  extendedKeyUsage on CAs): byte-equal issuer/subject names, the webpki basic rules (v3, outer
  and TBS signature algorithm equal, serial, issuer, time encodings), validity at `at`, the CA
  and EE extension policies, pathLen by depth, and each signature checked with the parent's key.
  It either accepts, or declines and lets the reference decide; it never rejects.

Why both: the engine verifies each link through its own key loading and policy machinery, about
60 µs more per link than the bare P-384 verification, which put a cold verification 25% above
the cost of the five signatures it cannot avoid; the explicit path is within a few percent of
it. The engine stays the judge of anything unusual and the independent cross-check:
`tests/attestation/test_chain_crosscheck.py` runs both on every real chain, every corpus chain
and hand-made edge cases, and requires that the fast path never accepts what the engine rejects
and always accepts the real chains.

Names on the fast path are compared as DER bytes and not decoded into Python objects (that costs
about 30 µs per name): a chain signed by a pinned root whose names cryptography cannot decode
is accepted as the engine would accept it; messages that show names go through `_describe`.

Verified paths are cached (bounded LRU keyed by the SHA-256 of the leaf and bundle DER). A cache
hit is used only if the verification time lies inside every certificate's validity window, which
is the only input of the result that changes between calls; otherwise the path is validated again
from scratch, so expiry is always reported correctly.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtensionOID, SignatureAlgorithmOID

from attestation.errors import CertificateExpired, CertificateNotYetValid, ChainError

__all__ = ["DEFAULT_CACHE_SIZE", "CacheInfo", "ChainValidator", "VerifiedChain"]

# Enough for every leaf of a large fleet over a leaf's 3-hour life; entries are ~5 KB.
DEFAULT_CACHE_SIZE = 1024
# Parsed certificates are shared by many chains (one instance CA per parent, one zonal CA per AZ).
_PARSED_CACHE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A validated path, leaf first and root last, and the window in which all of it is valid."""

    certificates: tuple[x509.Certificate, ...]
    not_before: _dt.datetime
    not_after: _dt.datetime
    leaf_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Chain cache counters for one `Verifier` (like `functools.lru_cache`'s)."""

    hits: int
    misses: int
    size: int
    maxsize: int


_CA_POLICY = xv.ExtensionPolicy.webpki_defaults_ca()
# Nitro leaves carry basicConstraints (CA:false) and keyUsage, nothing a TLS client certificate
# must have: relax exactly SAN, AKI and EKU (reference/verifiers.md §2.4, "TLS-server semantics
# on non-TLS certs"). Policies are immutable, so one pair serves every validator.
_EE_POLICY = (
    xv.ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, None)
)


@functools.lru_cache(maxsize=16)
def _store(roots: tuple[x509.Certificate, ...]) -> xv.Store:
    """One immutable trust store per root set, shared by validators in this process.

    The store is configuration, not a verification result: it holds the pinned roots and, once
    used, their parsed public keys. Sharing it means a new `Verifier` does not re-parse the root
    key; the chain cache (results) stays per instance.
    """
    return xv.Store(list(roots))


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


def _shape(der: bytes) -> _Shape | None:
    """The fields above, or None if the certificate breaks a webpki basic rule.

    Basic rules (cryptography's `permits_basic`): outer signature algorithm equal to the TBS
    one; serial 1..21 bytes and not negative; issuer not empty; UTCTime before 2050.
    """
    _, start, _ = _tlv(der, 0)  # Certificate
    _, tbs_start, tbs_end = _tlv(der, start)  # TBSCertificate
    _, _, outer_end = _tlv(der, tbs_end)
    outer_algorithm = der[tbs_end:outer_end]
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
    return _Shape(issuer, subject, der[spki:spki_algorithm_end], outer_algorithm)


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
def _anchor(root: x509.Certificate) -> _Anchor | None:
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


def _chain_error(code: str, message: str) -> ChainError:
    return ChainError(message, code=code)


def _describe(cert: x509.Certificate) -> str:
    """The subject for a message; names are not decoded on the success path, so may be odd."""
    try:
        return cert.subject.rfc4514_string()
    except (ValueError, TypeError, UnicodeError) as exc:
        return f"<serial {cert.serial_number:x}, undecodable subject: {exc}>"


def _check_validity(cert: x509.Certificate, at: _dt.datetime, role: str) -> None:
    # RFC 5280 §4.1.2.5: valid from notBefore to notAfter, both inclusive.
    if at < cert.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{role} {_describe(cert)} is valid from "
            f"{cert.not_valid_before_utc.isoformat()}, verification time {at.isoformat()}"
        )
    if at > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{role} {_describe(cert)} expired at "
            f"{cert.not_valid_after_utc.isoformat()}, verification time {at.isoformat()}"
        )


def _extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


class ChainValidator:
    """Validates Nitro certificate paths against fixed roots, with a per-instance cache."""

    def __init__(self, roots: Sequence[x509.Certificate], *, cache_size: int = DEFAULT_CACHE_SIZE):
        if not roots:
            raise ValueError("at least one trust root is required")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._roots = tuple(roots)
        self._store = _store(self._roots)
        self._anchors = tuple(a for a in map(_anchor, self._roots) if a is not None)
        self._maxsize = cache_size
        self._paths: OrderedDict[bytes, VerifiedChain] = OrderedDict()
        self._parsed: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        self._hits = 0
        self._misses = 0

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._roots

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._paths), self._maxsize)

    def validate(
        self, leaf: bytes, intermediates: Sequence[bytes], at: _dt.datetime
    ) -> VerifiedChain:
        """Validate `leaf` via `intermediates` (document order: root side first) at `at`."""
        digest = hashlib.sha256()
        for der in (leaf, *intermediates):
            digest.update(len(der).to_bytes(4, "big"))
            digest.update(der)
        key = digest.digest()
        cached = self._paths.get(key)
        if cached is not None and cached.not_before <= at <= cached.not_after:
            self._paths.move_to_end(key)
            self._hits += 1
            return cached
        self._misses += 1
        chain = self._validate_cold(leaf, intermediates, at)
        if self._maxsize:
            self._paths[key] = chain
            self._paths.move_to_end(key)
            while len(self._paths) > self._maxsize:
                self._paths.popitem(last=False)
        return chain

    def _load(self, der: bytes, role: str) -> x509.Certificate:
        cert = self._parsed.get(der)
        if cert is not None:
            self._parsed.move_to_end(der)
            return cert
        try:
            cert = x509.load_der_x509_certificate(der)
            # Touch the lazily parsed parts this module reads, so a malformed one fails here,
            # coded. Names are not decoded into Python objects (about 30 us each, the largest
            # cost of a cold verification after the signatures): the engine compares them
            # structurally, and messages that show them go through `_describe`.
            for part in ("version", "extensions", "signature_algorithm_oid"):
                getattr(cert, part)
            cert.not_valid_before_utc  # noqa: B018
            cert.not_valid_after_utc  # noqa: B018
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
            # cryptography raises ValueError for bad DER, UnsupportedAlgorithm for odd keys.
            raise _chain_error("chain.certificate-malformed", f"{role}: {exc}") from exc
        except (x509.UnsupportedGeneralNameType, x509.DuplicateExtension) as exc:
            raise _chain_error("chain.certificate-malformed", f"{role}: {exc}") from exc
        if self._maxsize:
            self._parsed[der] = cert
            while len(self._parsed) > self._maxsize * _PARSED_CACHE_FACTOR:
                self._parsed.popitem(last=False)
        return cert

    def _validate_cold(
        self, leaf_der: bytes, intermediate_ders: Sequence[bytes], at: _dt.datetime
    ) -> VerifiedChain:
        # (1) Parse. Bundle order is root side first; the leaf's issuer is the last entry.
        leaf = self._load(leaf_der, "certificate")
        intermediates = [
            self._load(der, f"cabundle[{i + 1}]") for i, der in enumerate(intermediate_ders)
        ]
        # The fast path accepts or declines; it never decides a rejection (see module docs).
        chain = self._fast_path(leaf_der, leaf, intermediate_ders, intermediates, at)
        if chain is not None:
            return chain
        return self._validate_engine(leaf, intermediates, at)

    def _fast_path(
        self,
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
        if not self._anchors or not 1 <= count <= _FAST_MAX_INTERMEDIATES:
            return None
        ders = [leaf_der, *reversed(intermediate_ders)]
        if len(set(ders)) != len(ders):
            return None
        try:
            return self._fast_checks(ders, [leaf, *reversed(intermediates)], at)
        except (ValueError, TypeError, IndexError, InvalidSignature, UnsupportedAlgorithm):
            return None

    def _fast_checks(
        self, ders: list[bytes], path: list[x509.Certificate], at: _dt.datetime
    ) -> VerifiedChain | None:
        shapes = [_shape(der) for der in ders]
        windows = []
        for cert, shape in zip(path, shapes, strict=True):
            # RFC 5280 §4.1.2.5 at full precision; v3; webpki's serial/issuer/time encodings.
            window = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            if shape is None or not window[0] <= at <= window[1]:
                return None
            if cert.version is not x509.Version.v3:
                return None
            windows.append(window)
        leaf = path[0]
        leaf_key = leaf.public_key()
        if not (
            isinstance(leaf_key, ec.EllipticCurvePublicKey)
            and isinstance(leaf_key.curve, ec.SECP384R1)
            and _leaf_extensions_ok(leaf)
        ):
            return None
        # Links: child signed by parent with ecdsa-with-SHA384 (outer and TBS algorithm the
        # same, no parameters), names chained byte for byte, parent a CA at this depth.
        for depth in range(len(path) - 1):
            child, parent = path[depth], path[depth + 1]
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
            key = parent.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)  # P-384 SPKI, checked above
            key.verify(child.signature, child.tbs_certificate_bytes, _ECDSA_SHA384)
        top, top_shape = path[-1], shapes[-1]
        assert top_shape is not None
        if top_shape.signature_algorithm != _ECDSA_SHA384_DER:
            return None
        depth = len(path) - 1
        for anchor in self._anchors:
            if (
                anchor.subject != top_shape.issuer
                or not anchor.not_before <= at <= anchor.not_after
                or (anchor.path_length is not None and anchor.path_length < depth)
            ):
                continue
            try:
                anchor.key.verify(top.signature, top.tbs_certificate_bytes, _ECDSA_SHA384)
            except InvalidSignature:
                continue
            return VerifiedChain(
                certificates=(*path, anchor.certificate),
                not_before=max(anchor.not_before, *(w[0] for w in windows)),
                not_after=min(anchor.not_after, *(w[1] for w in windows)),
                leaf_key=leaf_key,
            )
        return None

    def _validate_engine(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], at: _dt.datetime
    ) -> VerifiedChain:
        """The reference path: explicit checks around cryptography's `x509.verification`."""
        # (1b) What the fast path never decodes, decoded here so that a malformed part is
        # reported as such: names and the CAs' public keys.
        for role, cert in (
            ("certificate", leaf),
            *((f"cabundle[{i + 1}]", c) for i, c in enumerate(intermediates)),
        ):
            try:
                cert.subject.rfc4514_string()
                cert.issuer.rfc4514_string()
                cert.public_key()
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise _chain_error("chain.certificate-malformed", f"{role}: {exc}") from exc

        # (2) AWS §3.2.3: every certificate valid at the verification time.
        _check_validity(leaf, at, "leaf certificate")
        for i, cert in enumerate(intermediates):
            _check_validity(cert, at, f"cabundle[{i + 1}]")

        # (3) AWS §3.2.3.3 and hf/nitrite: the leaf signs ES384 documents, so its key must be
        # P-384, it must be signed with ecdsa-with-SHA384, be no CA, and allow digitalSignature.
        try:
            leaf_key = leaf.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise _chain_error("chain.certificate-malformed", f"certificate: {exc}") from exc
        if not (
            isinstance(leaf_key, ec.EllipticCurvePublicKey)
            and isinstance(leaf_key.curve, ec.SECP384R1)
        ):
            raise _chain_error("chain.leaf-key", "leaf key is not ECDSA P-384")
        if leaf.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            raise _chain_error("chain.leaf-algorithm", "leaf is not signed with ecdsa-with-SHA384")
        constraints = _extension(leaf, x509.BasicConstraints)
        if constraints is not None and constraints.value.ca:  # type: ignore[attr-defined]
            raise _chain_error("chain.leaf-usage", "leaf certificate is a CA")
        usage = _extension(leaf, x509.KeyUsage)
        if usage is None or not usage.value.digital_signature:  # type: ignore[attr-defined]
            raise _chain_error("chain.leaf-usage", "leaf keyUsage lacks digitalSignature")

        # (4) AWS §3.2.3.2: CAs need keyUsage keyCertSign (critical, like every real Nitro CA).
        for i, cert in enumerate(intermediates):
            usage = _extension(cert, x509.KeyUsage)
            if usage is None or not usage.critical or not usage.value.key_cert_sign:  # type: ignore[attr-defined]
                raise _chain_error(
                    "chain.invalid", f"cabundle[{i + 1}] lacks critical keyUsage keyCertSign"
                )

        # (5) Path validation to a pinned root: signatures, names, basicConstraints, pathLen,
        # unknown critical extensions (cryptography x509.verification, webpki CA profile).
        verifier = (
            xv.PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            path = verifier.verify(leaf, intermediates).chain
        except xv.VerificationError as exc:
            raise self._diagnose(leaf, intermediates, at, str(exc)) from exc

        # (6) AWS §3.2.3: the path is the bundle, in order, under a pinned root.
        expected = [leaf, *reversed(intermediates)]
        if len(path) != len(expected) + 1 or any(
            a != b for a, b in zip(path, expected, strict=False)
        ):
            raise _chain_error(
                "chain.path-mismatch", "cabundle[1:] is not the ordered path from the leaf"
            )
        anchor = path[-1]

        # (7) AWS §3.2.3: "including the root".
        _check_validity(anchor, at, "root")
        usage = _extension(anchor, x509.KeyUsage)
        if usage is not None and not usage.value.key_cert_sign:  # type: ignore[attr-defined]
            raise _chain_error("chain.invalid", "root keyUsage lacks keyCertSign")

        certificates = tuple(path)
        return VerifiedChain(
            certificates=certificates,
            not_before=max(c.not_valid_before_utc for c in certificates),
            not_after=min(c.not_valid_after_utc for c in certificates),
            leaf_key=leaf_key,
        )

    def _diagnose(
        self,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        at: _dt.datetime,
        reason: str,
    ) -> ChainError:
        """Name the failure: a broken signature/name link means untrusted, else a constraint."""
        links = [leaf, *reversed(intermediates)]
        for child, parent in itertools.pairwise(links):
            if not _issued_by(child, parent):
                return _chain_error(
                    "chain.untrusted",
                    f"{_describe(child)} is not issued by the next bundle entry",
                )
        top = links[-1]
        anchors = [root for root in self._roots if _issued_by(top, root)]
        if not anchors:
            return _chain_error("chain.untrusted", "the chain does not end at a pinned root")
        # The engine refuses a pinned root outside its validity before step (7) can say so;
        # AWS §3.2.3 wants every certificate valid at `at`, "including the root".
        for root in anchors:
            try:
                _check_validity(root, at, "root")
            except ChainError as expired:
                return expired
        return _chain_error("chain.invalid", f"path validation failed: {reason}")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
