"""The oracle's wire format, in one place: what is signed and how it travels.

The identifiers and hashes in the signed fields (`feedId`, `sourcesHash`, `domainsHash`), the
`OracleError` codes, the two signed structs, their digests, and the report JSON with its
unsigned per-source detail. Keys, signatures and the EIP-712 encoding itself (words,
`encodeType`, the domain) are Ethereum's, not the oracle's: `eth.py`.

```
PriceReport(bytes32 feedId,int256 price,uint8 decimals,uint64 roundId,uint64 observationsTimestamp,
            uint64 validFrom,uint64 expiresAt,uint64 timestamp,uint16 numSources,uint16 minSources,
            uint32 dispersionBps,bytes32 sourcesHash,bytes32 configHash)
OracleError(bytes32 feedId,uint8 code,uint64 roundId,uint64 timestamp,uint64 expiresAt,
            uint16 numSources,uint16 minSources,bytes32 detailHash,bytes32 configHash)
digest = keccak256(0x1901 || domainSeparator || hashStruct(message))
```

The fields are what an on-chain consumer checks (`contracts/PriceFeed.sol` declares the same
struct): `observationsTimestamp` (the oldest source observation the price uses: staleness is
measured from it), `validFrom` (the earliest chain time the report may be used at: the enclave
time less the clock skew the enclave tolerates), `expiresAt`, the enclave time `timestamp`, and
the quorum `minSources` the enclave applied beside the `numSources` it met. `roundId` counts per
feed. Every time is in Unix seconds.

Errors are signed too, under their own typehash, so an error can never decode as a price
(docs/oracle-trust.md). Signatures: see `eth.py`.

The report JSON carries `typedData` exactly as eth-account's
`encode_typed_data(full_message=...)` takes it, the signature as 0x-hex of 65 bytes, and beside
them, unsigned, the per-source detail, the full domain list (pinned by `domainsHash` in the
attestation's user_data) and, for an `OracleError`, the detail text whose keccak256 is signed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import IntEnum, StrEnum
from typing import ClassVar

import coincurve

from oracle_example.errors import AggregationError, ReportFormatError, SignatureFormatError
from oracle_example.eth import (
    EIP712_DOMAIN_FIELDS,
    SIGNATURE_LENGTH,
    Eip712Domain,
    encode_type,
    encode_word,
    keccak256,
    parse_address,
    parse_bytes32,
    recover_address,
    sign_digest,
    to_checksum_address,
    type_hash,
)

__all__ = [
    "ORACLE_ERROR_TYPE",
    "PRICE_REPORT_TYPE",
    "REPORT_VERSION",
    "Message",
    "OracleError",
    "OracleErrorCode",
    "Outcome",
    "PriceReport",
    "SignedReport",
    "SourceOutcome",
    "detail_hash",
    "domains_hash",
    "feed_id",
    "parse_typed_data",
    "sign_message",
    "sources_hash",
    "typed_data",
    "typed_data_digest",
]

#: The JSON envelope's version; bump it when a key changes meaning.
REPORT_VERSION = 1
_HEX_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_MAX_DETAIL_CHARS = 4096


# --- identifiers, hashes and codes in the signed fields ------------------------------------------

_SYMBOL = re.compile(r"[A-Z0-9]{1,16}/[A-Z0-9]{1,16}")


def feed_id(symbol: str) -> bytes:
    """`feedId = keccak256("BTC/USD")` (docs/oracle-trust.md)."""
    if not _SYMBOL.fullmatch(symbol):
        raise ReportFormatError(f"feed symbol must be upper-case BASE/QUOTE, got {symbol!r}")
    return keccak256(symbol.encode("ascii"))


def domains_hash(domains: tuple[Eip712Domain, ...]) -> bytes:
    """keccak256 of the domain separators, concatenated in config order.

    A contract that knows its own separator and the list can check membership; the list travels
    unsigned beside each report and is pinned by this hash in `user_data`.
    """
    return keccak256(b"".join(d.separator for d in domains))


def sources_hash(source_ids: Iterable[str]) -> bytes:
    """keccak256(keccak256(id_1) || ... || keccak256(id_n)), ids sorted and distinct."""
    ids = sorted(source_ids)
    if len(set(ids)) != len(ids):
        raise AggregationError("duplicate source id")
    return keccak256(b"".join(keccak256(i.encode("utf-8")) for i in ids))


class OracleErrorCode(IntEnum):
    """`OracleError.code` values, as signed in its `code` field."""

    TOO_FEW_SOURCES = 1
    DISPERSION = 2
    CLOCK_UNTRUSTED = 3
    ALL_SOURCES_BLOCKED = 4
    INTERNAL = 5
    QUOTE_DEPEG = 6
    """A market needed a stablecoin conversion whose rate is off peg beyond `maxDepegBps`."""


class Outcome(StrEnum):
    """What happened to each source this round (strings, so they read well in JSON)."""

    USED = "used"
    OUTLIER = "outlier"
    STALE = "stale"
    FUTURE = "future"
    FAILED = "failed"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate_limited"
    MISSING = "missing"


@dataclass(frozen=True, kw_only=True)
class SourceOutcome:
    """One source's line in the unsigned detail beside a report."""

    source: str
    outcome: Outcome
    price: Decimal | None = None
    source_time: datetime | None = None
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "outcome": self.outcome.value,
            # A string, as the exchange sent it: JSON numbers would invite float.
            "price": None if self.price is None else str(self.price),
            "sourceTime": None if self.source_time is None else self.source_time.isoformat(),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: object) -> SourceOutcome:
        keys = {"source", "outcome", "price", "sourceTime", "detail"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise ReportFormatError(f"a source line needs exactly the keys {sorted(keys)}")
        source, outcome, detail = obj["source"], obj["outcome"], obj["detail"]
        known = {o.value for o in Outcome}
        if not isinstance(source, str) or not isinstance(detail, str) or outcome not in known:
            raise ReportFormatError(f"bad source line {obj!r}")
        price_text, time_text = obj["price"], obj["sourceTime"]
        try:
            price = None if price_text is None else Decimal(_str(price_text))
            when = None if time_text is None else datetime.fromisoformat(_str(time_text))
        except (InvalidOperation, ValueError) as exc:
            raise ReportFormatError(f"bad price or time in source line: {exc}") from exc
        if price is not None and not price.is_finite():
            raise ReportFormatError("source price must be finite")
        if when is not None and when.tzinfo is None:
            raise ReportFormatError("sourceTime must carry a UTC offset")
        return cls(
            source=source, outcome=Outcome(outcome), price=price, source_time=when, detail=detail
        )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ReportFormatError(f"expected a string, got {value!r}")
    return value


# --- the signed messages -------------------------------------------------------------------------


class _Signed:
    """What both signed messages share: checked words, a struct hash, fields from `TYPE`."""

    TYPE: ClassVar[str]
    TYPE_NAME: ClassVar[str]
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.TYPE_NAME, cls.FIELDS = _parse_type(cls.TYPE)

    def __post_init__(self) -> None:
        _check_words(self)  # type: ignore[arg-type]  # only subclasses are instantiated

    def struct_hash(self) -> bytes:
        return _struct_hash(self)  # type: ignore[arg-type]


def _parse_type(type_string: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    """`Name(type1 name1,...)` -> the name and (snake_case attribute, name, type) per member."""
    match = re.fullmatch(r"(\w+)\(([^()]*)\)", type_string)
    assert match is not None, type_string
    fields = []
    for member in match.group(2).split(","):
        kind, name = member.split(" ")
        fields.append((re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(), name, kind))
    return match.group(1), tuple(fields)


@dataclass(frozen=True, kw_only=True)
class PriceReport(_Signed):
    """The signed price. `price` is the median scaled by 10**decimals."""

    #: The EIP-712 struct, as `encodeType` writes it and the contracts declare it: the one
    #: definition of the signed fields (`FIELDS` and the Python attributes derive from it).
    TYPE: ClassVar[str] = (
        "PriceReport(bytes32 feedId,int256 price,uint8 decimals,uint64 roundId,"
        "uint64 observationsTimestamp,uint64 validFrom,uint64 expiresAt,uint64 timestamp,"
        "uint16 numSources,uint16 minSources,uint32 dispersionBps,bytes32 sourcesHash,"
        "bytes32 configHash)"
    )
    TYPE_NAME: ClassVar[str]
    #: (python attribute, EIP-712 name, EIP-712 type), in struct order.
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]]

    feed_id: bytes
    price: int
    decimals: int
    round_id: int
    """Strictly increasing per feed."""
    observations_timestamp: int
    """The oldest observation among the sources used: the price is no older than this."""
    valid_from: int
    """Earliest time a consumer may use the report at (enclave time less the tolerated skew)."""
    expires_at: int
    """Latest time a consumer may use the report at."""
    timestamp: int
    """The enclave's (attestation-checked) clock when it aggregated."""
    num_sources: int
    min_sources: int
    """The quorum the enclave applied; `num_sources >= min_sources`."""
    dispersion_bps: int
    sources_hash: bytes
    config_hash: bytes


