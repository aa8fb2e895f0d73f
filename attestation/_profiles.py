"""Production profiles: the certificate and document details of each era of real NSM output.

`attestation.builder` makes one synthetic shape. Real documents changed over the years, and a
downstream test may need either the current shape or an older one, so the emulator applies a
`Profile` on top of the builder's PKI: it keeps the builder's keys, names, CRL URLs and
intermediate validity windows, and reissues each certificate with the era's serial numbers,
extension order and root validity. Only the public builder API is used.

What the eras are, from 63 real enclave documents (2021-03 to 2026-02) compared field by field
(tests/nsm/test_profile_real.py matches every one of them to exactly its era):

| | 2021 | 2022 | 2024 | 2026 |
|---|---|---|---|---|
| payload map | definite (`a9`) | definite | definite | indefinite (`bf ... ff`) |
| instance CA extensions | BC, KU | BC, KU | BC, KU, SKI, AKI | BC, KU, SKI, AKI |
| leaf validity | issue .. +3:00:00 | issue-3 s .. issue+3 h | same | same |

and in every era: regional and zonal CAs carry BC, AKI, SKI, KU, CRL; the root is valid
2019-10-28 13:28:05 to 2049-10-28 14:28:05 (UTCTime both); CA serials are 16 random bytes (17 in
DER, with a leading 00, when the top bit is set: about half of them), instance CA serials 20
random bytes (20 or 21 in DER, past RFC 5280's 20 octets); the leaf serial is the 8-byte
enclave id, 4 zero bytes and the issue time in Unix seconds; the enclave id in `module_id`
(`i-<instance>-enc<16 hex>`) is the launch time in milliseconds (48 bits, "019b..." in 2026)
then 16 random bits. ("2024" starts mid-2024: earlier 2024 documents have the 2022 shape.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import builder
from attestation._chain_fast import _tlv

__all__ = ["PROFILES", "Profile", "apply", "enclave_id", "issue_leaf", "profile"]

#: The real root's validity (attestation/roots/aws_nitro_enclaves_root_g1.pem): both ends encode
#: as UTCTime.
ROOT_NOT_BEFORE = datetime(2019, 10, 28, 13, 28, 5, tzinfo=UTC)
ROOT_NOT_AFTER = datetime(2049, 10, 28, 14, 28, 5, tzinfo=UTC)
#: Random bits in CA serials (root, regional, zonal) and in instance CA serials. Real instance CA
#: serials have 160 random bits: 21 DER bytes when the top one is set, past RFC 5280's 20-octet
#: cap, which `cryptography`'s builder enforces; such certificates are re-signed with the long
#: serial put in by hand (`_with_serial`).
CA_SERIAL_BITS = 128
INSTANCE_SERIAL_BITS = 160
#: The largest serial `cryptography`'s builder writes (RFC 5280 §4.1.2.2: at most 20 octets).
_BUILDER_SERIAL_BITS = 159
#: The leaf lives three hours after its issue time (the seconds in its serial).
LEAF_AFTER_ISSUE = timedelta(hours=3)
#: The enclave id: 48 bits of launch time in milliseconds, then 16 random bits.
_LAUNCH_BITS = 48
_ENCLAVE_RANDOM_BITS = 16

_SEED_DOMAIN = b"nsm-attestation/profiles/v1"


@dataclass(frozen=True)
class Profile:
    """What one era of real NSM output looks like (see the module docstring)."""

    name: str
    #: The payload's top-level map: indefinite-length (`0xbf ... 0xff`) or definite (`0xa9`).
    indefinite_payload: bool
    #: SKI and AKI after KU on the instance CA (mid-2024 on); before, BC and KU only.
    instance_key_ids: bool
    #: The leaf starts this long before its issue time (3 s from 2022 on, 0 in 2021).
    leaf_backdate: timedelta

    @property
    def leaf_lifetime(self) -> timedelta:
        return self.leaf_backdate + LEAF_AFTER_ISSUE


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "2021", indefinite_payload=False, instance_key_ids=False, leaf_backdate=timedelta()
        ),
        Profile(
            "2022",
            indefinite_payload=False,
            instance_key_ids=False,
            leaf_backdate=timedelta(seconds=3),
        ),
        Profile(
            "2024",
            indefinite_payload=False,
            instance_key_ids=True,
            leaf_backdate=timedelta(seconds=3),
        ),
        Profile(
            "2026",
            indefinite_payload=True,
            instance_key_ids=True,
            leaf_backdate=timedelta(seconds=3),
        ),
    )
}


def profile(name: str | Profile) -> Profile:
    """The profile called `name` (one of PROFILES), or `name` itself if it is a Profile."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def _random(seed: int | None, label: str, size: int) -> bytes:
    if seed is None:
        return os.urandom(size)
    material = hashlib.sha512(b"\x00".join([_SEED_DOMAIN, str(seed).encode(), label.encode()]))
    return material.digest()[:size]


