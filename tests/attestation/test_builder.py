"""The builder against AWS's byte shape, certificate profile, and independent verifiers.

Every signature here is checked by code that does not come from the builder: plain
`cryptography` over a Sig_structure re-encoded with cbor2, pycose, and cryptography's
`x509.verification`. The certificate profile is compared with a real AWS chain.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
from cryptography.x509 import verification
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from attestation import builder
from attestation.builder import CertifiedKey, Pki
from vectors.corpus import REAL_DIR

# A 2026 production document: the newest chain profile, indefinite payload map.
REAL_DOCUMENT = REAL_DIR / "2026-01-03_us-east-1_prod_base-nitro-validator_9e038c2d.cbor"
P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
    "581A0DB248B0A77AECEC196ACCC52973",
    16,
)
T0 = datetime(2025, 7, 18, 8, 0, 0, tzinfo=UTC)
MODULE_ID = "i-0123456789abcdef0-enc0123456789abcdef"
EXPECTED_KEYS = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
]


# --- an independent, strict verifier for tests ------------------------------------------------


class Rejected(Exception):
    """The test verifier refused a document."""


def _strict_loads(data: bytes) -> Any:
    # cbor2.loads ignores trailing bytes; a document with any is not a document.
    stream = io.BytesIO(data)
    value = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(data):
        raise Rejected(f"{len(data) - stream.tell()} trailing bytes")
    return value


def verify_document(document: bytes, root: x509.Certificate) -> dict[str, Any]:
    """Verify like AWS says, with plain cryptography; return the payload or raise Rejected.

    Checks the envelope shape, ES384 over a Sig_structure re-encoded by cbor2, the leaf and
    every cabundle link up to `root`, and validity of every certificate at the document's own
    timestamp.
    """
    try:
        envelope = _strict_loads(document)
        if isinstance(envelope, cbor2.CBORTag):
            if envelope.tag != 18:
                raise Rejected(f"tag {envelope.tag}")
            envelope = envelope.value
        # cbor2 6 decodes arrays as tuples, 5.x as lists (make test-newest runs 6).
        if not isinstance(envelope, (list, tuple)) or len(envelope) != 4:
            raise Rejected("not a COSE_Sign1 array")
        protected, unprotected, payload_bytes, signature = envelope
        if protected != builder.PROTECTED_HEADER or unprotected != {}:
            raise Rejected("headers")
        if not isinstance(payload_bytes, bytes) or len(signature) != 96:
            raise Rejected("payload or signature")
        payload = _strict_loads(payload_bytes)
        if list(payload) != EXPECTED_KEYS:
            raise Rejected(f"keys {list(payload)}")
        leaf = x509.load_der_x509_certificate(payload["certificate"])
        chain = [x509.load_der_x509_certificate(der) for der in payload["cabundle"]]
        leaf_key = leaf.public_key()
        if not isinstance(leaf_key, ec.EllipticCurvePublicKey):
            raise Rejected("leaf key is not EC")
        to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload_bytes])
        der_signature = utils.encode_dss_signature(
            int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
        )
        leaf_key.verify(der_signature, to_be_signed, ec.ECDSA(hashes.SHA384()))
        if chain[0] != root:
            raise Rejected("cabundle[0] is not the pinned root")
        path = [*chain, leaf]
        for issuer, subject in itertools.pairwise(path):
            subject.verify_directly_issued_by(issuer)
        root.verify_directly_issued_by(root)
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=payload["timestamp"])
        for certificate in path:
            if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
                raise Rejected(f"{certificate.subject} not valid at {at}")
    except (
        cbor2.CBORDecodeError,
        InvalidSignature,
        UnsupportedAlgorithm,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
    ) as error:
        raise Rejected(repr(error)) from error
    return dict(payload)


def _pycose_verifies(document: bytes, leaf: CertifiedKey) -> bool:
    from pycose.keys.curves import P384
    from pycose.keys.ec2 import EC2Key
    from pycose.messages.sign1message import Sign1Message

    tagged = document if document[0] == 0xD2 else b"\xd2" + document
    message = Sign1Message.decode(tagged)
    numbers = leaf.key.public_key().public_numbers()
    message.key = EC2Key(crv=P384, x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big"))
    return bool(message.verify_signature())


def _nitro_client_verifier(root: x509.Certificate, at: datetime) -> verification.ClientVerifier:
    # CAs under cryptography's webpki CA policy, which all real Nitro chains pass; the leaf has
    # no AKI, SAN or EKU, so those become optional for the end entity.
    agnostic = verification.Criticality.AGNOSTIC
    ee_policy = (
        verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, None)
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(at)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return builder.generate_pki(seed=7, not_before=T0)


@pytest.fixture(scope="module")
def leaf(pki: Pki) -> CertifiedKey:
    return pki.issue_leaf(module_id=MODULE_ID, not_before=T0 + timedelta(hours=1))


def _pcrs() -> dict[int, bytes]:
    return {i: bytes([i]) * 48 for i in range(16)}


def _document(pki: Pki, leaf: CertifiedKey, **options: Any) -> bytes:
    timestamp = leaf.certificate.not_valid_before_utc + timedelta(minutes=14)
    arguments: dict[str, Any] = {
        "leaf": leaf,
        "cabundle": pki.cabundle,
        "module_id": MODULE_ID,
        "timestamp_ms": int(timestamp.timestamp()) * 1000 + 990,
        "pcrs": _pcrs(),
    }
    arguments.update(options)
    return builder.build_document(**arguments)


def _split(document: bytes) -> tuple[bool, list[Any]]:
    decoded = cbor2.loads(document)
    if isinstance(decoded, cbor2.CBORTag):
        return True, list(decoded.value)
    return False, list(decoded)


def _real_chain() -> tuple[list[x509.Certificate], datetime]:
    if not REAL_DOCUMENT.exists():
        pytest.skip(f"real vectors not found at {REAL_DIR}")
    envelope = cbor2.loads(REAL_DOCUMENT.read_bytes())
    payload = cbor2.loads(envelope[2])
    chain = [x509.load_der_x509_certificate(der) for der in payload["cabundle"]]
    chain.append(x509.load_der_x509_certificate(payload["certificate"]))
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=payload["timestamp"])
    return chain, at


# --- byte shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("indefinite", [False, True])
@pytest.mark.parametrize("tag18", [False, True])
def test_envelope_bytes(pki: Pki, leaf: CertifiedKey, indefinite: bool, tag18: bool) -> None:
    document = _document(pki, leaf, indefinite=indefinite, tag18=tag18)
    body = document[1:] if tag18 else document
    assert (document[0] == 0xD2) is tag18
    assert body[0] == 0x84
    assert body[1:6] == bytes.fromhex("44a1013822")
    assert body[6] == 0xA0
    _, (protected, unprotected, payload, signature) = _split(document)
    assert protected == bytes.fromhex("a1013822")
    assert unprotected == {}
    assert payload[0] == (0xBF if indefinite else 0xA9)
    assert (payload[-1] == 0xFF) is indefinite
    assert len(signature) == 96
    # The signature is the last thing in the document, behind a one-byte-length bstr head.
    assert document[-98:] == b"\x58\x60" + signature


def test_payload_keys_in_aws_order_with_nulls(pki: Pki, leaf: CertifiedKey) -> None:
    _, envelope = _split(_document(pki, leaf))
    payload = cbor2.loads(envelope[2])
    assert list(payload) == EXPECTED_KEYS
    assert payload["public_key"] is None
    assert payload["user_data"] is None
    assert payload["nonce"] is None
    assert envelope[2].endswith(b"\x6apublic_key\xf6\x69user_data\xf6\x65nonce\xf6")


def test_payload_values_round_trip(pki: Pki, leaf: CertifiedKey) -> None:
    document = _document(pki, leaf, public_key=b"\x04" * 65, user_data=b"", nonce=b"n" * 1024)
    payload = cbor2.loads(_split(document)[1][2])
    assert payload["module_id"] == MODULE_ID
    assert payload["digest"] == "SHA384"
    assert payload["pcrs"] == _pcrs()
    assert payload["certificate"] == leaf.der
    assert payload["cabundle"] == pki.cabundle
    assert payload["public_key"] == b"\x04" * 65
    assert payload["user_data"] == b""  # empty is a present field, not null
    assert payload["nonce"] == b"n" * 1024


@pytest.mark.parametrize("timestamp_ms", [0, 23, 1_000, 1_752_827_858_990, 2**64 - 1])
def test_timestamp_always_eight_bytes(timestamp_ms: int) -> None:
    payload = builder.encode_payload(
        module_id="m", timestamp_ms=timestamp_ms, pcrs={0: bytes(48)}, certificate=b"c", cabundle=[]
    )
    key = b"\x69timestamp"
    at = payload.index(key) + len(key)
    assert payload[at] == 0x1B
    assert int.from_bytes(payload[at + 1 : at + 9], "big") == timestamp_ms
    assert cbor2.loads(payload)["timestamp"] == timestamp_ms


def test_timestamp_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="uint64"):
        builder.encode_payload(
            module_id="m", timestamp_ms=2**64, pcrs={}, certificate=b"c", cabundle=[]
        )


def test_pcrs_definite_and_ascending() -> None:
    pcrs = {i: bytes([i]) * 48 for i in (31, 4, 0, 16, 2)}
    payload = builder.encode_payload(
        module_id="m", timestamp_ms=1, pcrs=pcrs, certificate=b"c", cabundle=[b"a", b"b"]
    )
    at = payload.index(b"\x64pcrs") + 5
    assert payload[at] == 0xA0 | len(pcrs)
    decoded = cbor2.loads(payload)
    assert list(decoded["pcrs"]) == [0, 2, 4, 16, 31]
    assert decoded["pcrs"] == pcrs
    cabundle_at = payload.index(b"\x68cabundle") + 9
    assert payload[cabundle_at] == 0x82


def test_real_document_has_the_same_envelope_prefix(pki: Pki, leaf: CertifiedKey) -> None:
    if not REAL_DOCUMENT.exists():
        pytest.skip(f"real vectors not found at {REAL_DIR}")
    real = REAL_DOCUMENT.read_bytes()
    ours = _document(pki, leaf, indefinite=real[10] == 0xBF)
    # 84 | 44 a1013822 | a0 | 59 <len> | payload map head
    assert ours[:8] == real[:8]
    assert ours[10] == real[10]
    real_payload = cbor2.loads(cbor2.loads(real)[2])
    assert list(real_payload) == EXPECTED_KEYS


# --- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag18", [False, True])
@pytest.mark.crosscheck
def test_pycose_verifies(pki: Pki, leaf: CertifiedKey, tag18: bool) -> None:
    assert _pycose_verifies(_document(pki, leaf, tag18=tag18, nonce=b"abc"), leaf)


@pytest.mark.parametrize("indefinite", [False, True])
def test_cryptography_verifies_document_and_chain(
    pki: Pki, leaf: CertifiedKey, indefinite: bool
) -> None:
    payload = verify_document(
        _document(pki, leaf, indefinite=indefinite, user_data=b"u"), pki.root.certificate
    )
    assert payload["user_data"] == b"u"


def test_signature_over_other_key_is_rejected(pki: Pki, leaf: CertifiedKey) -> None:
    other = pki.issue_leaf(module_id="other", not_before=T0 + timedelta(hours=2))
    payload = _split(_document(pki, leaf))[1][2]
    forged = builder.sign_payload(payload, other.key)
    with pytest.raises(Rejected):
        verify_document(forged, pki.root.certificate)


@pytest.mark.crosscheck
def test_high_s_and_low_s_twins_both_verify(pki: Pki, leaf: CertifiedKey) -> None:
    high = _document(pki, leaf, high_s=True)
    payload = _split(high)[1][2]
    low = builder.sign_payload(payload, leaf.key, low_s=True)
    as_signed = builder.sign_payload(payload, leaf.key)
    high_sig, low_sig = _split(high)[1][3], _split(low)[1][3]
    high_s, low_s = int.from_bytes(high_sig[48:], "big"), int.from_bytes(low_sig[48:], "big")
    assert high_s > P384_ORDER // 2 >= low_s
    assert high_sig[:48] == low_sig[:48]
    assert high_s + low_s == P384_ORDER
    assert _split(as_signed)[1][3] in (high_sig, low_sig)
    for document in (high, low):
        verify_document(document, pki.root.certificate)
        assert _pycose_verifies(document, leaf)


def test_high_s_and_low_s_are_exclusive(leaf: CertifiedKey) -> None:
    with pytest.raises(ValueError, match="exclusive"):
        builder.sign_payload(b"\xa0", leaf.key, high_s=True, low_s=True)


@pytest.mark.parametrize(
    ("curve", "length"), [(ec.SECP256R1(), 64), (ec.SECP384R1(), 96), (ec.SECP521R1(), 132)]
)
def test_signature_width_follows_the_curve(curve: ec.EllipticCurve, length: int) -> None:
    key = builder.derive_key(3, "width", curve=curve)
    document = builder.sign_payload(b"\xa0", key, high_s=True)
    signature = _split(document)[1][3]
    assert len(signature) == length
    half = length // 2
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    key.public_key().verify(
        der, builder.sig_structure(b"\xa0"), ec.ECDSA(hashes.SHA384())
    )  # raises if wrong


def test_sig_structure_matches_cbor2() -> None:
    payload = bytes(range(256)) * 3
    assert builder.sig_structure(payload) == cbor2.dumps(
        ["Signature1", builder.PROTECTED_HEADER, b"", payload]
    )


# --- certificate profile ------------------------------------------------------------------------


def _chain(pki: Pki, leaf: CertifiedKey) -> list[x509.Certificate]:
    return [
        pki.root.certificate,
        pki.regional.certificate,
        pki.zonal.certificate,
        pki.instance.certificate,
        leaf.certificate,
    ]


def test_chain_links_verify(pki: Pki, leaf: CertifiedKey) -> None:
    chain = _chain(pki, leaf)
    chain[0].verify_directly_issued_by(chain[0])
    for issuer, subject in itertools.pairwise(chain):
        subject.verify_directly_issued_by(issuer)
        assert subject.issuer == issuer.subject
    assert pki.cabundle == [c.public_bytes(serialization.Encoding.DER) for c in chain[:4]]


def test_every_certificate_is_p384_ecdsa_sha384(pki: Pki, leaf: CertifiedKey) -> None:
    for certificate in _chain(pki, leaf):
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1"
        assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        assert certificate.version == x509.Version.v3
        assert 0 < certificate.serial_number < 2**159


def _ext(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[Any]:
    return certificate.extensions.get_extension_for_oid(oid)


@pytest.mark.parametrize(
    ("position", "path_length", "usage"),
    [
        (0, None, builder.CA_KEY_USAGE),
        (1, 2, builder.CA_KEY_USAGE),
        (2, 1, builder.CA_KEY_USAGE),
        (3, 0, builder.INSTANCE_KEY_USAGE),
    ],
)
def test_ca_profile(
    pki: Pki, leaf: CertifiedKey, position: int, path_length: int | None, usage: x509.KeyUsage
) -> None:
    certificate = _chain(pki, leaf)[position]
    constraints = _ext(certificate, ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=path_length)
    usage_ext = _ext(certificate, ExtensionOID.KEY_USAGE)
    assert usage_ext.critical
    assert usage_ext.value == usage
    assert usage_ext.value.key_cert_sign
    assert _ext(certificate, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest == (
        x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    )
    if position > 0:
        issuer = _chain(pki, leaf)[position - 1]
        aki = _ext(certificate, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
        ski = _ext(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
        assert aki.key_identifier == ski.digest


def test_instance_key_usage_is_cert_sign_only(pki: Pki) -> None:
    usage = _ext(pki.instance.certificate, ExtensionOID.KEY_USAGE).value
    assert usage.key_cert_sign
    assert not (usage.digital_signature or usage.crl_sign or usage.content_commitment)


def test_leaf_profile(pki: Pki, leaf: CertifiedKey) -> None:
    certificate = leaf.certificate
    constraints = _ext(certificate, ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical
    assert constraints.value.ca is False
    assert constraints.value.path_length is None
    usage = _ext(certificate, ExtensionOID.KEY_USAGE)
    assert not usage.critical
    assert usage.value.digital_signature
    assert usage.value.content_commitment
    assert not usage.value.key_cert_sign
    oids = {extension.oid for extension in certificate.extensions}
    assert oids == {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(hours=3)
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == f"{MODULE_ID}.us-east-1.aws"


def test_root_is_self_signed_and_obviously_synthetic(pki: Pki) -> None:
    root = pki.root.certificate
    assert root.subject == root.issuer
    common_name = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(common_name, str)
    assert "emulator" in common_name
    assert common_name.endswith(".nitro-enclaves")
    assert common_name != "aws.nitro-enclaves"
    assert x509.load_pem_x509_certificate(pki.root_pem()) == root


def test_lifetimes_match_aws(pki: Pki, leaf: CertifiedKey) -> None:
    lifetimes = [c.not_valid_after_utc - c.not_valid_before_utc for c in _chain(pki, leaf)]
    root, regional, zonal, instance, leaf_lifetime = lifetimes
    assert timedelta(days=365 * 30) <= root <= timedelta(days=365 * 30 + 9)
    assert timedelta(days=20) <= regional <= timedelta(days=20, hours=2)
    assert timedelta(days=5, hours=12) <= zonal <= timedelta(days=5, hours=18)
    assert instance == timedelta(days=1)
    assert leaf_lifetime == timedelta(hours=3)


def test_validity_windows_nest(pki: Pki, leaf: CertifiedKey) -> None:
    chain = _chain(pki, leaf)
    for issuer, subject in itertools.pairwise(chain):
        assert issuer.not_valid_before_utc <= subject.not_valid_before_utc
        assert subject.not_valid_after_utc <= issuer.not_valid_after_utc
    assert pki.instance.certificate.not_valid_before_utc == T0
    assert pki.not_before == T0
    assert pki.not_after == T0 + timedelta(days=1)


def _profile(certificate: x509.Certificate) -> dict[str, Any]:
    """What must match AWS: extension types and criticality, constraints and key usage."""
    extensions = {ext.oid.dotted_string: ext.critical for ext in certificate.extensions}
    constraints = _ext(certificate, ExtensionOID.BASIC_CONSTRAINTS).value
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return {
        "extensions": extensions,
        "basic_constraints": (constraints.ca, constraints.path_length),
        "key_usage": _ext(certificate, ExtensionOID.KEY_USAGE).value,
        "curve": key.curve.name,
        "signature": certificate.signature_algorithm_oid,
        "subject_attributes": sorted(a.oid.dotted_string for a in certificate.subject),
    }


def test_profile_matches_a_real_chain(pki: Pki, leaf: CertifiedKey) -> None:
    real, _ = _real_chain()
    for ours, theirs in zip(_chain(pki, leaf), real, strict=True):
        assert _profile(ours) == _profile(theirs), theirs.subject.rfc4514_string()


def test_cryptography_webpki_accepts_the_real_chain() -> None:
    # The policy itself is checked on AWS's chain, so that the next test means something.
    real, at = _real_chain()
    verified = _nitro_client_verifier(real[0], at).verify(real[4], real[1:4])
    assert verified.chain[-1] == real[0]


def test_cryptography_webpki_accepts_the_synthetic_chain(pki: Pki, leaf: CertifiedKey) -> None:
    chain = _chain(pki, leaf)
    at = leaf.certificate.not_valid_before_utc + timedelta(minutes=14)
    verified = _nitro_client_verifier(chain[0], at).verify(chain[4], chain[1:4])
    assert verified.chain == [chain[4], chain[3], chain[2], chain[1], chain[0]]
    # ...and not after the leaf expires.
    late = leaf.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(verification.VerificationError):
        _nitro_client_verifier(chain[0], late).verify(chain[4], chain[1:4])


# --- determinism --------------------------------------------------------------------------------


def _private_scalar(key: ec.EllipticCurvePrivateKey) -> int:
    return key.private_numbers().private_value


def test_same_seed_same_pki() -> None:
    first = builder.generate_pki(seed=7, not_before=T0)
    second = builder.generate_pki(seed=7, not_before=T0)
    assert first.cabundle == second.cabundle
    assert first.root_pem() == second.root_pem()
    for a, b in zip(first.cabundle, second.cabundle, strict=True):
        assert a == b
    assert _private_scalar(first.instance.key) == _private_scalar(second.instance.key)


def test_same_seed_without_start_gives_same_keys() -> None:
    first = builder.generate_pki(seed=7)
    second = builder.generate_pki(seed=7)
    for a, b in zip(
        (first.root, first.regional, first.zonal, first.instance),
        (second.root, second.regional, second.zonal, second.instance),
        strict=True,
    ):
        assert _private_scalar(a.key) == _private_scalar(b.key)
    # The seeded root does not depend on the chain's start, so it can be pinned once.
    assert first.root.der == builder.generate_pki(seed=7, not_before=T0).root.der


def test_different_seeds_differ() -> None:
    seven = builder.generate_pki(seed=7, not_before=T0)
    eight = builder.generate_pki(seed=8, not_before=T0)
    for a, b in zip(seven.cabundle, eight.cabundle, strict=True):
        assert a != b
    assert _private_scalar(seven.root.key) != _private_scalar(eight.root.key)


def test_unseeded_pkis_are_fresh() -> None:
    first = builder.generate_pki(not_before=T0)
    second = builder.generate_pki(not_before=T0)
    assert _private_scalar(first.root.key) != _private_scalar(second.root.key)
    assert first.root.der != second.root.der


def test_unseeded_pki_is_valid_now() -> None:
    pki = builder.generate_pki()
    now = datetime.now(UTC)
    assert pki.not_before <= now
    leaf = pki.issue_leaf(module_id=MODULE_ID, not_before=now)
    assert leaf.certificate.not_valid_after_utc <= pki.not_after


def test_same_inputs_same_document(pki: Pki) -> None:
    documents = []
    for _ in range(2):
        again = builder.generate_pki(seed=7, not_before=T0)
        leaf = again.issue_leaf(module_id=MODULE_ID, not_before=T0 + timedelta(hours=1))
        documents.append(_document(again, leaf, nonce=b"n", indefinite=True))
    assert documents[0] == documents[1]
    other = builder.generate_pki(seed=8, not_before=T0)
    other_leaf = other.issue_leaf(module_id=MODULE_ID, not_before=T0 + timedelta(hours=1))
    assert _document(other, other_leaf, nonce=b"n", indefinite=True) != documents[0]


def test_leaf_key_depends_on_module_and_time(pki: Pki, leaf: CertifiedKey) -> None:
    start = T0 + timedelta(hours=1)
    same = pki.issue_leaf(module_id=MODULE_ID, not_before=start)
    assert same.der == leaf.der
    other_module = pki.issue_leaf(module_id=MODULE_ID + "0", not_before=start)
    later = pki.issue_leaf(module_id=MODULE_ID, not_before=start + timedelta(seconds=1))
    scalars = {_private_scalar(k.key) for k in (leaf, other_module, later)}
    assert len(scalars) == 3


def test_derive_key_is_deterministic_and_on_curve() -> None:
    a = builder.derive_key(1, "x", curve=ec.SECP521R1())
    b = builder.derive_key(1, "x", curve=ec.SECP521R1())
    c = builder.derive_key(1, "y", curve=ec.SECP521R1())
    assert _private_scalar(a) == _private_scalar(b) != _private_scalar(c)
    assert a.curve.name == "secp521r1"


# --- renewal and misuse -------------------------------------------------------------------------


def test_renew_intermediates_keeps_the_root(pki: Pki) -> None:
    later = T0 + timedelta(hours=20)
    renewed = pki.renew_intermediates(not_before=later)
    assert renewed.root.der == pki.root.der
    assert renewed.instance.certificate.not_valid_before_utc == later
    assert renewed.instance.der != pki.instance.der
    # A leaf the original instance CA could not have issued (it ends at T0 + 1 day).
    leaf = renewed.issue_leaf(module_id=MODULE_ID, not_before=later + timedelta(hours=5))
    document = _document(renewed, leaf)
    verify_document(document, pki.root.certificate)


def test_leaf_outside_the_instance_window_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="instance CA"):
        pki.issue_leaf(module_id=MODULE_ID, not_before=T0 + timedelta(hours=22))
    with pytest.raises(ValueError, match="instance CA"):
        pki.issue_leaf(module_id=MODULE_ID, not_before=T0 - timedelta(seconds=1))


def test_naive_datetimes_are_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        builder.generate_pki(seed=1, not_before=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.issue_leaf(module_id=MODULE_ID, not_before=datetime(2025, 7, 18, 9))


# --- issue_certificate tweaks for the conformance corpus ----------------------------------------


def _tweaked_leaf(pki: Pki, **changes: Any) -> x509.Certificate:
    arguments: dict[str, Any] = {
        "subject": "tweaked.us-east-1.aws",
        "public_key": builder.derive_key(9, "tweak").public_key(),
        "issuer": pki.instance.certificate,
        "issuer_key": pki.instance.key,
        "not_before": T0 + timedelta(hours=1),
        "not_after": T0 + timedelta(hours=4),
        "ca": False,
        "key_usage": builder.LEAF_KEY_USAGE,
        "key_usage_critical": False,
    }
    arguments.update(changes)
    return builder.issue_certificate(**arguments)


@pytest.mark.parametrize(
    "public_key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        builder.derive_key(1, "p256", curve=ec.SECP256R1()).public_key(),
        builder.derive_key(1, "p521", curve=ec.SECP521R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["rsa", "p256", "p521", "ed25519"],
)
def test_leaf_with_another_key_type(pki: Pki, public_key: Any) -> None:
    certificate = _tweaked_leaf(pki, public_key=public_key)
    assert certificate.public_key() == public_key
    certificate.verify_directly_issued_by(pki.instance.certificate)


def test_unknown_critical_extension_and_missing_ones(pki: Pki) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    certificate = _tweaked_leaf(pki, ca=None, key_usage=None, extra_extensions=[(unknown, True)])
    extensions = list(certificate.extensions)
    assert [(e.oid, e.critical) for e in extensions] == [(unknown.oid, True)]


def test_ca_false_intermediate_and_expired_intermediate(pki: Pki) -> None:
    key = builder.derive_key(9, "zonal-tweak")
    not_ca = builder.issue_certificate(
        subject="broken.zonal.us-east-1.aws.nitro-enclaves",
        public_key=key.public_key(),
        issuer=pki.regional.certificate,
        issuer_key=pki.regional.key,
        not_before=T0 - timedelta(days=2),
        not_after=T0 - timedelta(days=1),
        ca=False,
        key_usage=builder.CA_KEY_USAGE,
        basic_constraints_critical=False,
    )
    constraints = _ext(not_ca, ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.value.ca is False
    assert not constraints.critical
    assert not_ca.not_valid_after_utc < T0
    not_ca.verify_directly_issued_by(pki.regional.certificate)


def test_rsa_and_ed25519_issuers(pki: Pki) -> None:
    issuers: Sequence[Any] = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    )
    for issuer_key in issuers:
        root = builder.issue_certificate(
            subject="odd.nitro-enclaves",
            public_key=issuer_key.public_key(),
            issuer=None,
            issuer_key=issuer_key,
            not_before=T0,
            not_after=T0 + timedelta(days=1),
            ca=True,
            key_usage=builder.CA_KEY_USAGE,
            subject_key_identifier=True,
            authority_key_identifier=True,
        )
        root.verify_directly_issued_by(root)
        aki = _ext(root, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
        assert aki.key_identifier == _ext(root, ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_curve_orders(curve: ec.EllipticCurve) -> None:
    # OpenSSL accepts exactly the scalars below the group order, which pins the constant.
    order = builder._CURVE_ORDERS[curve.name]
    ec.derive_private_key(order - 1, curve)
    with pytest.raises(ValueError):
        ec.derive_private_key(order, curve)
