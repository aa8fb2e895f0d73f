"""X.509 path validation from the document's leaf through `cabundle[1:]` to a pinned root.

AWS rules (aws-nitro-enclaves-nsm-api `docs/attestation_process.md` §3.2.3; AWS Nitro Enclaves
User Guide, "Verifying the root of trust"), and who enforces each:

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
about 30 µs per name); a byte-level walk checks that every attribute value is a string type the
fast path knows and that it decodes (strict UTF-8 for UTF8String, ASCII for PrintableString and
IA5String), and declines otherwise, so that a name the engine cannot decode (invalid or overlong
UTF-8, a lone surrogate, 8-bit TeletexString, a SEQUENCE value) is refused by the engine as
`chain.certificate-malformed` and never accepted. Messages that show names go through `describe`.

Error reasons never carry the parser's internals (cryptography's `ParseError { kind: ... }`
texts): each says what was wrong with which certificate, and the exception keeps the original
as its `__cause__` for logs.

Verified paths are cached: a bounded LRU keyed by the leaf and bundle DER themselves, compared
byte for byte on a hit (cheaper than digesting them first, and a certificate object keeps the very
bytes it was loaded from, so the key mostly shares them). A cache hit is used only if the
verification time lies inside every certificate's validity window, which is the only input of the
result that changes between calls; otherwise the path is validated again from scratch, so expiry
is always reported correctly.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as xv
from cryptography.x509.oid import SignatureAlgorithmOID

from attestation._chain_fast import (
    VerifiedChain,
    _Anchor,
    anchor_of,
    fast_path,
    serial_is_positive,
)
from attestation.errors import CertificateExpired, CertificateNotYetValid, ChainError

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "CacheInfo",
    "ChainValidator",
    "VerifiedChain",
    "describe",
    "load_certificate",
]

# Enough for every leaf of a large fleet over a leaf's 3-hour life; entries are ~5 KB.
DEFAULT_CACHE_SIZE = 1024
# Parsed certificates are shared by many chains (one instance CA per parent, one zonal CA per AZ).
_PARSED_CACHE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Chain cache counters for one `Verifier` (like `functools.lru_cache`'s)."""

    hits: int
    misses: int
    size: int
    maxsize: int


_CA_POLICY = xv.ExtensionPolicy.webpki_defaults_ca()
# Nitro leaves carry basicConstraints (CA:false) and keyUsage, nothing a TLS client certificate
# must have: relax exactly SAN, AKI and EKU, rather than verify them as TLS certificates (as
# verifiers built on a TLS-server check do: they pass only while Nitro leaves carry no EKU).
# Policies are immutable, so one pair serves every validator.
_EE_POLICY = (
    xv.ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, xv.Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.AGNOSTIC, None)
    .may_be_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, None)
)


@dataclass(frozen=True, slots=True)
class _Trust:
    """A root set as both paths use it: the engine's store and the fast path's anchors."""

    roots: tuple[x509.Certificate, ...]
    store: xv.Store
    anchors: tuple[_Anchor, ...]


_TRUST_CACHE_SIZE = 16
_trusts: OrderedDict[tuple[int, ...], _Trust] = OrderedDict()


def _trust(roots: tuple[x509.Certificate, ...]) -> _Trust:
    """One immutable trust context per root set, shared by validators in this process.

    It is configuration, not a verification result: the pinned roots, the engine's store (which
    keeps their parsed public keys once used) and the fast path's view of each root. Sharing it
    means a new `Verifier` does not re-parse a root or its key; the chain cache (results) stays
    per instance. Keyed by the roots' identities, not their hashes (a certificate's hash digests
    its whole DER, twice per new `Verifier`): an entry holds its roots, so their ids stay theirs
    for as long as it is cached.
    """
    key = tuple(map(id, roots))
    trust = _trusts.get(key)
    if trust is None:
        anchors = tuple(a for a in map(anchor_of, roots) if a is not None)
        trust = _trusts[key] = _Trust(roots, xv.Store(list(roots)), anchors)
        while len(_trusts) > _TRUST_CACHE_SIZE:
            _trusts.popitem(last=False)
    return trust


def _chain_error(code: str, message: str) -> ChainError:
    return ChainError(message, code=code)


def describe(cert: x509.Certificate) -> str:
    """The subject for a message; names are not decoded on the success path, so may be odd."""
    try:
        return cert.subject.rfc4514_string()
    except (ValueError, TypeError, KeyError, UnicodeError):
        return f"<serial {cert.serial_number:x}, undecodable subject>"


