"""`nitro-oracle get`: fetch a nonce-bound attestation and a report through the gateway, and
verify the whole chain (binding.verify_report): AWS root (or a pinned test root) -> document ->
policy (PCRs, the nonce we just sent, document age, debug refusal) -> public_key -> address ->
user_data layout -> EIP-712 signature -> freshness and source count.

The gateway is untrusted: everything it returns is checked here, and a fresh random nonce per
call means it cannot replay an old document for a key that is no longer alive.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import http.client
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

from attestation import Policy
from nsm_attestation_cli import error_json
from oracle_example.binding import (
    DEFAULT_MAX_REPORT_AGE,
    DocumentVerifier,
    VerifiedReport,
    verify_report,
)
from oracle_example.errors import ClientError, OracleReported, ReportVerificationError
from oracle_example.eth import to_checksum_address
from oracle_example.report import OracleError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "NONCE_BYTES",
    "GetResult",
    "get_report",
    "http_get",
    "result_json",
    "summary",
]

#: A report with four sources and one domain is ~3 KiB, a document ~5 KiB (base64 ~7 KiB).
MAX_RESPONSE_BYTES = 1024 * 1024
#: AWS: one-time, short-lived challenge nonces (attestation_process.md); 32 random bytes.
NONCE_BYTES = 32
#: A nonce-bound document is made on request, so it is seconds old; a minute is generous.
DEFAULT_MAX_DOCUMENT_AGE = _dt.timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True)
class GetResult:
    """A verified price (`verified`), or a verified signed refusal (`refusal`)."""

    feed: str
    nonce: bytes
    document: bytes
    report_json: Mapping[str, Any]
    pinned: tuple[int, ...] = ()
    """The PCR indices the policy pinned."""
    verified: VerifiedReport | None = None
    refusal: OracleReported | None = None


def http_get(base_url: str, path: str, *, timeout: float) -> Any:
    """GET `base_url + path`, JSON back; API errors and transport failures as `ClientError`."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ClientError(f"gateway URL must be http://HOST:PORT, got {base_url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"{base_url}{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    if len(data) > MAX_RESPONSE_BYTES:
        raise ClientError(f"{path}: response larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        body = json.loads(data, parse_float=Decimal)
    except ValueError as exc:
        raise ClientError(f"{path}: HTTP {response.status}, not JSON: {data[:120]!r}") from exc
    if response.status != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ClientError(
            f"{path}: HTTP {response.status} {error.get('code', '')}: {error.get('message', '')}",
            code="client.http",
        )
    return body


def get_report(
    gateway: str,
    feed: str,
    *,
    verifier: DocumentVerifier,
    pcrs: Mapping[int, bytes],
    at: _dt.datetime | None = None,
    allow_debug: bool = False,
    max_document_age: _dt.timedelta = DEFAULT_MAX_DOCUMENT_AGE,
    max_report_age: _dt.timedelta = DEFAULT_MAX_REPORT_AGE,
    min_sources: int = 1,
    config_hash: bytes | None = None,
    timeout: float = 5.0,
    nonce: bytes | None = None,
) -> GetResult:
    """Fetch and verify. `ReportVerificationError` (with `step`/`code`) when a link breaks.

    A verified `OracleError` is not an exception here: it comes back as `refusal`.
    """
    if not pcrs:
        raise ClientError("pin at least PCR0 (--pcr 0=HEX): without it any enclave passes")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    report_json = http_get(gateway, "/v1/price/" + quote(feed.replace("/", "-")), timeout=timeout)
    answer = http_get(gateway, f"/v1/attestation?nonce={nonce.hex()}", timeout=timeout)
    try:
        document = base64.b64decode(answer["document"], validate=True)
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ClientError("/v1/attestation: no base64 document in the answer") from exc
    policy = Policy(pcrs=pcrs, nonce=nonce, max_age=max_document_age, allow_debug=allow_debug)
    when = _dt.datetime.now(_dt.UTC) if at is None else at
    try:
        verified = verify_report(
            report_json,
            document,
            verifier=verifier,
            policy=policy,
            at=when,
            feed=feed,
            config_hash=config_hash,
            min_sources=min_sources,
            max_age=max_report_age,
        )
    except OracleReported as refusal:
        return GetResult(
            feed=feed,
            nonce=nonce,
            document=document,
            report_json=report_json,
            pinned=tuple(sorted(pcrs)),
            refusal=refusal,
        )
    return GetResult(
        feed=feed,
        nonce=nonce,
        document=document,
        report_json=report_json,
        pinned=tuple(sorted(pcrs)),
        verified=verified,
    )


def _sources(report_json: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    sources = report_json.get("sources", [])
    return [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []


def summary(result: GetResult) -> list[str]:
    """Human lines: the verdict, the signer, each source, the median, the signature check."""
    lines: list[str] = []
    if result.verified is not None:
        v = result.verified
        m = v.message
        when = _dt.datetime.fromtimestamp(m.timestamp, _dt.UTC).isoformat()
        lines.append(f"{result.feed}  VERIFIED  {v.price:,f}")
        for s in _sources(result.report_json):
            price = s.get("price") or "-"
            lines.append(f"  {s.get('source', '?'):<9} {price:>18}  {s.get('outcome')}")
        lines.append(
            f"  median    {v.price:>18f}  ({m.decimals} decimals, {m.num_sources} sources, "
            f"dispersion {m.dispersion_bps} bps)"
        )
        lines.append(f"  round {m.round_id} at {when}")
        lines.append(
            f"  signature EIP-712 PriceReport recovers {to_checksum_address(v.address)} = the "
            f"key attested with PCR {','.join(map(str, result.pinned))} pinned, nonce bound"
        )
    elif result.refusal is not None:
        error = result.refusal.error
        code = error.code if isinstance(error, OracleError) else "?"
        detail = result.report_json.get("detail")
        lines.append(f"{result.feed}  SIGNED ORACLE ERROR code {code} (verified, not a price)")
        lines.append(f"  {detail}")
        for s in _sources(result.report_json):
            lines.append(f"  {s.get('source', '?'):<9} {s.get('outcome')}: {s.get('detail')}")
    return lines


def result_json(result: GetResult) -> dict[str, object]:
    out: dict[str, object] = {"feed": result.feed, "nonce": result.nonce.hex()}
    if result.verified is not None:
        v = result.verified
        out.update(
            verified=True,
            price=str(v.price),
            address=to_checksum_address(v.address),
            roundId=v.message.round_id,
            timestamp=v.message.timestamp,
            numSources=v.message.num_sources,
            dispersionBps=v.message.dispersion_bps,
            moduleId=v.document.module_id,
            pcrs={str(i): p.hex() for i, p in sorted(v.document.pcrs.items())},
        )
    elif result.refusal is not None:
        error = result.refusal.error
        out.update(
            verified=True,
            oracleError=error.code if isinstance(error, OracleError) else None,
            detail=result.report_json.get("detail"),
        )
    out["report"] = result.report_json
    return out


def failure_json(
    feed: str, exc: ReportVerificationError | ClientError, *, hint: str | None = None
) -> dict[str, object]:
    """A failed `get_report` in the one error shape (docs/schemas/error.schema.json), with the
    feed, `verified: false` and the broken link (`step`) beside it."""
    step = exc.step if isinstance(exc, ReportVerificationError) else "transport"
    return error_json(exc.code, str(exc), hint, feed=feed, verified=False, step=step)
