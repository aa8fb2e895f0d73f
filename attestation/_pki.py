"""The synthetic Nitro PKI: keys, the certificate profile, and the four-CA chain with its leaves.

The chain mirrors the real one (vectors/real): a P-384 root, then regional (pathLen 2),
zonal (pathLen 1) and instance (pathLen 0) CAs, and a 3-hour leaf that signs documents. The
certificate profile (extensions and their order, criticality, key usages, lifetimes, subject
style) is AWS's; the root's CN says `emulator` so that nobody mistakes it for the AWS root, and
no default verifier trusts it. With a seed, keys derive from the seed, serial numbers from the
certificate contents, and every ECDSA signature is deterministic (RFC 6979).

Public through `attestation.builder`; everything that decides what a certificate looks like is
in this module: the profile constants, the name helpers, `issue_certificate` (extension order)
and `_content_serial` (serial length).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from attestation._cose_writer import curve_order

__all__ = [
    "CA_KEY_USAGE",
    "INSTANCE_KEY_USAGE",
    "INSTANCE_LIFETIME",
    "LEAF_KEY_USAGE",
    "LEAF_LIFETIME",
    "REGIONAL_LIFETIME",
    "ROOT_COMMON_NAME",
    "ROOT_LIFETIME",
    "ZONAL_LIFETIME",
    "CertifiedKey",
    "Pki",
    "derive_key",
    "generate_pki",
    "issue_certificate",
    "key_usage",
]

# --- PKI profile (the real chains in vectors/real, and the AWS root) --------------------------

#: The real root runs 2019-10-28 13:28:05 to 2049-10-28 14:28:05: 30 years and one hour.
ROOT_LIFETIME = timedelta(days=10958, hours=1)
#: Real regional CAs live 20 d 1 h (vectors/real).
REGIONAL_LIFETIME = timedelta(days=20, hours=1)
#: Real zonal CAs live 5 d 13 h to 6 d 1 h (vectors/real); the shortest is the stricter test.
ZONAL_LIFETIME = timedelta(days=5, hours=13)
#: Real instance CAs live exactly one day (vectors/real).
INSTANCE_LIFETIME = timedelta(days=1)
#: Real leaves live 3 hours and sign many documents each (vectors/real).
LEAF_LIFETIME = timedelta(hours=3)

#: AWS's format is `<partition>.nitro-enclaves` (attestation_process.md §2.1); ours names no AWS
#: partition, so it cannot be mistaken for `aws.nitro-enclaves`.
ROOT_COMMON_NAME = "emulator.nitro-enclaves"

# How long before the instance CA each higher CA starts. In the 2026-01-03 real chain the zonal
# CA predates the instance CA by about 3.5 h and the regional CA by about 3 days; any offsets work
# as long as every CA covers the instance CA's whole day.
_ZONAL_HEAD_START = timedelta(hours=3)
_REGIONAL_HEAD_START = timedelta(days=3)
# A seeded root starts at this fixed instant whenever it can, so that a given seed names one root
# certificate that callers can pin across many PKIs (the real root also predates its chains by
# years).
_ROOT_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
# Without an explicit start, the chain starts this long before the current hour: a verifier
# whose clock runs a little behind the builder's still sees valid certificates.
_DEFAULT_BACKDATE = timedelta(hours=2)

# Domain separation for everything derived from a seed; bump the version to change all outputs.
_SEED_DOMAIN = b"nsm-attestation/builder/v1"
# Serial numbers are 127-bit positive integers: RFC 5280 §4.1.2.2 allows up to 20 octets, and
# a cleared top bit keeps the DER INTEGER positive without a padding byte.
_SERIAL_BITS = 127


def key_usage(
    *,
    digital_signature: bool = False,
    non_repudiation: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """A `KeyUsage` from the flags that matter here (`non_repudiation` is `content_commitment`)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=non_repudiation,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


#: Root, regional and zonal CAs (critical in the real chain).
CA_KEY_USAGE = key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
#: The instance CA can only sign certificates (critical in the real chain).
INSTANCE_KEY_USAGE = key_usage(key_cert_sign=True)
#: The leaf (NON-critical in the real chain).
LEAF_KEY_USAGE = key_usage(digital_signature=True, non_repudiation=True)


# --- Keys -------------------------------------------------------------------------------------