def load_certificate(der: bytes, role: str) -> x509.Certificate:
    """Parse one DER certificate, or raise `chain.certificate-malformed` naming `role`.

    The parts read lazily by this package are touched here so that a malformed one fails now,
    coded. Names are not decoded (the fast path walks their bytes, the engine decodes them).
    """
    if not serial_is_positive(der):
        # RFC 5280 §4.1.2.2; cryptography would load it with a deprecation warning.
        raise _chain_error(
            "chain.certificate-malformed", f"{role}: serial number is not a positive integer"
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        for part in ("version", "extensions", "signature_algorithm_oid"):
            getattr(cert, part)
        cert.not_valid_before_utc  # noqa: B018
        cert.not_valid_after_utc  # noqa: B018
    except x509.InvalidVersion as exc:  # not a ValueError
        raise _chain_error(
            "chain.certificate-malformed",
            f"{role}: X.509 version number {exc.parsed_version} (only v3 is accepted)",
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise _chain_error(
            "chain.certificate-malformed", f"{role}: unsupported key or signature algorithm"
        ) from exc
    except x509.DuplicateExtension as exc:
        raise _chain_error(
            "chain.certificate-malformed", f"{role}: extension {exc.oid.dotted_string} twice"
        ) from exc
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        # cryptography's ValueError texts are its parser's internals: say what, not how.
        raise _chain_error(
            "chain.certificate-malformed", f"{role}: not a well-formed DER X.509 certificate"
        ) from exc
    return cert


def _check_validity(cert: x509.Certificate, at: _dt.datetime, role: str) -> None:
    # RFC 5280 §4.1.2.5: valid from notBefore to notAfter, both inclusive.
    if at < cert.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{role} {describe(cert)} is valid from "
            f"{cert.not_valid_before_utc.isoformat()}, verification time {at.isoformat()}"
        )
    if at > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{role} {describe(cert)} expired at "
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
        trust = _trust(self._roots)
        self._store = trust.store
        self._anchors = trust.anchors
        self._maxsize = cache_size
        self._paths: OrderedDict[tuple[bytes, ...], VerifiedChain] = OrderedDict()
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
        key = (leaf, *intermediates)
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
        # Names are not decoded into Python objects here (about 30 us each, the largest cost
        # of a cold verification after the signatures): see the module docstring.
        cert = load_certificate(der, role)
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
        return fast_path(self._anchors, leaf_der, leaf, intermediate_ders, intermediates, at)

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
                # cryptography only warns about a name attribute of the wrong length (a country
                # name of 7 characters): here it is malformed, as under `-W error`.
                with warnings.catch_warnings():
                    warnings.simplefilter("error", UserWarning)
                    cert.subject.rfc4514_string()
                    cert.issuer.rfc4514_string()
            # KeyError: cryptography 45 to 48 raise it for a name string of an unknown ASN.1 tag.
            except (ValueError, TypeError, KeyError, UnicodeError, UserWarning) as exc:
                raise _chain_error(
                    "chain.certificate-malformed", f"{role}: a name cannot be decoded"
                ) from exc
            try:
                cert.public_key()
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise _chain_error(
                    "chain.certificate-malformed", f"{role}: the public key cannot be decoded"
                ) from exc

        # (2) AWS §3.2.3: every certificate valid at the verification time.
        _check_validity(leaf, at, "leaf certificate")
        for i, cert in enumerate(intermediates):
            _check_validity(cert, at, f"cabundle[{i + 1}]")

        # (3) AWS §3.2.3.3 and hf/nitrite: the leaf signs ES384 documents, so its key must be
        # P-384, it must be signed with ecdsa-with-SHA384, be no CA, and allow digitalSignature.
        leaf_key = leaf.public_key()  # decodable: checked in (1b)
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
                    f"{describe(child)} is not issued by the next bundle entry",
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
        return _chain_error("chain.invalid", f"path validation failed: {_engine_reason(reason)}")


def _engine_reason(text: str) -> str:
    """The engine's verdict without its internals (object reprs, parser error structures)."""
    text = text.split(" (encountered processing", 1)[0].removeprefix("validation failed: ")
    if "ParseError" in text or "{" in text:
        return "a certificate part cannot be decoded"
    return text


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
