"""SigV4 for the KMS JSON protocol, computed by botocore (the reference signer), both ways.

`signed_headers` signs a request for the client; `signature_for` recomputes the signature of a
received request for the KMS double. Neither writes any part of the algorithm by hand: the
canonical request, string to sign and HMAC chain are botocore's `SigV4Auth`.

botocore logs the canonical request at DEBUG, and that contains the session token; a filter on
its logger drops those records, so turning on DEBUG logging cannot leak credentials.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from enclave_net.kms.credentials import Credentials

__all__ = [
    "CONTENT_TYPE",
    "SERVICE",
    "TARGET_PREFIX",
    "Authorization",
    "parse_authorization",
    "signature_for",
    "signed_headers",
]

SERVICE = "kms"
CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "TrentService."
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"(?P<service>[a-z0-9-]+)/aws4_request, ?SignedHeaders=(?P<headers>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class _NoSigningDetails(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("botocore.auth").addFilter(_NoSigningDetails())


def _boto(credentials: Credentials) -> BotoCredentials:
    return BotoCredentials(
        credentials.access_key_id, credentials.secret_access_key, credentials.session_token
    )


def signed_headers(
    *, url: str, target: str, body: bytes, credentials: Credentials, region: str
) -> dict[str, str]:
    """The headers of a signed KMS JSON request (`target` is e.g. `TrentService.Decrypt`)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": target},
    )
    SigV4Auth(_boto(credentials), SERVICE, region).add_auth(request)
    return dict(request.headers.items())


class Authorization:
    """The parts of a received `Authorization` header."""

    def __init__(self, match: re.Match[str]) -> None:
        self.access_key_id = match["key"]
        self.date = match["date"]
        self.region = match["region"]
        self.service = match["service"]
        self.signed_headers = match["headers"].split(";")
        self.signature = match["signature"]


def parse_authorization(value: str) -> Authorization | None:
    match = _AUTHORIZATION.match(value)
    return None if match is None else Authorization(match)


def signature_for(
    *,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    amz_date: str,
) -> tuple[str, str]:
    """(signature, signed header list) botocore computes for a request with exactly `headers`.

    `headers` are the ones the client said it signed, with the values received; the caller
    compares both results with what the client sent.
    """
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(_boto(credentials), SERVICE, region)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return signature, auth.signed_headers(auth.headers_to_sign(request))