def derive_key(
    seed: int, label: str, *, curve: ec.EllipticCurve | None = None
) -> ec.EllipticCurvePrivateKey:
    """A private key determined by `seed` and `label` (P-384 unless `curve` says otherwise).

    The scalar is SHA-512(domain || seed || label), widened as needed for large curves, reduced
    into [1, n-1]. This is for tests and emulators only: anyone who knows the seed has the key.
    """
    curve = curve if curve is not None else ec.SECP384R1()
    order = curve_order(curve)
    material = b""
    counter = 0
    # 64 extra bits beyond the order make the reduction bias negligible.
    while len(material) * 8 < order.bit_length() + 64:
        material += hashlib.sha512(_seed_input(seed, "key", label, str(counter))).digest()
        counter += 1
    scalar = int.from_bytes(material, "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, curve)


def _seed_input(seed: int, *parts: str) -> bytes:
    # NUL-separated so that no two part lists collide.
    return b"\x00".join([_SEED_DOMAIN, str(seed).encode(), *(p.encode() for p in parts)])


def _new_key(seed: int | None, label: str) -> ec.EllipticCurvePrivateKey:
    if seed is None:
        return ec.generate_private_key(ec.SECP384R1())
    return derive_key(seed, label)


# --- Certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertifiedKey:
    """An EC private key and the certificate that binds its public key."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        """The certificate in DER, as it travels in a document."""
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _aws_name(common_name: str) -> x509.Name:
    # Root and regional CAs: C, O, OU, CN (the real root and 2026 regional CA).
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _zonal_name(common_name: str) -> x509.Name:
    # The real zonal CA lists its attributes the other way round and adds ST=WA, L=Seattle.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
        ]
    )


def _instance_name(common_name: str) -> x509.Name:
    # Real instance CAs and leaves: C, ST=Washington, L=Seattle, O, OU, CN.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Seattle"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def issue_certificate(
    *,
    subject: x509.Name | str,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
    ca: bool | None,
    path_length: int | None = None,
    basic_constraints_critical: bool = True,
    key_usage: x509.KeyUsage | None = None,
    key_usage_critical: bool = True,
    subject_key_identifier: bool = False,
    authority_key_identifier: bool = False,
    crl_url: str | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial_number: int | None = None,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
) -> x509.Certificate:
    """Issue one certificate; the profile helpers and the conformance corpus build on this.

    Every knob a broken chain needs is here: any key type for the subject and the issuer,
    `ca=None` to omit basicConstraints, `key_usage=None` to omit keyUsage, criticality flags,
    and `extra_extensions` as `(value, critical)` pairs (an `x509.UnrecognizedExtension` makes
    an unknown critical extension). Extensions appear in the real regional CA's order:
    basicConstraints, AKI, SKI, keyUsage, CRL distribution points, then the extras.

    `issuer=None` self-signs: `issuer_key` must then belong to `public_key`. The serial number
    defaults to a hash of the certificate's contents, so it is as reproducible as they are.
    `hash_algorithm` defaults to SHA-384 (ecdsa-with-SHA384 for EC issuers); Ed25519 and Ed448
    issuers need no hash and get none. EC signatures are deterministic (RFC 6979).
    """
    not_before = _require_aware(not_before, "not_before")
    not_after = _require_aware(not_after, "not_after")
    subject_name = _aws_name(subject) if isinstance(subject, str) else subject
    issuer_name = subject_name if issuer is None else issuer.subject

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), basic_constraints_critical
        )
    if authority_key_identifier:
        # From the issuer's own key, so that a self-signed certificate names itself.
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(aki, False)
    if subject_key_identifier:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), False
        )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, key_usage_critical)
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical)

    if serial_number is None:
        serial_number = _content_serial(subject_name, public_key, not_before, not_after)
    builder = builder.serial_number(serial_number)

    if isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        # EdDSA hashes internally; cryptography requires no algorithm for it.
        return builder.sign(issuer_key, None)
    algorithm = hash_algorithm if hash_algorithm is not None else hashes.SHA384()
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        return builder.sign(issuer_key, algorithm, ecdsa_deterministic=True)
    return builder.sign(issuer_key, algorithm)


def _content_serial(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
) -> int:
    digest = hashlib.sha256()
    digest.update(subject.public_bytes())
    digest.update(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    digest.update(not_before.isoformat().encode())
    digest.update(not_after.isoformat().encode())
    serial = int.from_bytes(digest.digest(), "big") >> (256 - _SERIAL_BITS)
    return serial or 1  # a zero serial is not allowed (RFC 5280 §4.1.2.2)


def _key_id(key: ec.EllipticCurvePrivateKey) -> str:
    # The real regional and zonal CNs start with 16 hex digits; ours come from the key, so a
    # seeded PKI keeps its names.
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:16]


def _crl_url(key: ec.EllipticCurvePrivateKey) -> str:
    # The real regional and zonal CAs carry a CRL distribution point; `.invalid` (RFC 2606)
    # guarantees that nothing is ever fetched from it.
    return f"http://crl.emulator.invalid/crl/{_key_id(key)}.crl"


def _issue_ca(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: CertifiedKey | None,
    not_before: datetime,
    lifetime: timedelta,
    path_length: int | None,
    usage: x509.KeyUsage,
    crl: bool,
) -> CertifiedKey:
    certificate = issue_certificate(
        subject=subject,
        public_key=key.public_key(),
        issuer=None if issuer is None else issuer.certificate,
        issuer_key=key if issuer is None else issuer.key,
        not_before=not_before,
        not_after=not_before + lifetime,
        ca=True,
        path_length=path_length,
        key_usage=usage,
        subject_key_identifier=True,
        authority_key_identifier=issuer is not None,
        crl_url=_crl_url(key) if crl else None,
    )
    return CertifiedKey(key=key, certificate=certificate)


@dataclass(frozen=True)
class Pki:
    """A synthetic Nitro chain: root, regional, zonal and instance CAs.

    Leaves come from `issue_leaf`. `seed`, `region` and `instance_id` are kept so that leaves
    and renewed intermediates are derived the same way as the originals.
    """

    root: CertifiedKey
    regional: CertifiedKey
    zonal: CertifiedKey
    instance: CertifiedKey
    region: str = "us-east-1"
    instance_id: str = "i-0123456789abcdef0"
    # Whoever knows the seed has every private key: keep it out of reprs and logs.
    seed: int | None = field(default=None, repr=False)

    @property
    def cabundle(self) -> list[bytes]:
        """The `cabundle` field: DER certificates, root first (attestation_process.md §3.2.3)."""
        return [self.root.der, self.regional.der, self.zonal.der, self.instance.der]

    @property
    def not_before(self) -> datetime:
        """Start of the window in which every CA in the chain is valid."""
        return max(ca.certificate.not_valid_before_utc for ca in self._cas)

    @property
    def not_after(self) -> datetime:
        """End of the window in which every CA in the chain is valid."""
        return min(ca.certificate.not_valid_after_utc for ca in self._cas)

    @property
    def _cas(self) -> tuple[CertifiedKey, ...]:
        return (self.root, self.regional, self.zonal, self.instance)

    def root_pem(self) -> bytes:
        """The root certificate in PEM: what a verifier of these documents must pin."""
        return self.root.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_leaf(
        self, *, module_id: str, not_before: datetime, lifetime: timedelta = LEAF_LIFETIME
    ) -> CertifiedKey:
        """A document-signing leaf for `module_id`, CN `<module_id>.<region>.aws`.

        Its validity must lie inside the instance CA's; a ValueError says so otherwise (the
        corpus builds deliberately expired leaves with `issue_certificate` instead).
        """
        not_before = _require_aware(not_before, "not_before")
        not_after = not_before + lifetime
        instance = self.instance.certificate
        if not_before < instance.not_valid_before_utc or not_after > instance.not_valid_after_utc:
            raise ValueError(
                f"a leaf valid {not_before} to {not_after} does not fit the instance CA "
                f"({instance.not_valid_before_utc} to {instance.not_valid_after_utc}); "
                "renew the intermediates first"
            )
        key = _new_key(self.seed, f"leaf:{module_id}:{not_before.isoformat()}")
        certificate = issue_certificate(
            subject=_instance_name(f"{module_id}.{self.region}.aws"),
            public_key=key.public_key(),
            issuer=instance,
            issuer_key=self.instance.key,
            not_before=not_before,
            not_after=not_after,
            ca=False,
            key_usage=LEAF_KEY_USAGE,
            key_usage_critical=False,
        )
        return CertifiedKey(key=key, certificate=certificate)

    def renew_intermediates(self, *, not_before: datetime) -> Pki:
        """The same root and CA keys with regional, zonal and instance certificates reissued.

        `not_before` means what it means for `generate_pki`: the instance CA starts then.
        """
        return _build_pki(
            root=self.root,
            seed=self.seed,
            region=self.region,
            instance_id=self.instance_id,
            not_before=_require_aware(not_before, "not_before"),
            keys=(self.regional.key, self.zonal.key, self.instance.key),
        )


def generate_pki(
    *,
    seed: int | None = None,
    region: str = "us-east-1",
    instance_id: str = "i-0123456789abcdef0",
    not_before: datetime | None = None,
) -> Pki:
    """A fresh synthetic chain: root, regional, zonal and instance CAs.

    `not_before` is when the instance CA starts; every other CA starts earlier, so the whole
    chain is valid from `not_before` for `INSTANCE_LIFETIME`. Without it, the chain starts two
    hours before the current hour, so it is valid now and for at least the next 21 hours.

    With a `seed`, keys depend only on the seed (and region and instance id for the
    intermediates) and every certificate is byte-identical across calls with the same
    arguments; without an explicit `not_before` that holds within one clock hour. A seeded root
    is also independent of `not_before` whenever possible (it starts on 2020-01-01), so one seed
    names one root to pin.
    """
    if not_before is None:
        now = datetime.now(UTC)
        not_before = now.replace(minute=0, second=0, microsecond=0) - _DEFAULT_BACKDATE
    not_before = _require_aware(not_before, "not_before")

    root_key = _new_key(seed, "root")
    regional_start = not_before - _REGIONAL_HEAD_START
    fits_epoch = (
        regional_start >= _ROOT_EPOCH
        and regional_start + REGIONAL_LIFETIME <= _ROOT_EPOCH + ROOT_LIFETIME
    )
    root_start = _ROOT_EPOCH if seed is not None and fits_epoch else regional_start
    root = _issue_ca(
        subject=_aws_name(ROOT_COMMON_NAME),
        key=root_key,
        issuer=None,
        not_before=root_start,
        lifetime=ROOT_LIFETIME,
        path_length=None,
        usage=CA_KEY_USAGE,
        crl=False,
    )
    keys = (
        _new_key(seed, f"regional:{region}"),
        _new_key(seed, f"zonal:{region}"),
        _new_key(seed, f"instance:{region}:{instance_id}"),
    )
    return _build_pki(
        root=root,
        seed=seed,
        region=region,
        instance_id=instance_id,
        not_before=not_before,
        keys=keys,
    )


def _build_pki(
    *,
    root: CertifiedKey,
    seed: int | None,
    region: str,
    instance_id: str,
    not_before: datetime,
    keys: tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey],
) -> Pki:
    regional_key, zonal_key, instance_key = keys
    # The three intermediates, each issued by the one before (the root first): subject, key,
    # head start before the instance CA, lifetime, pathLen, key usage, CRL distribution point.
    levels = (
        (
            _aws_name(f"{_key_id(regional_key)}.{region}.aws.nitro-enclaves"),
            regional_key,
            _REGIONAL_HEAD_START,
            REGIONAL_LIFETIME,
            2,
            CA_KEY_USAGE,
            True,
        ),
        (
            _zonal_name(f"{_key_id(zonal_key)}.zonal.{region}.aws.nitro-enclaves"),
            zonal_key,
            _ZONAL_HEAD_START,
            ZONAL_LIFETIME,
            1,
            CA_KEY_USAGE,
            True,
        ),
        (
            _instance_name(f"{instance_id}.{region}.aws.nitro-enclaves"),
            instance_key,
            timedelta(0),
            INSTANCE_LIFETIME,
            0,
            INSTANCE_KEY_USAGE,
            False,
        ),
    )
    chain = [root]
    for subject, key, head_start, lifetime, path_length, usage, crl in levels:
        chain.append(
            _issue_ca(
                subject=subject,
                key=key,
                issuer=chain[-1],
                not_before=not_before - head_start,
                lifetime=lifetime,
                path_length=path_length,
                usage=usage,
                crl=crl,
            )
        )
    _, regional, zonal, instance = chain
    pki = Pki(
        root=root,
        regional=regional,
        zonal=zonal,
        instance=instance,
        region=region,
        instance_id=instance_id,
        seed=seed,
    )
    if not pki.not_before <= not_before < pki.not_after:
        raise ValueError(f"no chain under this root is valid at {not_before}")
    return pki
