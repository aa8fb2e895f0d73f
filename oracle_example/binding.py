"""Bind the enclave's signing key to an attestation, and verify a report from root to price.

The attestation carries (docs/oracle-trust.md):

- `public_key`: the raw 65-byte uncompressed secp256k1 key, `0x04 || X || Y`. A shorter or
  malformed key would hash to a predictable address, so length and prefix are checked first
  (Espresso's reasoning, espresso-tee-contracts JournalValidation.sol), then that the point is
  on the curve.
- `user_data`: a fixed 88-byte layout, sliceable on-chain without a parser:

  | offset | size | field                                            |
  |-------:|-----:|--------------------------------------------------|
  |      0 |    4 | magic `"TPO1"` (TEE Price Oracle, layout v1)     |
  |      4 |   20 | address = keccak256(X || Y)[12:]                 |
  |     24 |   32 | configHash (`OracleConfig.config_hash`)          |
  |     56 |   32 | domainsHash (`config.domains_hash`)              |

`verify_report` walks the whole chain: root -> document -> policy (by the attestation verifier),
then public_key -> address -> user_data layout -> EIP-712 signature -> freshness and source
count. Each failure is a `ReportVerificationError` whose `step` and `code` say which link broke;
a verified `OracleError` raises `OracleReported` (the enclave refused to price, in writing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, Protocol

import coincurve

from attestation.errors import AttestationError
from oracle_example.aggregate import dispersion_bps, median, scale_price
from oracle_example.config import OracleConfig
from oracle_example.errors import (
    BindingError,
    OracleReported,
    ReportFormatError,
    ReportVerificationError,
)
from oracle_example.eth import Eip712Domain, keccak256, parse_address
from oracle_example.report import (
    OracleError,
    Outcome,
    PriceReport,
    SignedReport,
    domains_hash,
    sources_hash,
)

__all__ = [
    "DEFAULT_MAX_AHEAD",
    "DEFAULT_MAX_REPORT_AGE",
    "DEFAULT_MIN_SOURCES",
    "MAGIC",
    "PUBLIC_KEY_LENGTH",
    "USER_DATA_LENGTH",
    "AttestedDocument",
    "Binding",
    "DocumentVerifier",
    "VerifiedReport",
    "address_from_public_key",
    "public_key_bytes",
    "verify_attestation",
    "verify_report",
]

#: "TPO1": TEE Price Oracle, user_data layout version 1.
MAGIC = b"TPO1"
_ADDRESS_LENGTH = 20
_HASH_LENGTH = 32
#: 4 + 20 + 32 + 32; AWS allows up to 512 bytes of user_data (attestation_process.md §3.2.2.2).
USER_DATA_LENGTH = len(MAGIC) + _ADDRESS_LENGTH + 2 * _HASH_LENGTH
#: SEC1 uncompressed: 0x04 || X(32) || Y(32).
PUBLIC_KEY_LENGTH = 65
#: A report older than this is refused by default. Pull requests get the latest report and the
#: enclave publishes at least every heartbeat (60 s by default, config.py), plus fetch time.
DEFAULT_MAX_REPORT_AGE = timedelta(seconds=120)
#: How far a report may be ahead of the verifier's clock (RedStone's RedstoneDefaultsLib allows
#: 1 min; the enclave's clock is checked against the NSM's to 2 s, so 5 s is generous).
DEFAULT_MAX_AHEAD = timedelta(seconds=5)
#: A consumer's quorum when it does not pin the config: the enclave's default (config.py).
DEFAULT_MIN_SOURCES = 3


def public_key_bytes(key: coincurve.PrivateKey | coincurve.PublicKey) -> bytes:
    """The 65-byte uncompressed form that goes into the attestation's `public_key`."""
    public = key.public_key if isinstance(key, coincurve.PrivateKey) else key
    out: bytes = public.format(compressed=False)
    return out


def address_from_public_key(public_key: bytes) -> bytes:
    """Check the 65-byte form (length, 0x04 prefix, point on the curve); return its address."""
    if len(public_key) != PUBLIC_KEY_LENGTH or public_key[0] != 0x04:
        raise BindingError(
            f"public_key must be {PUBLIC_KEY_LENGTH} bytes starting 0x04, got "
            f"{len(public_key)} bytes starting {public_key[:1].hex() or 'nothing'}"
        )
    try:
        coincurve.PublicKey(public_key)
    except (ValueError, TypeError) as exc:
        raise BindingError(f"public_key is not a point on secp256k1: {exc}") from exc
    return keccak256(public_key[1:])[12:]