@dataclass(frozen=True, kw_only=True)
class OracleError(_Signed):
    """A signed refusal to price (docs/oracle-trust.md): not an exception, an EIP-712 message.

    `code` is an `OracleErrorCode`; `detail_hash` = keccak256 of the UTF-8 detail text that
    travels beside the signature.
    """

    TYPE: ClassVar[str] = (
        "OracleError(bytes32 feedId,uint8 code,uint64 roundId,uint64 timestamp,uint64 expiresAt,"
        "uint16 numSources,uint16 minSources,bytes32 detailHash,bytes32 configHash)"
    )
    TYPE_NAME: ClassVar[str]
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]]

    feed_id: bytes
    code: int
    round_id: int
    """From the same per-feed sequence as the prices: an error is a round too."""
    timestamp: int
    expires_at: int
    """Until when the refusal describes the feed's state (a monitor ignores it after)."""
    num_sources: int
    """Sources usable this round (below `min_sources` for `TOO_FEW_SOURCES`)."""
    min_sources: int
    detail_hash: bytes
    config_hash: bytes


Message = PriceReport | OracleError
_MESSAGE_TYPES: dict[str, type[PriceReport] | type[OracleError]] = {
    PriceReport.TYPE_NAME: PriceReport,
    OracleError.TYPE_NAME: OracleError,
}


