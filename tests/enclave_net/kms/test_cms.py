"""CiphertextForRecipient parsing: KMS's profile accepted, everything else a CmsError, and an
independent CMS implementation (openssl cms) agreeing with us both ways."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from enclave_net.kms.cms import build_enveloped, key_identifier, open_enveloped, parse_enveloped
from enclave_net.kms.errors import CmsError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
MESSAGE = b"the oracle's signing key, 32 b."

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A self-signed certificate: openssl cms addresses recipients by certificate."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave recipient")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("cms")
    out = {
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
        "message": directory / "message.bin",
    }
    out["cert"].write_bytes(certificate(KEY).public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out["message"].write_bytes(MESSAGE)
    return out


def openssl_encrypt(files: dict[str, Path], *options: str) -> bytes:
    result = subprocess.run(
        [
            "openssl", "cms", "-encrypt", "-binary", "-outform", "DER",
            "-in", str(files["message"]), "-recip", str(files["cert"]), *options,
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )  # fmt: skip
    return result.stdout


KMS_PROFILE = (
    "-keyid",
    "-keyopt", "rsa_padding_mode:oaep",
    "-keyopt", "rsa_oaep_md:sha256",
    "-keyopt", "rsa_mgf1_md:sha256",
    "-aes-256-cbc",
)  # fmt: skip


@needs_openssl
def test_openssl_output_opens_with_our_parser(files: dict[str, Path]) -> None:
    assert open_enveloped(openssl_encrypt(files, *KMS_PROFILE), KEY) == MESSAGE


@needs_openssl
def test_our_double_output_opens_with_openssl(files: dict[str, Path], tmp_path: Path) -> None:
    envelope = tmp_path / "envelope.ber"
    envelope.write_bytes(build_enveloped(MESSAGE, KEY.public_key()))
    result = subprocess.run(
        [
            "openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(envelope),
            "-inkey", str(files["key"]), "-recip", str(files["cert"]),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )  # fmt: skip
    assert result.stdout == MESSAGE


@needs_openssl
@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        # openssl's default recipient id is issuerAndSerialNumber: KMS uses the key identifier.
        (KMS_PROFILE[1:], "version v0"),
        (("-keyid", "-aes-256-cbc"), "RSAES-OAEP"),  # PKCS#1 v1.5 key transport
        (("-keyid", "-keyopt", "rsa_padding_mode:oaep", "-aes-256-cbc"), r"1\.3\.14\.3\.2\.26"),
        ((*KMS_PROFILE[:-1], "-aes-128-cbc"), "AES-256-CBC"),
        ((*KMS_PROFILE[:5], "-keyopt", "rsa_mgf1_md:sha1", "-aes-256-cbc"), "MGF1 hash"),
    ],
)
def test_other_profiles_are_refused(
    files: dict[str, Path], options: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(CmsError, match=complaint):
        open_enveloped(openssl_encrypt(files, *options), KEY)


@needs_openssl
def test_two_recipients_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    second = tmp_path / "second.pem"
    second.write_bytes(certificate(OTHER).public_bytes(serialization.Encoding.PEM))
    data = openssl_encrypt(files, *KMS_PROFILE[:-1], "-recip", str(second), "-aes-256-cbc")
    with pytest.raises(CmsError, match="2 recipients"):
        open_enveloped(data, KEY)


def test_round_trip_with_every_length_near_a_block() -> None:
    for size in (0, 1, 15, 16, 17, 2400, 4096):
        plaintext = bytes(range(256)) * 17
        assert (
            open_enveloped(build_enveloped(plaintext[:size], KEY.public_key()), KEY)
            == (plaintext[:size])
        )


def test_4096_bit_recipient() -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    assert open_enveloped(build_enveloped(MESSAGE, big.public_key()), big) == MESSAGE


def test_addressed_to_another_key() -> None:
    with pytest.raises(CmsError, match="not ours"):
        open_enveloped(build_enveloped(MESSAGE, OTHER.public_key()), KEY)


def test_key_identifier_is_rfc5280_method_1() -> None:
    envelope = parse_enveloped(build_enveloped(MESSAGE, KEY.public_key()))
    spki = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The BIT STRING of a 2048-bit SPKI is its last 270 bytes after the 1-byte unused-bits count.
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki[-270:])
    assert envelope.key_id == key_identifier(KEY.public_key()) == digest.finalize()


def test_a_tampered_wrapped_key_is_refused() -> None:
    data = bytearray(build_enveloped(MESSAGE, KEY.public_key()))
    wrapped = parse_enveloped(bytes(data)).encrypted_key
    at = bytes(data).index(wrapped) + 100
    data[at] ^= 0x01
    with pytest.raises(CmsError, match="does not decrypt"):
        open_enveloped(bytes(data), KEY)


def test_a_truncated_or_extended_envelope_is_refused() -> None:
    data = build_enveloped(MESSAGE, KEY.public_key())
    for bad in (data[:-1], data[:-2], data + b"\x00", data[: len(data) // 2], b"", b"\x30\x80"):
        with pytest.raises(CmsError):
            open_enveloped(bad, KEY)


def test_oaep_with_default_parameters_means_sha1_and_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # RSAES-OAEP with every parameter left at its default is SHA-1 / MGF1-SHA-1 (RFC 8017 A.2.1).
    from enclave_net.kms import cms

    # SEQUENCE { OID rsaesOaep, SEQUENCE {} }: asn1crypto will not build it, so parse it.
    empty_params = bytes.fromhex("300d" + "06092a864886f70d010107" + "3000")
    monkeypatch.setattr(
        cms, "_oaep_algorithm", lambda: asn1_cms.KeyEncryptionAlgorithm.load(empty_params)
    )
    with pytest.raises(CmsError, match=r"OAEP hash is 1\.3\.14\.3\.2\.26"):
        open_enveloped(build_enveloped(MESSAGE, KEY.public_key()), KEY)


def test_a_signed_data_is_not_an_enveloped_data() -> None:
    signed = asn1_cms.ContentInfo(
        {
            "content_type": "signed_data",
            "content": {
                "version": "v1",
                "digest_algorithms": [],
                "encap_content_info": {"content_type": "data"},
                "signer_infos": [],
            },
        }
    ).dump()
    with pytest.raises(CmsError, match="expected EnvelopedData"):
        open_enveloped(signed, KEY)


@seed(14)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_only_raise_cms_error(data: bytes) -> None:
    with pytest.raises(CmsError):
        open_enveloped(data, KEY)


VALID = build_enveloped(MESSAGE, KEY.public_key())


@seed(15)
@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255))
def test_any_single_byte_change_opens_or_raises_cms_error(position: int, xor: int) -> None:
    data = bytearray(VALID)
    data[position] ^= xor
    try:
        opened = open_enveloped(bytes(data), KEY)
    except CmsError:
        return
    # AES-CBC has no integrity: a changed IV or content byte can still unpad (KMS's format;
    # TLS is what protects it in transit). Any other change (structure, algorithms, recipient,
    # wrapped key) must have been refused.
    parts = parse_enveloped(VALID)
    iv_at, content_at = VALID.index(parts.iv), VALID.index(parts.encrypted_content)
    assert iv_at <= position < iv_at + 16 or (
        content_at <= position < content_at + len(parts.encrypted_content)
    )
    assert opened != MESSAGE
