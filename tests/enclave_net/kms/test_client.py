"""The enclave's KMS client against the double: real HTTPS on loopback through the egress, SigV4
checked by botocore on the other side, attestation documents from the emulated NSM verified
with the project's verifier and judged by the key policy."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from enclave_net.egress import EgressClient, Response, Timeouts, forbid_dns
from enclave_net.kms.client import KmsClient
from enclave_net.kms.credentials import Credentials, StaticCredentials
from enclave_net.kms.double import Served
from enclave_net.kms.errors import (
    AccessDeniedException,
    CmsError,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidSignatureException,
    KmsError,
    KmsTransportError,
    NotFoundException,
    RecipientError,
    UnrecognizedClientException,
    ValidationException,
)
from enclave_net.kms.recipient import Recipient
from nsm import Nsm
from nsm.emulator import Emulator
from tests.enclave_net.kms._support import (
    CREDENTIALS,
    KEY_ID,
    OPEN_KEY_ID,
    REGION,
    EmulatorTransport,
    KmsWorld,
    booted,
    run,
)
from tests.enclave_net.kms.conftest import OTHER_IMAGE

SECRET = b"sealed by the admin, read by the enclave"


def seal(world: KmsWorld, plaintext: bytes = SECRET, key: str = KEY_ID, **kw: Any) -> bytes:
    async def go() -> bytes:
        async with world.client() as kms:
            return (await kms.encrypt(key, plaintext, **kw)).ciphertext_blob

    return run(go())


async def _with_client(world: KmsWorld, recipient: Recipient, call: Any, **kw: Any) -> Any:
    kms = world.client(recipient, **kw)
    try:
        return await call(kms)
    finally:
        await kms.aclose()
        if "http" in kw:  # a pool the test made is the test's to close
            await kw["http"].aclose()


def call(world: KmsWorld, recipient: Recipient, function: Any, **kw: Any) -> Any:
    return run(_with_client(world, recipient, function, **kw))


@pytest.fixture
def recipient(emulator: Emulator) -> Recipient:
    return Recipient(booted(emulator))


def test_encrypt_then_decrypt_with_recipient(world: KmsWorld, recipient: Recipient) -> None:
    blob = seal(world, encryption_context={"purpose": "test"})
    assert SECRET not in blob
    opened = call(
        world,
        recipient,
        lambda kms: kms.decrypt(
            blob, key_id="alias/oracle", encryption_context={"purpose": "test"}
        ),
    )
    assert opened == SECRET


def test_generate_data_key_opens_and_its_blob_decrypts_to_the_same_key(
    world: KmsWorld, recipient: Recipient
) -> None:
    data_key = call(world, recipient, lambda kms: kms.generate_data_key(KEY_ID))
    assert len(data_key.plaintext) == 32 and "plaintext" not in repr(data_key)
    again = call(world, recipient, lambda kms: kms.decrypt(data_key.ciphertext_blob))
    assert again == data_key.plaintext
    sixteen = call(world, recipient, lambda kms: kms.generate_data_key(KEY_ID, key_spec="AES_128"))
    assert len(sixteen.plaintext) == 16
    seven = call(world, recipient, lambda kms: kms.generate_data_key(KEY_ID, number_of_bytes=7))
    assert len(seven.plaintext) == 7


@pytest.mark.parametrize("spec", ["ECC_SECG_P256K1", "RSA_2048"])
def test_generate_data_key_pair_private_key_matches_public_key(
    world: KmsWorld, recipient: Recipient, spec: str
) -> None:
    pair = call(world, recipient, lambda kms: kms.generate_data_key_pair(KEY_ID, spec))
    private = serialization.load_der_private_key(pair.private_key_der, password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public == pair.public_key_der and pair.key_pair_spec == spec
    assert isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    # The blob is the same private key, sealed under the KMS key.
    assert call(world, recipient, lambda kms: kms.decrypt(pair.private_key_ciphertext_blob)) == (
        pair.private_key_der
    )


def test_generate_random(world: KmsWorld, recipient: Recipient) -> None:
    first = call(world, recipient, lambda kms: kms.generate_random(1024))
    second = call(world, recipient, lambda kms: kms.generate_random(1024))
    assert len(first) == 1024 and first != second
    with pytest.raises(ValidationException, match="NumberOfBytes"):
        call(world, recipient, lambda kms: kms.generate_random(1025))


def test_a_4096_bit_recipient(world: KmsWorld, emulator: Emulator) -> None:
    big = Recipient(booted(emulator), key_size=4096)
    assert len(call(world, big, lambda kms: kms.generate_random(32))) == 32
    with pytest.raises(RecipientError):
        Recipient(booted(emulator), key_size=1024)


def test_recipient_operations_need_a_recipient(world: KmsWorld) -> None:
    async def go() -> None:
        async with world.client() as kms:
            await kms.generate_random(8)

    with pytest.raises(RecipientError, match="needs a Recipient"):
        run(go())


def test_an_enclave_with_another_image_is_denied(world: KmsWorld) -> None:
    stranger = Recipient(booted(OTHER_IMAGE))
    blob = seal(world)
    with pytest.raises(AccessDeniedException, match="not authorized to perform: kms:Decrypt"):
        call(world, stranger, lambda kms: kms.decrypt(blob))
    # The same enclave is fine for a key whose policy has no attestation condition.
    assert call(world, stranger, lambda kms: kms.generate_data_key(OPEN_KEY_ID)).plaintext


def test_an_enclave_with_other_config_pcr16_is_denied(world: KmsWorld, emulator: Emulator) -> None:
    # Same image (PCR0), other config measured into PCR16: a fresh emulator state of the same
    # seed stands for the same enclave image booted with another config.
    same_image = Emulator(seed=70)
    assert same_image.pcr(0) == emulator.pcr(0)
    other_config = Recipient(booted(same_image, b"oracle config v2"))
    blob = seal(world)
    with pytest.raises(AccessDeniedException):
        call(world, other_config, lambda kms: kms.decrypt(blob))


def test_pcr16_unlocked_is_not_in_the_document_and_is_denied(world: KmsWorld) -> None:
    # Without the boot step, PCR16 is not locked, so the NSM leaves it out of the document and
    # the condition on it cannot hold.
    unbooted = Recipient(Nsm(EmulatorTransport(Emulator(seed=70))))
    blob = seal(world)
    with pytest.raises(AccessDeniedException):
        call(world, unbooted, lambda kms: kms.decrypt(blob))


def test_a_stale_document_is_refused(world: KmsWorld) -> None:
    # The double's max_attestation_age is 5 minutes; this NSM's clock runs 10 minutes behind.
    behind = Emulator(seed=70, clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    with pytest.raises(ValidationException, match=r"policy\.stale"):
        call(world, Recipient(booted(behind)), lambda kms: kms.generate_random(8))


def test_a_document_from_another_root_is_refused(world: KmsWorld) -> None:
    untrusted = Emulator(seed=72)  # its own PKI, which the double does not trust
    with pytest.raises(ValidationException, match="chain"):
        call(world, Recipient(booted(untrusted)), lambda kms: kms.generate_random(8))


class Thief(Recipient):
    """Sends a document captured from another enclave (whose key it does not have)."""

    def __init__(self, nsm: Nsm, stolen: bytes) -> None:
        super().__init__(nsm)
        self._stolen = stolen

    def attestation(self, *, nonce: bytes | None = None, user_data: bytes | None = None) -> bytes:
        return self._stolen


def test_a_replayed_document_gives_an_answer_only_its_key_can_open(
    world: KmsWorld, emulator: Emulator, recipient: Recipient
) -> None:
    thief = Thief(booted(Emulator(seed=70)), recipient.attestation())
    blob = seal(world)
    # KMS accepts the (authentic, allowed) document and encrypts to the victim's key...
    with pytest.raises(CmsError, match="not ours"):
        call(world, thief, lambda kms: kms.decrypt(blob))
    assert world.double.served[-1] == Served("Decrypt", None)


class Tamper:
    """An HTTP client that flips one byte of CiphertextForRecipient in KMS's answer."""

    def __init__(self, inner: EgressClient, position: int) -> None:
        self._inner = inner
        self._position = position

    async def request(self, method: str, url: str, **kw: Any) -> Response:
        response: Response = await self._inner.request(method, url, **kw)
        answer = json.loads(response.body)
        envelope = bytearray(base64.b64decode(answer["CiphertextForRecipient"]))
        envelope[self._position] ^= 0x40
        answer["CiphertextForRecipient"] = base64.b64encode(envelope).decode()
        body = json.dumps(answer).encode()
        return Response(response.status, response.headers, body, response.elapsed)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.mark.parametrize("position", [1, 30, 200])
