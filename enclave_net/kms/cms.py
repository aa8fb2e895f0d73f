"""CMS EnvelopedData as KMS uses it for `CiphertextForRecipient` (RFC 5652 §6).

KMS encrypts the answer for the enclave with one KeyTransRecipientInfo (RSAES-OAEP with SHA-256
and MGF1-SHA-256, RFC 8017 §7.1 / RFC 4055 §4.1) carrying a fresh AES-256 key, and the content
with AES-256-CBC (RFC 3565 §2.3) and PKCS#7 padding. AWS's own enclave SDK parses the structure
as BER: EnvelopedData version 2, exactly one recipient of version 2 (subjectKeyIdentifier), the
encrypted content possibly split into chunks of a constructed OCTET STRING.

Why asn1crypto for the ASN.1: `cryptography`'s PKCS#7 decryption only does PKCS#1 v1.5 key
transport (it raises `UnsupportedAlgorithm` on OAEP recipients), so the structure is parsed here
and the RSA-OAEP and AES steps are done with `cryptography`. asn1crypto ships the RFC 5652 and
RFC 4055 types ready made (`cms.EnvelopedData`, `algos.RSAESOAEPParams`), reads BER with
indefinite lengths and constructed strings (what KMS sends) as well as DER, is pure Python with
no dependencies, and is mature (its API has been stable for years; last release 1.5.1).
pyasn1-modules' rfc5652 would also do, but needs two packages and hand-written OAEP parameter
decoding. asn1crypto parses lazily and raises several exception types, so every access happens
inside one guard that turns anything it raises into `CmsError`.

Strictness: every algorithm OID and parameter is checked against exactly the KMS profile (an
absent OAEP parameter would mean SHA-1, and is refused), exactly one recipient, addressed to our
key's RFC 5280 §4.2.1.2 (1) key identifier, a 16-byte IV, whole AES blocks, valid padding, no
trailing bytes. Errors say what was wrong, never what was inside.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enclave_net.kms.errors import CmsError

__all__ = [
    "AES_256_CBC",
    "RSAES_OAEP",
    "Envelope",
    "build_enveloped",
    "key_identifier",
    "open_enveloped",
    "parse_enveloped",
]

ENVELOPED_DATA = "1.2.840.113549.1.7.3"
DATA = "1.2.840.113549.1.7.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1 = "1.2.840.113549.1.1.8"
SHA256 = "2.16.840.1.101.3.4.2.1"
P_SPECIFIED = "1.2.840.113549.1.1.9"
AES_256_CBC = "2.16.840.1.101.3.4.1.42"

_AES_BLOCK = 16
_AES_256_KEY = 32
# The double splits the content like a streaming BER encoder does (BouncyCastle's default).
_CHUNK = 1000
# Largest KMS plaintext is a 4096-bit RSA private key (~2.4 KB) or 4 KiB for Decrypt; the
# limit only bounds work on hostile input.
MAX_ENVELOPE = 64 * 1024

_OAEP = asym_padding.OAEP(
    mgf=asym_padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 §4.2.1.2 method 1)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a checked EnvelopedData: all ciphertext, nothing secret."""

    key_id: bytes
    encrypted_key: bytes
    iv: bytes
    encrypted_content: bytes


def _hash_is_sha256(identifier: Any, what: str) -> None:
    if identifier["algorithm"].dotted != SHA256:
        raise CmsError(f"{what} is {identifier['algorithm'].dotted}, expected SHA-256")
    params = identifier["parameters"]
    # RFC 4055 §2.1: absent preferred, NULL accepted.
    if not isinstance(params, core.Void | core.Null):
        raise CmsError(f"{what} has unexpected parameters")


def _check_oaep(algorithm: Any) -> None:
    if algorithm["algorithm"].dotted != RSAES_OAEP:
        raise CmsError(
            f"key transport is {algorithm['algorithm'].dotted}, expected RSAES-OAEP ({RSAES_OAEP})"
        )
    params = algorithm["parameters"]
    if not isinstance(params, algos.RSAESOAEPParams):
        raise CmsError("RSAES-OAEP without parameters means SHA-1; expected SHA-256")
    # An absent field reads as its default, SHA-1 / MGF1-SHA-1 (RFC 8017 A.2.1), and fails here.
    _hash_is_sha256(params["hash_algorithm"], "OAEP hash")
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].dotted != MGF1:
        raise CmsError(f"OAEP mask generation is {mgf['algorithm'].dotted}, expected MGF1")
    _hash_is_sha256(mgf["parameters"], "MGF1 hash")
    source = params["p_source_algorithm"]
    if source.contents and (
        source["algorithm"].dotted != P_SPECIFIED or source["parameters"].native not in (b"", None)
    ):
        raise CmsError("OAEP label is not empty")