def _serial(seed: int | None, label: str, bits: int) -> int:
    # Positive and non-zero; the top bit is as random as the rest, so DER adds a 00 byte to
    # about half of the 128-bit ones, as in the real chain.
    value = int.from_bytes(_random(seed, label, (bits + 7) // 8), "big") >> (-bits % 8)
    return value or 1


def enclave_id(launch: datetime, *, seed: int | None = None) -> str:
    """The 16 hex digits after `-enc`: launch time in ms (48 bits), then 16 random bits."""
    launch_ms = int(launch.timestamp() * 1000)
    if not 0 <= launch_ms < 1 << _LAUNCH_BITS:
        raise ValueError(f"launch time {launch} does not fit 48 bits of milliseconds")
    tail = int.from_bytes(_random(seed, f"enclave:{launch_ms}", _ENCLAVE_RANDOM_BITS // 8), "big")
    return f"{launch_ms:012x}{tail:04x}"


def _extensions(
    cert: x509.Certificate,
) -> dict[type[x509.ExtensionType], x509.Extension[x509.ExtensionType]]:
    return {type(ext.value): ext for ext in cert.extensions}


def _reissue(
    original: builder.CertifiedKey,
    *,
    issuer: builder.CertifiedKey | None,
    profile_: Profile,
    serial: int,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    instance: bool = False,
) -> builder.CertifiedKey:
    """`original` with the profile's serial, validity and extension order; same key and names."""
    cert = original.certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    kinds = {type(ext.value) for ext in cert.extensions}
    crl_url = None
    if x509.CRLDistributionPoints in kinds:
        crl = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        (point,) = crl
        if point.full_name is None:
            raise ValueError("a CRL distribution point without a URI cannot be reissued")
        crl_url = str(point.full_name[0].value)
    key_ids = x509.SubjectKeyIdentifier in kinds
    extras: list[tuple[x509.ExtensionType, bool]] = []
    if instance:
        # The instance CA lists KU before the key identifiers (and had none before mid-2024);
        # the builder's fixed order (BC, AKI, SKI, KU) fits the regional and zonal CAs only.
        key_ids = False
        if profile_.instance_key_ids:
            assert issuer is not None
            extras = [
                (x509.SubjectKeyIdentifier.from_public_key(original.key.public_key()), False),
                (
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                    False,
                ),
            ]
    certificate = builder.issue_certificate(
        subject=cert.subject,
        public_key=original.key.public_key(),
        issuer=None if issuer is None else issuer.certificate,
        issuer_key=original.key if issuer is None else issuer.key,
        not_before=not_before or cert.not_valid_before_utc,
        not_after=not_after or cert.not_valid_after_utc,
        ca=bc.ca,
        path_length=bc.path_length,
        basic_constraints_critical=True,
        key_usage=ku.value,
        key_usage_critical=ku.critical,
        subject_key_identifier=key_ids,
        authority_key_identifier=key_ids and issuer is not None,
        crl_url=crl_url,
        extra_extensions=extras,
        serial_number=serial if serial.bit_length() <= _BUILDER_SERIAL_BITS else 1,
    )
    if serial.bit_length() > _BUILDER_SERIAL_BITS:
        signer = original.key if issuer is None else issuer.key
        certificate = _with_serial(certificate, serial, signer)
    return builder.CertifiedKey(key=original.key, certificate=certificate)


def _der_head(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big")


def _with_serial(
    certificate: x509.Certificate, serial: int, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """`certificate` with its serial number replaced and the TBS signed again by `signer`.

    Certificate ::= SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING } and
    TBSCertificate ::= SEQUENCE { [0] version, serialNumber INTEGER, ... } (RFC 5280 §4.1);
    everything but the serial and the signature is kept byte for byte.
    """
    der = certificate.public_bytes(serialization.Encoding.DER)
    _, cert_start, _ = _tlv(der, 0)
    _, tbs_start, tbs_end = _tlv(der, cert_start)
    _, _, algorithm_end = _tlv(der, tbs_end)
    _, _, version_end = _tlv(der, tbs_start)
    _, _, serial_end = _tlv(der, version_end)
    value = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # positive: a leading 0 bit
    body = (
        der[tbs_start:version_end] + _der_head(0x02, len(value)) + value + der[serial_end:tbs_end]
    )
    tbs = _der_head(0x30, len(body)) + body
    signature = signer.sign(tbs, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    bits = _der_head(0x03, len(signature) + 1) + b"\x00" + signature
    content = tbs + der[tbs_end:algorithm_end] + bits
    return x509.load_der_x509_certificate(_der_head(0x30, len(content)) + content)


def apply(
    pki: builder.Pki, profile_: str | Profile, *, root: builder.CertifiedKey | None = None
) -> builder.Pki:
    """`pki` reissued in the profile's shape.

    `root` is an already-profiled root to keep (when renewing intermediates); without it the
    root is reissued too, valid exactly as long as the real one.
    """
    p = profile(profile_)
    seed = pki.seed
    if root is None:
        root = _reissue(
            pki.root,
            issuer=None,
            profile_=p,
            serial=_serial(seed, "root", CA_SERIAL_BITS),
            not_before=ROOT_NOT_BEFORE,
            not_after=ROOT_NOT_AFTER,
        )
    start = pki.instance.certificate.not_valid_before_utc.isoformat()
    regional = _reissue(
        pki.regional,
        issuer=root,
        profile_=p,
        serial=_serial(seed, f"regional:{pki.region}:{start}", CA_SERIAL_BITS),
    )
    zonal = _reissue(
        pki.zonal,
        issuer=regional,
        profile_=p,
        serial=_serial(seed, f"zonal:{pki.region}:{start}", CA_SERIAL_BITS),
    )
    instance = _reissue(
        pki.instance,
        issuer=zonal,
        profile_=p,
        serial=_serial(seed, f"instance:{pki.instance_id}:{start}", INSTANCE_SERIAL_BITS),
        instance=True,
    )
    return builder.Pki(
        root=root,
        regional=regional,
        zonal=zonal,
        instance=instance,
        region=pki.region,
        instance_id=pki.instance_id,
        seed=seed,
    )


def issue_leaf(
    pki: builder.Pki, profile_: str | Profile, *, module_id: str, issued: datetime
) -> builder.CertifiedKey:
    """The document-signing leaf issued at `issued` (whole seconds), in the profile's shape.

    Its serial is the enclave id of `module_id`, 4 zero bytes and `issued` in Unix seconds.
    """
    p = profile(profile_)
    issued = issued.astimezone(UTC).replace(microsecond=0)
    _, sep, enclave = module_id.rpartition("-enc")
    if not sep or len(enclave) != 16:
        raise ValueError(f"module_id {module_id!r} does not end in -enc<16 hex digits>")
    serial = int(enclave, 16) << 64 | int(issued.timestamp())
    base = pki.issue_leaf(
        module_id=module_id, not_before=issued - p.leaf_backdate, lifetime=p.leaf_lifetime
    )
    return _reissue(base, issuer=pki.instance, profile_=p, serial=serial)