def test_a_tampered_ciphertext_for_recipient_is_refused(
    world: KmsWorld, recipient: Recipient, position: int
) -> None:
    # 1: outer length octet; 30: inside the recipient structure; 200: inside the wrapped key.
    http = Tamper(EgressClient(world.egress()), position)
    with pytest.raises(CmsError):
        call(world, recipient, lambda kms: kms.generate_random(16), http=http)


def test_aws_error_names_become_typed_errors(world: KmsWorld, recipient: Recipient) -> None:
    blob = seal(world)
    with pytest.raises(NotFoundException):
        call(world, recipient, lambda kms: kms.generate_data_key("alias/none"))
    with pytest.raises(IncorrectKeyException):
        call(world, recipient, lambda kms: kms.decrypt(blob, key_id=OPEN_KEY_ID))
    with pytest.raises(InvalidCiphertextException):
        call(world, recipient, lambda kms: kms.decrypt(blob[:-1] + bytes([blob[-1] ^ 1])))
    with pytest.raises(InvalidCiphertextException):
        call(world, recipient, lambda kms: kms.decrypt(blob, encryption_context={"a": "b"}))


def test_sigv4_is_checked(world: KmsWorld, recipient: Recipient) -> None:
    wrong_secret = StaticCredentials(
        Credentials(CREDENTIALS.access_key_id, "not-the-secret", CREDENTIALS.session_token)
    )
    with pytest.raises(InvalidSignatureException):
        call(world, recipient, lambda kms: kms.generate_random(8), credentials=wrong_secret)
    unknown = StaticCredentials(Credentials("AKIAUNKNOWN", "x", None))
    with pytest.raises(UnrecognizedClientException):
        call(world, recipient, lambda kms: kms.generate_random(8), credentials=unknown)
    wrong_token = StaticCredentials(
        Credentials(CREDENTIALS.access_key_id, CREDENTIALS.secret_access_key, "stale-token")
    )
    with pytest.raises(UnrecognizedClientException):
        call(world, recipient, lambda kms: kms.generate_random(8), credentials=wrong_token)