def _parse(data: bytes) -> Envelope:
    info = asn1_cms.ContentInfo.load(data, strict=True)
    if info["content_type"].dotted != ENVELOPED_DATA:
        raise CmsError(f"content type is {info['content_type'].dotted}, expected EnvelopedData")
    env = info["content"]
    if env["version"].native != "v2":
        raise CmsError(f"EnvelopedData version {env['version'].native}, expected v2")
    if env["originator_info"].contents or env["unprotected_attrs"].contents:
        raise CmsError("EnvelopedData carries originatorInfo or unprotectedAttrs; KMS sends none")
    recipients = env["recipient_infos"]
    if len(recipients) != 1:
        raise CmsError(f"{len(recipients)} recipients, expected exactly one")
    recipient = recipients[0]
    if recipient.name != "ktri":
        raise CmsError(f"recipient is {recipient.name}, expected KeyTransRecipientInfo")
    ktri = recipient.chosen
    if ktri["version"].native != "v2" or ktri["rid"].name != "subject_key_identifier":
        raise CmsError("recipient is not identified by subjectKeyIdentifier (version 2)")
    _check_oaep(ktri["key_encryption_algorithm"])
    content = env["encrypted_content_info"]
    if content["content_type"].dotted != DATA:
        raise CmsError(f"encrypted content type {content['content_type'].dotted}, expected data")
    cipher = content["content_encryption_algorithm"]
    if cipher["algorithm"].dotted != AES_256_CBC:
        raise CmsError(f"content cipher is {cipher['algorithm'].dotted}, expected AES-256-CBC")
    iv = cipher["parameters"]
    if not isinstance(iv, core.OctetString) or len(iv.native) != _AES_BLOCK:
        raise CmsError("AES-256-CBC IV is not a 16-byte OCTET STRING")
    encrypted = content["encrypted_content"]
    if not encrypted.contents:
        raise CmsError("no encrypted content (detached content is not what KMS sends)")
    body = encrypted.native
    if not body or len(body) % _AES_BLOCK:
        raise CmsError("encrypted content is not a whole number of AES blocks")
    return Envelope(
        key_id=ktri["rid"].chosen.native,
        encrypted_key=ktri["encrypted_key"].native,
        iv=iv.native,
        encrypted_content=body,
    )


def parse_enveloped(data: bytes) -> Envelope:
    """Check `data` against the KMS profile; `CmsError` for anything else, whatever the bytes."""
    if not isinstance(data, bytes | bytearray):
        raise CmsError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_ENVELOPE:
        raise CmsError(f"EnvelopedData of {len(data)} bytes is larger than {MAX_ENVELOPE}")
    try:
        return _parse(bytes(data))
    except CmsError:
        raise
    except Exception as exc:
        # asn1crypto parses lazily: a malformed inner element surfaces as ValueError, TypeError,
        # KeyError... at first access. All of them mean "not a valid EnvelopedData".
        raise CmsError(f"malformed EnvelopedData ({type(exc).__name__})") from None


def open_enveloped(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a KMS `CiphertextForRecipient` addressed to `private_key`."""
    envelope = parse_enveloped(data)
    ours = key_identifier(private_key.public_key())
    if not hmac.compare_digest(envelope.key_id, ours):
        raise CmsError(
            f"addressed to key id {envelope.key_id.hex()}, not ours ({ours.hex()}): the "
            "attestation document sent was not made for this recipient's key"
        )
    if len(envelope.encrypted_key) != private_key.key_size // 8:
        raise CmsError("encrypted key length does not match our RSA modulus")
    # One message for every failure past this point: which step failed is an oracle.
    failed = CmsError("CiphertextForRecipient does not decrypt with our key")
    try:
        cek = private_key.decrypt(envelope.encrypted_key, _OAEP)
    except ValueError:
        raise failed from None
    if len(cek) != _AES_256_KEY:
        raise failed
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(envelope.iv)).decryptor()
    padded = decryptor.update(envelope.encrypted_content) + decryptor.finalize()
    unpadder = padding.PKCS7(_AES_BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise failed from None


# --- building (the KMS double's side) -------------------------------------------------------


def _oaep_algorithm() -> asn1_cms.KeyEncryptionAlgorithm:
    sha256 = {"algorithm": "sha256"}
    return asn1_cms.KeyEncryptionAlgorithm(
        {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {
                    "hash_algorithm": sha256,
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
                }
            ),
        }
    )


def _indefinite(tag: bytes, *parts: bytes) -> bytes:
    # BER constructed, indefinite length: tag, 0x80, contents, end-of-contents.
    return tag + b"\x80" + b"".join(parts) + b"\x00\x00"


def build_enveloped(plaintext: bytes, public_key: rsa.RSAPublicKey) -> bytes:
    """EnvelopedData for `public_key` as KMS sends it: BER, indefinite lengths, chunked content."""
    cek = os.urandom(_AES_256_KEY)
    iv = os.urandom(_AES_BLOCK)
    padder = padding.PKCS7(_AES_BLOCK * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    recipient = asn1_cms.RecipientInfo(
        name="ktri",
        value={
            "version": "v2",
            "rid": asn1_cms.RecipientIdentifier(
                name="subject_key_identifier", value=key_identifier(public_key)
            ),
            "key_encryption_algorithm": _oaep_algorithm(),
            "encrypted_key": public_key.encrypt(cek, _OAEP),
        },
    )
    version = asn1_cms.CMSVersion("v2").dump()
    recipients = asn1_cms.RecipientInfos([recipient]).dump()
    content_type = asn1_cms.ContentType(DATA).dump()
    cipher = algos.EncryptionAlgorithm(
        {"algorithm": "aes256_cbc", "parameters": core.OctetString(iv)}
    ).dump()
    chunks = b"".join(
        core.OctetString(body[i : i + _CHUNK]).dump() for i in range(0, len(body), _CHUNK)
    )
    encrypted_content = _indefinite(b"\xa0", chunks)  # [0] IMPLICIT OCTET STRING, constructed
    enveloped = _indefinite(
        b"\x30", version, recipients, _indefinite(b"\x30", content_type, cipher, encrypted_content)
    )
    return _indefinite(
        b"\x30", asn1_cms.ContentType(ENVELOPED_DATA).dump(), _indefinite(b"\xa0", enveloped)
    )