@dataclass(frozen=True, kw_only=True)
class Binding:
    """The decoded `user_data`."""

    address: bytes
    config_hash: bytes
    domains_hash: bytes

    def __post_init__(self) -> None:
        if len(self.address) != _ADDRESS_LENGTH:
            raise BindingError("address must be 20 bytes")
        if len(self.config_hash) != _HASH_LENGTH or len(self.domains_hash) != _HASH_LENGTH:
            raise BindingError("configHash and domainsHash must be 32 bytes")

    @classmethod
    def for_key(cls, public_key: bytes, config: OracleConfig) -> Binding:
        return cls(
            address=address_from_public_key(public_key),
            config_hash=config.config_hash,
            domains_hash=config.domains_hash,
        )

    def encode(self) -> bytes:
        return MAGIC + self.address + self.config_hash + self.domains_hash

    @classmethod
    def decode(cls, data: bytes) -> Binding:
        """Exactly 88 bytes starting "TPO1"; anything else is refused, never padded or cut."""
        if len(data) != USER_DATA_LENGTH:
            raise BindingError(f"user_data must be {USER_DATA_LENGTH} bytes, got {len(data)}")
        if data[:4] != MAGIC:
            raise BindingError(f"user_data magic is {data[:4]!r}, expected {MAGIC!r}")
        return cls(address=data[4:24], config_hash=data[24:56], domains_hash=data[56:88])


# --- the attestation verifier's contract (attestation.Verifier satisfies it) --------------------


class AttestedDocument(Protocol):
    @property
    def module_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def pcrs(self) -> Mapping[int, bytes]: ...
    @property
    def public_key(self) -> bytes | None: ...
    @property
    def user_data(self) -> bytes | None: ...
    @property
    def nonce(self) -> bytes | None: ...


class DocumentVerifier(Protocol):
    def verify(self, data: bytes, *, policy: Any, at: datetime) -> AttestedDocument: ...


@dataclass(frozen=True, kw_only=True)
class VerifiedReport:
    """A price whose every link, from the attestation root to the number, checked out."""

    report: SignedReport
    message: PriceReport
    price: Decimal
    """`message.price / 10**decimals`, exact."""
    address: bytes
    binding: Binding
    document: AttestedDocument


def _fail(step: str, code: str, message: str) -> ReportVerificationError:
    return ReportVerificationError(message, step=step, code=code)