def _eip_fields(cls: type[PriceReport] | type[OracleError]) -> tuple[tuple[str, str], ...]:
    return tuple((name, kind) for _, name, kind in cls.FIELDS)


PRICE_REPORT_TYPE = encode_type(PriceReport.TYPE_NAME, _eip_fields(PriceReport))
ORACLE_ERROR_TYPE = encode_type(OracleError.TYPE_NAME, _eip_fields(OracleError))
# The two strings are the protocol, and contracts/PriceFeed.sol spells the first literally: pin
# them here too, so a field reordering above cannot slip through as a "refactor".
if PRICE_REPORT_TYPE != (
    "PriceReport(bytes32 feedId,int256 price,uint8 decimals,uint64 roundId,"
    "uint64 observationsTimestamp,uint64 validFrom,uint64 expiresAt,uint64 timestamp,"
    "uint16 numSources,uint16 minSources,uint32 dispersionBps,bytes32 sourcesHash,"
    "bytes32 configHash)"
) or ORACLE_ERROR_TYPE != (
    "OracleError(bytes32 feedId,uint8 code,uint64 roundId,uint64 timestamp,uint64 expiresAt,"
    "uint16 numSources,uint16 minSources,bytes32 detailHash,bytes32 configHash)"
):  # pragma: no cover - a guard on the constants above
    raise AssertionError("EIP-712 type strings drifted from contracts/PriceFeed.sol")
_TYPE_HASHES = {
    cls: type_hash(cls.TYPE_NAME, _eip_fields(cls)) for cls in (PriceReport, OracleError)
}


