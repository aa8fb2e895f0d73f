"""KMS from inside the enclave: Decrypt, GenerateDataKey, GenerateDataKeyPair and GenerateRandom
with a `Recipient` (the answer comes back encrypted to the enclave's attested key), and Encrypt.

Each call is one HTTPS POST to `kms.REGION.amazonaws.com:443` through the enclave egress (TLS in
the enclave, no DNS), in the KMS JSON protocol (`X-Amz-Target: TrentService.<Operation>`,
`Content-Type: application/x-amz-json-1.1`), signed with SigV4 by botocore with credentials from
the parent. Every call has per-phase timeouts and a total deadline; AWS error names become the
typed exceptions of `enclave_net.kms.errors`. Results that hold secrets hide them from `repr`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from enclave_net.egress import EgressClient, EgressConfig, Timeouts
from enclave_net.errors import EgressError
from enclave_net.kms.credentials import CredentialSource
from enclave_net.kms.errors import KmsTransportError, RecipientError, service_error
from enclave_net.kms.recipient import Recipient
from enclave_net.kms.sigv4 import TARGET_PREFIX, signed_headers

__all__ = [
    "DEFAULT_TIMEOUTS",
    "DataKey",
    "DataKeyPair",
    "EncryptResult",
    "HttpClient",
    "KmsClient",
    "kms_host",
]

DEFAULT_TIMEOUTS = Timeouts(connect=5.0, read=10.0, write=10.0, pool=5.0)
#: Whole-call deadline, credentials fetch and attestation included.
DEFAULT_TOTAL_TIMEOUT = 30.0
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# KMS answers are small JSON objects; a 4096-bit key pair answer is under 16 KiB.
_MAX_ANSWER = 1024 * 1024


def kms_host(region: str) -> str:
    """`kms.REGION.amazonaws.com`, the host the egress must route (and TLS must verify)."""
    if not _REGION.match(region):
        raise ValueError(f"{region!r} is not an AWS region name")
    return f"kms.{region}.amazonaws.com"


class HttpClient(Protocol):
    """What `EgressClient` offers; the KMS client needs nothing more."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeouts: Timeouts | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class EncryptResult:
    ciphertext_blob: bytes
    key_id: str
    encryption_algorithm: str