def _load(report_json: Mapping[str, object] | str | bytes) -> object:
    if isinstance(report_json, Mapping):
        return dict(report_json)
    try:
        # A float anywhere in a report is wrong; Decimal makes it fail the integer checks.
        return json.loads(report_json, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise _fail("report", "verify.report_json", f"not JSON: {exc}") from exc


def verify_attestation(
    document_bytes: bytes,
    *,
    verifier: DocumentVerifier,
    policy: Any,
    at: datetime,
    config: OracleConfig | None = None,
    config_hash: bytes | None = None,
) -> tuple[AttestedDocument, bytes, Binding]:
    """Steps 1-6 of `verify_report`: root -> document -> policy -> public_key -> user_data.

    Returns the verified document, the enclave's address and its decoded binding. The registry
    owner's tool runs exactly this before it registers a signer on-chain.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    # 1-3. root -> document -> policy.
    try:
        doc = verifier.verify(document_bytes, policy=policy, at=at)
    except AttestationError as exc:
        raise _fail("document", exc.code, str(exc)) from exc
    # 4. public_key: exactly the 65-byte uncompressed form; 5. its address.
    if doc.public_key is None:
        raise _fail("public_key", "verify.public_key_missing", "the document has no public_key")
    try:
        address = address_from_public_key(doc.public_key)
    except BindingError as exc:
        raise _fail("public_key", "verify.public_key_format", str(exc)) from exc
    # 6. user_data layout, and the address it names.
    if doc.user_data is None:
        raise _fail("user_data", "verify.user_data_missing", "the document has no user_data")
    try:
        binding = Binding.decode(doc.user_data)
    except BindingError as exc:
        raise _fail("user_data", "verify.user_data_layout", str(exc)) from exc
    if binding.address != address:
        raise _fail(
            "user_data",
            "verify.user_data_address",
            "user_data names another address than public_key",
        )
    if config is not None:
        if config.config_hash != binding.config_hash:
            raise _fail("config", "verify.config_hash", "the enclave runs another config")
        if config.domains_hash != binding.domains_hash:
            raise _fail("config", "verify.domains_hash", "the enclave signs for other domains")
    if config_hash is not None and config_hash != binding.config_hash:
        raise _fail("config", "verify.config_hash", "the enclave runs another config")
    return doc, address, binding


def verify_report(
    report_json: Mapping[str, object] | str | bytes,
    document_bytes: bytes,
    *,
    verifier: DocumentVerifier,
    policy: Any,
    at: datetime,
    feed: str | None = None,
    config: OracleConfig | None = None,
    config_hash: bytes | None = None,
    domain: Eip712Domain | None = None,
    min_sources: int | None = None,
    max_dispersion_bps: int | None = None,
    max_age: timedelta = DEFAULT_MAX_REPORT_AGE,
    max_ahead: timedelta = DEFAULT_MAX_AHEAD,
    check_detail: bool = True,
) -> VerifiedReport:
    """Verify `report_json` against the attestation `document_bytes`, at time `at`.

    - `verifier.verify(document_bytes, policy=policy, at=at)` checks root, chain, signature
      and the caller's policy (PCRs, nonce, max age, debug refusal).
    - `config` / `config_hash`: the configuration you expect the enclave to run; `domain`: the
      EIP-712 domain you expect the report signed under (default: any attested domain).
    - `min_sources`, `max_dispersion_bps`: refuse thin or dispersed data. `min_sources`
      defaults to the feed's quorum in `config` when given, else to `DEFAULT_MIN_SOURCES` (3).
    - `check_detail`: recompute sourcesHash, numSources, the median and dispersion from the
      unsigned per-source detail, so it cannot misdescribe the signed numbers.
    """
    doc, address, binding = verify_attestation(
        document_bytes,
        verifier=verifier,
        policy=policy,
        at=at,
        config=config,
        config_hash=config_hash,
    )
    # 7. the report itself, and its EIP-712 signature by the attested address.
    try:
        obj = _load(report_json)
        report = SignedReport.from_json(obj, check_signer=False)
    except ReportFormatError as exc:
        raise _fail("report", exc.code, str(exc)) from exc
    if domains_hash(report.domains) != binding.domains_hash:
        raise _fail("report", "verify.domains_hash", "the domain list is not the attested one")
    if domain is not None and report.domain != domain:
        raise _fail("report", "verify.domain", "signed under another EIP-712 domain")
    if report.recover() != address:
        raise _fail("signature", "verify.signer", "signed by another key than the attested one")
    if not isinstance(obj, dict) or parse_address(obj.get("signer")) != address:
        raise _fail("report", "verify.signer_field", "the signer field is not the attested address")
    message = report.message
    if feed is not None and report.feed != feed:
        raise _fail("report", "verify.feed", f"report is for {report.feed}, not {feed}")
    if isinstance(message, PriceReport) and message.config_hash != binding.config_hash:
        raise _fail("report", "verify.config_hash", "report configHash is not the attested one")
    # 8. freshness, both sides, and the price itself. A price's age is that of its oldest
    # observation; a refusal's, its enclave time. Past expiresAt nothing is current.
    now = int(at.timestamp())
    anchor = (
        message.observations_timestamp if isinstance(message, PriceReport) else message.timestamp
    )
    if anchor < now - max_age.total_seconds():
        raise _fail(
            "freshness",
            "verify.stale_report",
            f"report observed {now - anchor} s ago, limit {max_age}",
        )
    if message.timestamp > now + max_ahead.total_seconds():
        raise _fail(
            "freshness",
            "verify.future_report",
            f"report is {message.timestamp - now} s in the future",
        )
    if message.expires_at < now:
        raise _fail(
            "freshness",
            "verify.expired_report",
            f"report expired {now - message.expires_at} s ago",
        )
    # A signed refusal is reported only once it is shown to be current and for this feed: an
    # old OracleError from the same key must not pass for today's state.
    if isinstance(message, OracleError):
        raise OracleReported(
            f"the enclave signed OracleError code {message.code}: {report.detail}", error=message
        )
    if message.price <= 0:
        raise _fail("report", "verify.price", f"price {message.price} is not positive")
    # 9. source count and dispersion.
    if min_sources is None:
        known = config is not None and any(f.symbol == report.feed for f in config.feeds)
        min_sources = (
            config.quorum(config.feed(report.feed))
            if config is not None and known
            else DEFAULT_MIN_SOURCES
        )
    if message.num_sources < min_sources:
        raise _fail(
            "sources",
            "verify.too_few_sources",
            f"{message.num_sources} sources, {min_sources} required",
        )
    if max_dispersion_bps is not None and message.dispersion_bps > max_dispersion_bps:
        raise _fail(
            "sources",
            "verify.dispersion",
            f"dispersion {message.dispersion_bps} bps, limit {max_dispersion_bps}",
        )
    if check_detail:
        _check_detail(report, message)
    with localcontext() as ctx:
        ctx.prec = 100
        price = Decimal(message.price).scaleb(-message.decimals)
    return VerifiedReport(
        report=report,
        message=message,
        price=price,
        address=address,
        binding=binding,
        document=doc,
    )


def _check_detail(report: SignedReport, message: PriceReport) -> None:
    used = [s for s in report.sources if s.outcome == Outcome.USED]
    ids = [s.source for s in used]
    try:
        if len(set(ids)) != len(ids) or len(used) != message.num_sources:
            raise ValueError(
                f"{len(used)} used sources in the detail, numSources says {message.num_sources}"
            )
        if sources_hash(ids) != message.sources_hash:
            raise ValueError("sourcesHash does not match the used sources")
        scaled = [scale_price(s.price, message.decimals) for s in used if s.price is not None]
        if len(scaled) != len(used) or median(scaled) != message.price:
            raise ValueError("the median of the used prices is not the signed price")
        if dispersion_bps(scaled, message.price) != message.dispersion_bps:
            raise ValueError("the used prices do not give the signed dispersion")
    except (ValueError, ReportFormatError) as exc:
        raise _fail("sources", "verify.detail", str(exc)) from exc
