"""A KMS double: real HTTPS on loopback, the KMS JSON protocol, SigV4 checked, attestation
conditions evaluated on documents verified with this project's verifier.

It ships with the package (not only in the tests) so that app authors can test their own
enclave code against it, and so the demo can run an oracle whose key survives a restart
without an AWS account. It is a double, not a KMS:

- Operations: Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyPair, GenerateRandom, each with
  `Recipient` where KMS has it. `CiphertextForRecipient` is built as KMS builds it (CMS
  EnvelopedData, RSAES-OAEP-SHA-256, AES-256-CBC, BER with indefinite lengths).
- Authentication: SigV4 recomputed with botocore and compared in constant time; the access key
  must be one of the configured principals; the clock skew allowed is 5 minutes.
- Authorization: each key's policy (JSON, IAM grammar subset: Effect, Principal, Action,
  Resource `*`, Condition with StringEquals / StringEqualsIgnoreCase on
  `kms:RecipientAttestation:ImageSha384` and `kms:RecipientAttestation:PCR0`..`PCR31`). An
  explicit Deny wins; otherwise some Allow must match. A condition on an attestation key is
  false when the request has no Recipient, as in KMS. Anything else in a policy is refused when
  the config loads, so a policy never silently means less than it says.
- The attestation document is verified (chain to the configured roots, signature, at most
  `max_attestation_age` old); a document that fails is a `ValidationException`, a policy that
  does not allow it an `AccessDeniedException`. These two choices are the double's: AWS does
  not document which error each case gets.
- Ciphertext blobs are the double's own format (AES-256-GCM under the key's material, bound to
  the key id and the encryption context); only the double can read them.

Config (JSON):

    {"region": "us-east-1", "account": "111122223333", "max_attestation_age_seconds": 300,
     "principals": [{"arn": "arn:aws:iam::111122223333:role/parent", "access_key_id": "...",
                     "secret_access_key": "...", "session_token": null}],
     "keys": [{"key_id": "<uuid>", "aliases": ["alias/oracle"], "material": "<64 hex digits>",
               "enabled": true, "policy": {"Version": "2012-10-17", "Statement": [...]}}],
     "generate_random_policy": [...statements, optional: default allows every principal...]}
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hmac
import json
import logging
import os
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation import AllOf, AttestationError, MaxAge, VerifiedDocument, Verifier
from enclave_net.kms._double_config import (
    ACTIONS,
    DoubleConfig,
    DoubleConfigError,
    DoubleKey,
    KeyPolicyGate,
    PolicyDenied,
    Principal,
    Statement,
    allowed,
)
from enclave_net.kms.cms import build_enveloped
from enclave_net.kms.errors import (
    AccessDeniedException,
    DisabledException,
    IncompleteSignatureException,
    IncorrectKeyException,
    InvalidCiphertextException,
    InvalidSignatureException,
    KMSInternalException,
    KmsServiceError,
    NotFoundException,
    UnrecognizedClientException,
    UnsupportedOperationException,
    ValidationException,
)
from enclave_net.kms.recipient import KEY_ENCRYPTION_ALGORITHM
from enclave_net.kms.sigv4 import (
    CONTENT_TYPE,
    SERVICE,
    TARGET_PREFIX,
    parse_authorization,
    signature_for,
)
from enclave_net.tls_server import QuietHandler, ThreadingTLSServer

__all__ = ["DoubleConfig", "DoubleConfigError", "DoubleKey", "KmsDouble", "Principal"]

_log = logging.getLogger("enclave_net.kms.double")

_MAX_SKEW = _dt.timedelta(minutes=5)
_MAX_BODY = 512 * 1024
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_BLOB_MAGIC = b"KDB1"
_NONCE = 12
_UUID_LEN = 36
# KMS limits (API reference): Encrypt plaintext 1..4096 bytes, NumberOfBytes 1..1024.
_MAX_PLAINTEXT = 4096
_MAX_RANDOM = 1024
_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
# AWS's message for an unknown access key or a wrong session token (not a secret).
_INVALID_TOKEN = "The security token included in the request is invalid."  # noqa: S105
_RECIPIENT_ACTIONS = ACTIONS - {"Encrypt"}
_RSA_RECIPIENT_BITS = range(2048, 4097)

Clock = Callable[[], _dt.datetime]


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


# --- the service ----------------------------------------------------------------------------


def _b64_field(request: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = request.get(name)
    if value is None:
        if required:
            raise ValidationException(f"1 validation error detected: {name} must not be null")
        return None
    if not isinstance(value, str):
        raise ValidationException(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValidationException(f"{name} is not valid base64") from None


def _context(request: Mapping[str, Any]) -> bytes:
    context = request.get("EncryptionContext") or {}
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise ValidationException("EncryptionContext must map strings to strings")
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


def _count(request: Mapping[str, Any], name: str, high: int) -> int:
    value = request.get(name)
    if type(value) is not int or not 1 <= value <= high:
        raise ValidationException(f"{name} must be an integer in 1..{high}")
    return value


class _Service:
    """The operations, without HTTP: request dict in, answer dict out, typed errors raised."""

    def __init__(self, config: DoubleConfig, verifier: Verifier, clock: Clock) -> None:
        self.config = config
        self._verifier = verifier
        self._clock = clock

    def handle(
        self, principal: Principal, action: str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        if action not in ACTIONS:
            raise UnsupportedOperationException(f"the double has no {action}")
        recipient_key = self._recipient_key(action, request)
        method: Callable[..., dict[str, Any]] = getattr(self, f"_op_{action}")
        return method(principal, request, recipient_key)

    # A Recipient's document, verified and authorized, comes back as the RSA key to encrypt to.
    def _recipient_key(self, action: str, request: Mapping[str, Any]) -> bytes | None:
        recipient = request.get("Recipient")
        if recipient is None:
            return None
        if action not in _RECIPIENT_ACTIONS or not isinstance(recipient, dict):
            raise ValidationException(f"{action} takes no Recipient")
        if recipient.get("KeyEncryptionAlgorithm") != KEY_ENCRYPTION_ALGORITHM:
            raise ValidationException(
                f"Recipient.KeyEncryptionAlgorithm must be {KEY_ENCRYPTION_ALGORITHM}"
            )
        document = _b64_field(recipient, "AttestationDocument")
        assert document is not None
        return document

    def _authorize(
        self,
        principal: Principal,
        action: str,
        statements: Sequence[Statement] | None,
        document: bytes | None,
    ) -> rsa.RSAPublicKey | None:
        def decide(pcrs: Mapping[int, bytes] | None) -> bool:
            if statements is None:  # GenerateRandom without an account policy
                return True
            return allowed(
                statements,
                principal=principal.arn,
                account=self.config.account,
                action=action,
                pcrs=pcrs,
            )

        denied = AccessDeniedException(
            f"User: {principal.arn} is not authorized to perform: kms:{action} because no "
            "key policy statement allows it (or one denies it)"
        )
        if document is None:
            if not decide(None):
                raise denied
            return None
        gate = KeyPolicyGate(decide)
        try:
            verified = self._verifier.verify(
                document,
                policy=AllOf(MaxAge(self.config.max_attestation_age), gate),
                at=self._clock(),
            )
        except PolicyDenied:
            raise denied from None
        except AttestationError as exc:
            raise ValidationException(
                f"the attestation document in Recipient is not valid ({exc.code}): {exc.reason}"
            ) from None
        return _recipient_public_key(verified)

    def _key_for(self, request: Mapping[str, Any]) -> DoubleKey:
        key_id = request.get("KeyId")
        if not isinstance(key_id, str) or not key_id:
            raise ValidationException("1 validation error detected: KeyId must not be null")
        key = self.config.find_key(key_id)
        if not key.enabled:
            raise DisabledException(f"{key.arn} is disabled.")
        return key

    def _seal(self, key: DoubleKey, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        header = _BLOB_MAGIC + key.key_id.encode()
        return header + nonce + AESGCM(key.material).encrypt(nonce, plaintext, header + context)

    def _answer(
        self, plaintext: bytes, to: rsa.RSAPublicKey | None, *, name: str = "Plaintext"
    ) -> dict[str, str]:
        if to is None:
            return {name: base64.b64encode(plaintext).decode()}
        return {"CiphertextForRecipient": base64.b64encode(build_enveloped(plaintext, to)).decode()}

    # --- operations -------------------------------------------------------------------------

    def _op_Encrypt(
        self, principal: Principal, request: Mapping[str, Any], document: bytes | None
    ) -> dict[str, Any]:
        key = self._key_for(request)
        plaintext = _b64_field(request, "Plaintext")
        assert plaintext is not None
        if not 1 <= len(plaintext) <= _MAX_PLAINTEXT:
            raise ValidationException(f"Plaintext must be 1..{_MAX_PLAINTEXT} bytes")
        self._authorize(principal, "Encrypt", key.policy, None)
        blob = self._seal(key, plaintext, _context(request))
        return {
            "CiphertextBlob": base64.b64encode(blob).decode(),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    def _op_Decrypt(
        self, principal: Principal, request: Mapping[str, Any], document: bytes | None
    ) -> dict[str, Any]:
        blob = _b64_field(request, "CiphertextBlob")
        assert blob is not None
        head = len(_BLOB_MAGIC) + _UUID_LEN
        if len(blob) < head + _NONCE + 16 or not blob.startswith(_BLOB_MAGIC):
            raise InvalidCiphertextException("")
        try:
            key = self.config.find_key(blob[len(_BLOB_MAGIC) : head].decode("ascii"))
        except (UnicodeDecodeError, NotFoundException):
            raise InvalidCiphertextException("") from None
        wanted = request.get("KeyId")
        if wanted is not None and self.config.find_key(str(wanted)).key_id != key.key_id:
            raise IncorrectKeyException(
                "The key ID in the request does not identify a CMK that can perform this operation."
            )
        if not key.enabled:
            raise DisabledException(f"{key.arn} is disabled.")
        to = self._authorize(principal, "Decrypt", key.policy, document)
        try:
            plaintext = AESGCM(key.material).decrypt(
                blob[head : head + _NONCE], blob[head + _NONCE :], blob[:head] + _context(request)
            )
        except Exception:
            raise InvalidCiphertextException("") from None
        return {
            **self._answer(plaintext, to),
            "KeyId": key.arn,
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        }

    def _op_GenerateDataKey(
        self, principal: Principal, request: Mapping[str, Any], document: bytes | None
    ) -> dict[str, Any]:
        key = self._key_for(request)
        spec, count = request.get("KeySpec"), request.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise ValidationException("give exactly one of KeySpec and NumberOfBytes")
        if spec is not None:
            if spec not in _KEY_SPECS:
                raise ValidationException(f"KeySpec must be one of {sorted(_KEY_SPECS)}")
            size = _KEY_SPECS[spec]
        else:
            size = _count(request, "NumberOfBytes", _MAX_RANDOM)
        to = self._authorize(principal, "GenerateDataKey", key.policy, document)
        data_key = os.urandom(size)
        blob = self._seal(key, data_key, _context(request))
        return {
            **self._answer(data_key, to),
            "CiphertextBlob": base64.b64encode(blob).decode(),
            "KeyId": key.arn,
        }

    def _op_GenerateDataKeyPair(
        self, principal: Principal, request: Mapping[str, Any], document: bytes | None
    ) -> dict[str, Any]:
        key = self._key_for(request)
        spec = request.get("KeyPairSpec")
        make = _KEY_PAIR_SPECS.get(spec) if isinstance(spec, str) else None
        if make is None:
            raise ValidationException(f"KeyPairSpec must be one of {sorted(_KEY_PAIR_SPECS)}")
        to = self._authorize(principal, "GenerateDataKeyPair", key.policy, document)
        private = make()
        private_der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        blob = self._seal(key, private_der, _context(request))
        return {
            **self._answer(private_der, to, name="PrivateKeyPlaintext"),
            "PrivateKeyCiphertextBlob": base64.b64encode(blob).decode(),
            "PublicKey": base64.b64encode(public_der).decode(),
            "KeyId": key.arn,
            "KeyPairSpec": spec,
        }

    def _op_GenerateRandom(
        self, principal: Principal, request: Mapping[str, Any], document: bytes | None
    ) -> dict[str, Any]:
        size = _count(request, "NumberOfBytes", _MAX_RANDOM)
        to = self._authorize(
            principal, "GenerateRandom", self.config.generate_random_policy, document
        )
        return self._answer(os.urandom(size), to)


_KEY_PAIR_SPECS: dict[str, Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]] = {
    "RSA_2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ECC_NIST_P256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ECC_NIST_P384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ECC_SECG_P256K1": lambda: ec.generate_private_key(ec.SECP256K1()),
}


def _recipient_public_key(verified: VerifiedDocument) -> rsa.RSAPublicKey:
    if verified.public_key is None:
        raise ValidationException("the attestation document in Recipient has no public_key")
    try:
        key = serialization.load_der_public_key(verified.public_key)
    except ValueError:
        raise ValidationException("the attestation document's public_key is not SPKI DER") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size not in _RSA_RECIPIENT_BITS:
        raise ValidationException("the attestation document's public_key is not RSA 2048..4096")
    return key


# --- HTTP -----------------------------------------------------------------------------------


class _Handler(QuietHandler):
    server: _Server

    def do_POST(self) -> None:
        double = self.server.owner
        action = "?"
        try:
            body = self._body()
            principal, action = double._authenticate(self, body)
            try:
                request = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValidationException("the request body is not JSON") from None
            if not isinstance(request, dict):
                raise ValidationException("the request body must be a JSON object")
            answer = double.service.handle(principal, action, request)
            double._record(action, None)
            self._send(200, answer)
        except KmsServiceError as exc:
            double._record(action, exc.code)
            self._send(exc.status, {"__type": exc.code, "message": exc.args[0]})
        except Exception as exc:
            # A bug in the double: answer like KMS does for its own faults, log only the type.
            _log.error("KMS double failed on %s: %s", action, type(exc).__name__)
            double._record(action, KMSInternalException.code)
            self._send(500, {"__type": KMSInternalException.code, "message": "internal error"})

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ValidationException("Content-Length is required") from None
        if not 0 <= length <= _MAX_BODY:
            raise ValidationException(f"request body over {_MAX_BODY} bytes")
        return self.rfile.read(length)

    def _send(self, status: int, answer: Mapping[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingTLSServer):
    owner: KmsDouble


def _connection_failed() -> None:
    _log.warning("KMS double: a connection failed")


@dataclass(frozen=True)
class Served:
    """One request the double answered: the operation and the error name (None for success)."""

    action: str
    error: str | None


class KmsDouble:
    """`with KmsDouble(config, cert=..., key=..., roots=[...]) as kms:` then route
    `kms.REGION.amazonaws.com:443` to `tcp:127.0.0.1:{kms.port}`."""

    def __init__(
        self,
        config: DoubleConfig,
        *,
        cert_file: Path,
        key_file: Path,
        roots: Iterable[x509.Certificate],
        bind: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = _utcnow,
    ) -> None:
        self.config = config
        self._clock = clock
        self.service = _Service(config, Verifier(roots=list(roots), clock=clock), clock)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert_file, key_file)
        self._server = _Server((bind, port), _Handler, self.context, on_error=_connection_failed)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._lock = threading.Lock()
        self.served: list[Served] = []
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"kms.{self.config.region}.amazonaws.com"

    def start(self) -> KmsDouble:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kms-double", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> KmsDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _record(self, action: str, error: str | None) -> None:
        with self._lock:
            self.served.append(Served(action, error))

    def _authenticate(self, handler: _Handler, body: bytes) -> tuple[Principal, str]:
        headers = handler.headers
        target = headers.get("X-Amz-Target", "")
        if not target.startswith(TARGET_PREFIX) or handler.path != "/":
            raise UnsupportedOperationException(f"unknown target {target!r}")
        action = target.removeprefix(TARGET_PREFIX)
        if headers.get("Content-Type") != CONTENT_TYPE:
            raise ValidationException(f"Content-Type must be {CONTENT_TYPE}")
        auth = parse_authorization(headers.get("Authorization", ""))
        if auth is None:
            raise IncompleteSignatureException("Authorization header missing or malformed")
        principal = self.config.principals.get(auth.access_key_id)
        if principal is None:
            raise UnrecognizedClientException(_INVALID_TOKEN)
        token = headers.get("X-Amz-Security-Token")
        expected_token = principal.credentials.session_token
        if (token or expected_token) and not hmac.compare_digest(
            (token or "").encode(), (expected_token or "").encode()
        ):
            raise UnrecognizedClientException(_INVALID_TOKEN)
        if auth.region != self.config.region or auth.service != SERVICE:
            raise InvalidSignatureException(
                f"Credential should be scoped to {self.config.region}/{SERVICE}"
            )
        signed = set(auth.signed_headers)
        if not {"host", "x-amz-date"} <= signed or (token and "x-amz-security-token" not in signed):
            raise IncompleteSignatureException("host, x-amz-date (and the token) must be signed")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            when = _dt.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=_dt.UTC)
        except ValueError:
            raise IncompleteSignatureException("X-Amz-Date is missing or malformed") from None
        if abs(self._clock() - when) > _MAX_SKEW or auth.date != amz_date[:8]:
            raise InvalidSignatureException("Signature expired or not yet valid (clock skew)")
        received = {}
        for name in auth.signed_headers:
            value = headers.get(name)
            if value is None:
                raise IncompleteSignatureException(f"signed header {name} is absent")
            received[name] = value
        signature, signed_list = signature_for(
            url=f"https://{headers.get('Host', '')}/",
            body=body,
            headers=received,
            credentials=principal.credentials,
            region=self.config.region,
            amz_date=amz_date,
        )
        if signed_list != ";".join(auth.signed_headers) or not hmac.compare_digest(
            signature, auth.signature
        ):
            raise InvalidSignatureException(
                "The request signature we calculated does not match the signature you provided."
            )
        return principal, action