def _values(message: Message) -> list[tuple[str, str, object]]:
    return [(name, kind, getattr(message, attr)) for attr, name, kind in message.FIELDS]


def _check_words(message: Message) -> None:
    for name, kind, value in _values(message):
        try:
            encode_word(kind, value)
        except ReportFormatError as exc:
            raise ReportFormatError(f"{message.TYPE_NAME}.{name}: {exc}") from None


def _struct_hash(message: Message) -> bytes:
    return keccak256(
        _TYPE_HASHES[type(message)]
        + b"".join(encode_word(kind, value) for _, kind, value in _values(message))
    )


# --- EIP-712 --------------------------------------------------------------------------------------


def typed_data_digest(message: Message, domain: Eip712Domain) -> bytes:
    """keccak256(0x19 0x01 || domainSeparator || hashStruct(message))."""
    return keccak256(b"\x19\x01" + domain.separator + message.struct_hash())


def typed_data(message: Message, domain: Eip712Domain) -> dict[str, object]:
    """The `full_message` for eth-account: bytes as 0x-hex, integers as JSON integers."""
    return {
        "types": _types(type(message)),
        "primaryType": message.TYPE_NAME,
        "domain": domain.to_json(),
        "message": {
            name: "0x" + value.hex() if isinstance(value, bytes) else value
            for name, _, value in _values(message)
        },
    }