@dataclass(frozen=True, slots=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    ciphertext_blob: bytes
    key_id: str


@dataclass(frozen=True, slots=True)
class DataKeyPair:
    private_key_der: bytes = field(repr=False)
    """PKCS#8 DER, opened from CiphertextForRecipient."""
    public_key_der: bytes
    private_key_ciphertext_blob: bytes
    key_id: str
    key_pair_spec: str


def _b64(answer: Mapping[str, Any], name: str, operation: str) -> bytes:
    value = answer.get(name)
    if not isinstance(value, str):
        raise KmsTransportError(f"{operation} answer has no {name}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise KmsTransportError(f"{operation} answer: {name} is not base64") from None


def _text(answer: Mapping[str, Any], name: str, operation: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str):
        raise KmsTransportError(f"{operation} answer has no {name}")
    return value


class KmsClient:
    """`async with KmsClient.through_egress(config, region=..., credentials=..., recipient=...)`."""

    def __init__(
        self,
        http: HttpClient,
        *,
        region: str,
        credentials: CredentialSource,
        recipient: Recipient | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    ) -> None:
        self.region = region
        self.host = kms_host(region)
        self._http = http
        self._credentials = credentials
        self._recipient = recipient
        self._timeouts = timeouts
        self._total = total_timeout
        self._owned: EgressClient | None = None

    @classmethod
    def through_egress(
        cls, config: EgressConfig, *, region: str, credentials: CredentialSource, **options: Any
    ) -> KmsClient:
        """A client with its own egress pool; `config` must route `kms.REGION.amazonaws.com:443`."""
        http = EgressClient(config)
        client = cls(http, region=region, credentials=credentials, **options)
        client._owned = http
        return client

    async def __aenter__(self) -> KmsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()

    def __repr__(self) -> str:
        return f"KmsClient({self.host}, recipient={self._recipient!r})"

    # --- operations -----------------------------------------------------------------------

    async def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        *,
        encryption_context: Mapping[str, str] | None = None,
    ) -> EncryptResult:
        request: dict[str, Any] = {
            "KeyId": key_id,
            "Plaintext": base64.b64encode(plaintext).decode("ascii"),
        }
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        answer = await self._call("Encrypt", request)
        return EncryptResult(
            _b64(answer, "CiphertextBlob", "Encrypt"),
            _text(answer, "KeyId", "Encrypt"),
            str(answer.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")),
        )

    async def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> bytes:
        """The plaintext, opened from CiphertextForRecipient with the recipient's key."""
        request: dict[str, Any] = {
            "CiphertextBlob": base64.b64encode(ciphertext_blob).decode("ascii")
        }
        if key_id is not None:
            request["KeyId"] = key_id
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        answer = await self._call("Decrypt", request, recipient=True)
        return self._open(answer, "Decrypt")

    async def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = "AES_256",
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey:
        request: dict[str, Any] = {"KeyId": key_id}
        if number_of_bytes is not None:
            request["NumberOfBytes"] = number_of_bytes
        elif key_spec is not None:
            request["KeySpec"] = key_spec
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        answer = await self._call("GenerateDataKey", request, recipient=True)
        return DataKey(
            self._open(answer, "GenerateDataKey"),
            _b64(answer, "CiphertextBlob", "GenerateDataKey"),
            _text(answer, "KeyId", "GenerateDataKey"),
        )

    async def generate_data_key_pair(
        self,
        key_id: str,
        key_pair_spec: str,
        *,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKeyPair:
        request: dict[str, Any] = {"KeyId": key_id, "KeyPairSpec": key_pair_spec}
        if encryption_context:
            request["EncryptionContext"] = dict(encryption_context)
        answer = await self._call("GenerateDataKeyPair", request, recipient=True)
        op = "GenerateDataKeyPair"
        return DataKeyPair(
            self._open(answer, op),
            _b64(answer, "PublicKey", op),
            _b64(answer, "PrivateKeyCiphertextBlob", op),
            _text(answer, "KeyId", op),
            _text(answer, "KeyPairSpec", op),
        )

    async def generate_random(self, number_of_bytes: int) -> bytes:
        answer = await self._call(
            "GenerateRandom", {"NumberOfBytes": number_of_bytes}, recipient=True
        )
        return self._open(answer, "GenerateRandom")

    # --- plumbing -------------------------------------------------------------------------

    def _open(self, answer: Mapping[str, Any], operation: str) -> bytes:
        assert self._recipient is not None  # _call(recipient=True) checked it
        if answer.get("Plaintext") or answer.get("PrivateKeyPlaintext"):
            # With a Recipient, KMS must not send plaintext: something between us and KMS
            # dropped the Recipient, or this is not KMS.
            raise KmsTransportError(f"{operation} answered in plaintext despite the Recipient")
        return self._recipient.open(_b64(answer, "CiphertextForRecipient", operation))

    async def _call(
        self, operation: str, request: dict[str, Any], *, recipient: bool = False
    ) -> Mapping[str, Any]:
        if recipient and self._recipient is None:
            raise RecipientError(f"{operation} needs a Recipient (the enclave's attested key)")
        try:
            async with asyncio.timeout(self._total):
                if recipient:
                    assert self._recipient is not None
                    request = {**request, "Recipient": await self._recipient.field()}
                return await self._post(operation, request)
        except TimeoutError:
            raise KmsTransportError(
                f"{operation}: no answer within {self._total:g} s (credentials, attestation and "
                "request included)"
            ) from None

    async def _post(self, operation: str, request: dict[str, Any]) -> Mapping[str, Any]:
        url = f"https://{self.host}/"
        body = json.dumps(request).encode()
        credentials = await self._credentials.get()
        headers = signed_headers(
            url=url,
            target=TARGET_PREFIX + operation,
            body=body,
            credentials=credentials,
            region=self.region,
        )
        try:
            response = await self._http.request(
                "POST", url, headers=headers, body=body, timeouts=self._timeouts
            )
        except EgressError as exc:
            raise KmsTransportError(f"{operation}: {exc}") from exc
        status: int = response.status
        raw: bytes = response.body
        if len(raw) > _MAX_ANSWER:
            raise KmsTransportError(f"{operation}: answer larger than {_MAX_ANSWER} bytes")
        try:
            answer = json.loads(raw) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KmsTransportError(
                f"{operation}: HTTP {status} with a body that is not JSON; is this KMS?"
            ) from None
        if not isinstance(answer, dict):
            raise KmsTransportError(f"{operation}: HTTP {status} with a non-object JSON body")
        if status == 200:
            return answer
        name = answer.get("__type")
        message = answer.get("message", answer.get("Message", ""))
        if not isinstance(name, str):
            raise KmsTransportError(f"{operation}: HTTP {status} without an AWS error name")
        raise service_error(name, f"{operation}: {message}", status=status)