def test_a_timeout_is_a_typed_error(world: KmsWorld, recipient: Recipient) -> None:
    class Silent:
        async def request(self, *args: Any, **kw: Any) -> Response:
            import asyncio

            await asyncio.sleep(60)
            raise AssertionError("unreachable")

    async def go() -> None:
        kms = KmsClient(
            Silent(),
            region=REGION,
            credentials=StaticCredentials(CREDENTIALS),
            recipient=recipient,
            timeouts=Timeouts(connect=0.1, read=0.1, write=0.1, pool=0.1),
            total_timeout=0.2,
        )
        await kms.generate_random(8)

    with pytest.raises(KmsTransportError, match="no answer within"):
        run(go())


def test_an_unrouted_kms_host_fails_before_leaving_the_enclave(
    world: KmsWorld, recipient: Recipient
) -> None:
    async def go() -> None:
        kms = KmsClient(
            EgressClient(world.egress()),
            region="eu-west-1",  # the egress only routes us-east-1
            credentials=StaticCredentials(CREDENTIALS),
            recipient=recipient,
        )
        await kms.generate_random(8)

    with pytest.raises(KmsTransportError, match="no egress route"):
        run(go())


def test_no_secret_reaches_the_logs_or_reprs(
    world: KmsWorld, recipient: Recipient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data_key = call(world, recipient, lambda kms: kms.generate_data_key(KEY_ID))
    blob = seal(world)
    assert call(world, recipient, lambda kms: kms.decrypt(blob)) == SECRET
    text = caplog.text + repr(data_key) + repr(recipient) + repr(CREDENTIALS)
    for secret in (
        CREDENTIALS.secret_access_key,
        str(CREDENTIALS.session_token),
        CREDENTIALS.access_key_id,
        base64.b64encode(data_key.plaintext).decode(),
        data_key.plaintext.hex(),
        SECRET.decode(),
    ):
        assert secret not in text
    # botocore did try to log its canonical request (which holds the token) at DEBUG.
    assert not any("CanonicalRequest" in r.getMessage() for r in caplog.records)


def test_every_error_is_a_kms_error() -> None:
    for error in (CmsError, AccessDeniedException, KmsTransportError, RecipientError):
        assert issubclass(error, KmsError)


def test_a_kms_call_makes_no_name_lookup(world: KmsWorld, recipient: Recipient) -> None:
    # The enclave has no resolver: kms.us-east-1.amazonaws.com is reached by route, and its name
    # is used only for SNI and the certificate check.
    with forbid_dns() as lookups:
        assert len(call(world, recipient, lambda kms: kms.generate_random(8))) == 8
    assert lookups == []