def parse_typed_data(obj: object) -> tuple[Message, Eip712Domain]:
    """Strict inverse of `typed_data`: only our two types, field for field, nothing extra.

    A report that declares its own `types` could make any struct hash as "PriceReport"; we
    accept only the exact type lists, and recompute every hash ourselves.
    """
    if not isinstance(obj, dict) or set(obj) != {"types", "primaryType", "domain", "message"}:
        raise ReportFormatError("typedData needs exactly types, primaryType, domain, message")
    primary = obj["primaryType"]
    cls = _MESSAGE_TYPES.get(primary) if isinstance(primary, str) else None
    if cls is None:
        raise ReportFormatError(f"primaryType must be one of {sorted(_MESSAGE_TYPES)}")
    if obj["types"] != _types(cls):
        raise ReportFormatError(f"types are not exactly EIP712Domain and {cls.TYPE_NAME}")
    domain = Eip712Domain.from_json(obj["domain"])
    raw = obj["message"]
    if not isinstance(raw, dict) or set(raw) != {name for _, name, _ in cls.FIELDS}:
        raise ReportFormatError(f"message must have exactly the fields of {cls.TYPE_NAME}")
    values: dict[str, object] = {}
    for attr, name, kind in cls.FIELDS:
        value = raw[name]
        if kind == "bytes32":
            values[attr] = parse_bytes32(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            values[attr] = value
        else:
            raise ReportFormatError(f"{cls.TYPE_NAME}.{name} must be an integer")
    return cls(**values), domain  # type: ignore[arg-type]


def _types(cls: type[PriceReport] | type[OracleError]) -> dict[str, object]:
    return {
        "EIP712Domain": [{"name": n, "type": t} for n, t in EIP712_DOMAIN_FIELDS],
        cls.TYPE_NAME: [{"name": n, "type": t} for n, t in _eip_fields(cls)],
    }


def sign_message(message: Message, domain: Eip712Domain, key: coincurve.PrivateKey) -> bytes:
    return sign_digest(typed_data_digest(message, domain), key)


def detail_hash(detail: str) -> bytes:
    return keccak256(detail.encode("utf-8"))


# --- the report JSON ------------------------------------------------------------------------------

_JSON_KEYS = frozenset(
    {"version", "feed", "typedData", "signature", "signer", "domains", "sources", "detail"}
)


@dataclass(frozen=True, kw_only=True)
class SignedReport:
    """One message signed under one domain, with its unsigned companions."""

    feed: str
    """The feed symbol; `keccak256(feed)` must be `message.feed_id`."""
    message: Message
    domain: Eip712Domain
    signature: bytes
    domains: tuple[Eip712Domain, ...]
    """Every domain the signer signs for, in config order (their hash is `domainsHash`)."""
    sources: tuple[SourceOutcome, ...] = ()
    detail: str | None = None
    """For an `OracleError`: the text whose keccak256 is `detailHash`; else None."""

    def __post_init__(self) -> None:
        if feed_id(self.feed) != self.message.feed_id:
            raise ReportFormatError(f"feedId is not keccak256({self.feed!r})")
        if len(self.signature) != SIGNATURE_LENGTH:
            raise SignatureFormatError(f"signature must be {SIGNATURE_LENGTH} bytes")
        if self.domain not in self.domains:
            raise ReportFormatError("the signing domain is not in the domain list")
        if isinstance(self.message, OracleError):
            if self.detail is None or len(self.detail) > _MAX_DETAIL_CHARS:
                raise ReportFormatError("an OracleError needs its detail text (<= 4096 chars)")
            if detail_hash(self.detail) != self.message.detail_hash:
                raise ReportFormatError("detail does not hash to detailHash")
        elif self.detail is not None:
            raise ReportFormatError("a PriceReport carries no detail text")

    @property
    def digest(self) -> bytes:
        return typed_data_digest(self.message, self.domain)

    def recover(self) -> bytes:
        """The signer's address, recovered from the signature (not taken from the JSON)."""
        return recover_address(self.digest, self.signature)

    def to_json(self) -> dict[str, object]:
        return {
            "version": REPORT_VERSION,
            "feed": self.feed,
            "typedData": typed_data(self.message, self.domain),
            "signature": "0x" + self.signature.hex(),
            "signer": to_checksum_address(self.recover()),
            "domains": [d.to_json() for d in self.domains],
            "sources": [s.to_json() for s in self.sources],
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: object, *, check_signer: bool = True) -> SignedReport:
        """Strict reader. The signature is checked for form, not against any attested key.

        `signer` is a convenience for humans; with `check_signer` it must agree with the
        address the signature recovers (`verify_report` compares both to the attested one).
        """
        if not isinstance(obj, dict) or set(obj) != _JSON_KEYS:
            raise ReportFormatError(f"a report needs exactly the keys {sorted(_JSON_KEYS)}")
        if obj["version"] != REPORT_VERSION:
            raise ReportFormatError(f"report version {obj['version']!r} is not {REPORT_VERSION}")
        feed, sig_text, detail = obj["feed"], obj["signature"], obj["detail"]
        if not isinstance(feed, str):
            raise ReportFormatError("feed must be a string")
        if not isinstance(sig_text, str) or not _HEX_SIGNATURE.fullmatch(sig_text):
            raise SignatureFormatError("signature must be 0x-hex of 65 bytes")
        if detail is not None and not isinstance(detail, str):
            raise ReportFormatError("detail must be a string or null")
        message, domain = parse_typed_data(obj["typedData"])
        domains, sources = obj["domains"], obj["sources"]
        if not isinstance(domains, list) or not isinstance(sources, list):
            raise ReportFormatError("domains and sources must be lists")
        report = cls(
            feed=feed,
            message=message,
            domain=domain,
            signature=bytes.fromhex(sig_text[2:]),
            domains=tuple(Eip712Domain.from_json(d) for d in domains),
            sources=tuple(SourceOutcome.from_json(s) for s in sources),
            detail=detail,
        )
        signer = parse_address(obj["signer"])
        if check_signer and signer != report.recover():
            raise SignatureFormatError("signer does not match the address the signature recovers")
        return report

    @classmethod
    def sign(
        cls,
        message: Message,
        *,
        feed: str,
        key: coincurve.PrivateKey,
        domains: Sequence[Eip712Domain],
        sources: Sequence[SourceOutcome] = (),
        detail: str | None = None,
    ) -> tuple[SignedReport, ...]:
        """The message signed once per domain (microseconds each, docs/oracle-trust.md)."""
        all_domains = tuple(domains)
        return tuple(
            cls(
                feed=feed,
                message=message,
                domain=domain,
                signature=sign_message(message, domain, key),
                domains=all_domains,
                sources=tuple(sources),
                detail=detail,
            )
            for domain in all_domains
        )
