"""EIP-712 reports cross-checked against eth-account (a test-only dependency)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oracle_example.config import OracleConfig
from oracle_example.errors import ReportFormatError, SignatureFormatError
from oracle_example.eth import (
    SECP256K1_N,
    Eip712Domain,
    address_of,
    encode_type,
    encode_word,
    keccak256,
    parse_address,
    recover_address,
    sign_digest,
    to_checksum_address,
)
from oracle_example.report import (
    ORACLE_ERROR_TYPE,
    PRICE_REPORT_TYPE,
    OracleError,
    OracleErrorCode,
    Outcome,
    PriceReport,
    SignedReport,
    SourceOutcome,
    detail_hash,
    feed_id,
    parse_typed_data,
    sign_message,
    typed_data,
    typed_data_digest,
)

CONFIG = OracleConfig()
SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
KEY = coincurve.PrivateKey(SECRET)


@pytest.fixture(scope="module")
def eth_account_imported() -> None:
    """eth-account raises the recursion limit when first imported; hypothesis refuses a test
    that changes it, so the property tests import it before they run."""
    import eth_account.messages  # noqa: F401


def eth_digest(full_message: dict[str, object]) -> bytes:
    """The EIP-712 digest as eth-account computes it, with eth-utils' own keccak."""
    from eth_account.messages import encode_typed_data
    from eth_utils.crypto import keccak as eth_keccak

    signable = encode_typed_data(full_message=full_message)
    return bytes(eth_keccak(b"\x19" + signable.version + signable.header + signable.body))


def uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=(1 << bits) - 1)


b32 = st.binary(min_size=32, max_size=32)
domains = st.builds(
    Eip712Domain,
    name=st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 256),
    version=st.sampled_from(["1", "2", "v1.0"]),
    chain_id=st.one_of(st.sampled_from([0, 1, 8453, 42161]), uint(256)),
    verifying_contract=st.binary(min_size=20, max_size=20),
)
price_reports = st.builds(
    PriceReport,
    feed_id=b32,
    # Negative and extreme int256 values on purpose: two's complement must match eth-abi.
    price=st.one_of(
        st.integers(min_value=-(1 << 255), max_value=(1 << 255) - 1),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.sampled_from([-(1 << 255), -1, 0, 1, (1 << 255) - 1]),
    ),
    decimals=uint(8),
    round_id=uint(64),
    observations_timestamp=uint(64),
    valid_from=uint(64),
    expires_at=uint(64),
    timestamp=uint(64),
    num_sources=uint(16),
    min_sources=uint(16),
    dispersion_bps=uint(32),
    sources_hash=b32,
    config_hash=b32,
)
oracle_errors = st.builds(
    OracleError,
    feed_id=b32,
    code=uint(8),
    round_id=uint(64),
    timestamp=uint(64),
    expires_at=uint(64),
    num_sources=uint(16),
    min_sources=uint(16),
    detail_hash=b32,
    config_hash=b32,
)


def sample_report(price: int = 9651122000000) -> PriceReport:
    return PriceReport(
        feed_id=feed_id("BTC/USD"),
        price=price,
        decimals=8,
        round_id=1,
        observations_timestamp=1764170990,
        valid_from=1764170998,
        expires_at=1764171120,
        timestamp=1764171000,
        num_sources=4,
        min_sources=3,
        dispersion_bps=1,
        sources_hash=b"\x11" * 32,
        config_hash=CONFIG.config_hash,
    )


# --- digests -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(message=price_reports, domain=domains)
@pytest.mark.crosscheck
@pytest.mark.usefixtures("eth_account_imported")
def test_price_report_digest_matches_eth_account(
    message: PriceReport, domain: Eip712Domain
) -> None:
    full = typed_data(message, domain)
    assert typed_data_digest(message, domain) == eth_digest(full)
    # And the JSON form (what goes over the wire) is what eth-account takes.
    assert eth_digest(json.loads(json.dumps(full))) == typed_data_digest(message, domain)


@settings(max_examples=40, deadline=None)
@given(message=oracle_errors, domain=domains)
@pytest.mark.crosscheck
@pytest.mark.usefixtures("eth_account_imported")
def test_oracle_error_digest_matches_eth_account(
    message: OracleError, domain: Eip712Domain
) -> None:
    assert typed_data_digest(message, domain) == eth_digest(typed_data(message, domain))


@pytest.mark.crosscheck
def test_type_strings_and_typehashes_are_the_documented_ones() -> None:
    from eth_utils.crypto import keccak as eth_keccak

    assert PRICE_REPORT_TYPE == (
        "PriceReport(bytes32 feedId,int256 price,uint8 decimals,uint64 roundId,"
        "uint64 observationsTimestamp,uint64 validFrom,uint64 expiresAt,uint64 timestamp,"
        "uint16 numSources,uint16 minSources,uint32 dispersionBps,bytes32 sourcesHash,"
        "bytes32 configHash)"
    )
    assert ORACLE_ERROR_TYPE == (
        "OracleError(bytes32 feedId,uint8 code,uint64 roundId,uint64 timestamp,uint64 expiresAt,"
        "uint16 numSources,uint16 minSources,bytes32 detailHash,bytes32 configHash)"
    )
    assert keccak256(b"") == bytes(eth_keccak(b""))


def test_error_and_price_never_share_a_digest() -> None:
    # Same leading words, different typehash: an error can never pass as a price.
    domain = Eip712Domain()
    price = sample_report(price=1)
    error = OracleError(
        feed_id=price.feed_id,
        code=1,
        round_id=price.round_id,
        timestamp=price.timestamp,
        expires_at=price.expires_at,
        num_sources=price.num_sources,
        min_sources=price.min_sources,
        detail_hash=b"\x00" * 32,
        config_hash=price.config_hash,
    )
    assert typed_data_digest(price, domain) != typed_data_digest(error, domain)


def test_domains_separate_signatures() -> None:
    message = sample_report()
    a = Eip712Domain(chain_id=1, verifying_contract=b"\x01" * 20)
    b = Eip712Domain(chain_id=8453, verifying_contract=b"\x01" * 20)
    assert typed_data_digest(message, a) != typed_data_digest(message, b)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("uint8", 256),
        ("uint8", -1),
        ("int256", 1 << 255),
        ("int256", -(1 << 255) - 1),
        ("uint64", True),
        ("bytes32", b"\x00" * 31),
        ("address", b"\x00" * 21),
        ("uint16", "1"),
    ],
)
def test_out_of_range_values_are_refused_not_wrapped(kind: str, value: object) -> None:
    with pytest.raises(ReportFormatError):
        encode_word(kind, value)


def test_report_fields_are_range_checked() -> None:
    with pytest.raises(ReportFormatError, match="decimals"):
        PriceReport(**{**sample_report().__dict__, "decimals": 256})
    with pytest.raises(ReportFormatError, match="numSources"):
        PriceReport(**{**sample_report().__dict__, "num_sources": 1 << 16})


# --- keys, signatures, recovery -----------------------------------------------------------------


@pytest.mark.crosscheck
def test_address_matches_eth_account() -> None:
    from eth_account import Account

    ours = address_of(KEY.public_key.format(compressed=False))
    assert to_checksum_address(ours) == Account.from_key(SECRET).address


@settings(max_examples=30, deadline=None)
@given(
    message=st.one_of(price_reports, oracle_errors),
    domain=domains,
    secret=st.integers(min_value=1, max_value=SECP256K1_N - 1),
)
@pytest.mark.crosscheck
def test_signature_recovers_with_our_code_and_eth_account(
    message: PriceReport | OracleError, domain: Eip712Domain, secret: int
) -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    key = coincurve.PrivateKey(secret.to_bytes(32, "big"))
    address = address_of(key.public_key.format(compressed=False))
    signature = sign_message(message, domain, key)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2  # low-s
    digest = typed_data_digest(message, domain)
    assert recover_address(digest, signature) == address
    checksum = to_checksum_address(address)
    assert Account._recover_hash(digest, signature=signature) == checksum
    signable = encode_typed_data(full_message=typed_data(message, domain))
    assert Account.recover_message(signable, signature=signature) == checksum


@pytest.mark.crosscheck
def test_eth_account_signature_recovers_with_our_code() -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    message = sample_report(price=-5)
    domain = Eip712Domain(chain_id=1, verifying_contract=b"\xab" * 20)
    signed = Account.sign_message(
        encode_typed_data(full_message=typed_data(message, domain)), private_key=SECRET
    )
    digest = typed_data_digest(message, domain)
    assert bytes(signed.message_hash) == digest
    assert recover_address(digest, bytes(signed.signature)) == address_of(
        KEY.public_key.format(compressed=False)
    )


def test_signature_forms_are_checked() -> None:
    digest = typed_data_digest(sample_report(), Eip712Domain())
    good = sign_digest(digest, KEY)
    with pytest.raises(SignatureFormatError, match="65"):
        recover_address(digest, good[:64])
    with pytest.raises(SignatureFormatError, match="27 or 28"):
        recover_address(digest, good[:64] + bytes([good[64] - 27]))  # raw recid, not v
    s = int.from_bytes(good[32:64], "big")
    high = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    with pytest.raises(SignatureFormatError, match="high s"):
        recover_address(digest, high)
    with pytest.raises(SignatureFormatError):
        recover_address(digest, b"\x00" * 64 + b"\x1b")
    # The coincurve default (sha256 of the digest) would recover a stranger: ours does not.
    sha_signed = KEY.sign_recoverable(digest)
    wrong = sha_signed[:64] + bytes([sha_signed[64] + 27])
    assert recover_address(digest, wrong) != address_of(KEY.public_key.format(compressed=False))


@pytest.mark.crosscheck
def test_checksum_addresses_match_eth_utils() -> None:
    from eth_utils.address import to_checksum_address as eth_checksum

    for raw in (b"\x00" * 20, b"\xff" * 20, bytes(range(20)), KEY.public_key.format()[1:21]):
        assert to_checksum_address(raw) == eth_checksum("0x" + raw.hex())
        assert parse_address(to_checksum_address(raw)) == raw
    bad = to_checksum_address(bytes(range(20)))
    flipped = bad[:-1] + (bad[-1].lower() if bad[-1].isupper() else bad[-1].upper())
    if flipped != bad and flipped[2:] not in (flipped[2:].lower(), flipped[2:].upper()):
        with pytest.raises(ReportFormatError, match="checksum"):
            parse_address(flipped)


# --- the report JSON -----------------------------------------------------------------------------


def signed_price() -> SignedReport:
    sources = (
        SourceOutcome(source="binance", outcome=Outcome.BLOCKED, detail="source.blocked: 451"),
        SourceOutcome(source="okx", outcome=Outcome.USED),
    )
    (report,) = SignedReport.sign(
        sample_report(), feed="BTC/USD", key=KEY, domains=CONFIG.domains, sources=sources
    )
    return report


@pytest.mark.crosscheck
def test_report_json_round_trip_and_eth_account_accepts_typed_data() -> None:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    report = signed_price()
    obj = json.loads(json.dumps(report.to_json()))
    assert set(obj) == {
        "version",
        "feed",
        "typedData",
        "signature",
        "signer",
        "domains",
        "sources",
        "detail",
    }
    assert obj["signature"].startswith("0x") and len(obj["signature"]) == 2 + 130
    assert obj["signer"] == Account.from_key(SECRET).address
    assert SignedReport.from_json(obj) == report
    signable = encode_typed_data(full_message=obj["typedData"])
    assert Account.recover_message(signable, signature=report.signature) == obj["signer"]


def test_one_signature_per_domain() -> None:
    domains = (Eip712Domain(), Eip712Domain(chain_id=1, verifying_contract=b"\x02" * 20))
    reports = SignedReport.sign(sample_report(), feed="BTC/USD", key=KEY, domains=domains)
    assert [r.domain for r in reports] == list(domains)
    assert reports[0].signature != reports[1].signature
    assert all(r.domains == domains for r in reports)


def test_oracle_error_report_carries_its_detail() -> None:
    detail = "BTC/USD: 1 usable source(s), 2 required: binance blocked"
    message = OracleError(
        feed_id=feed_id("BTC/USD"),
        code=OracleErrorCode.TOO_FEW_SOURCES,
        round_id=2,
        timestamp=1764171000,
        expires_at=1764171120,
        num_sources=1,
        min_sources=2,
        detail_hash=detail_hash(detail),
        config_hash=CONFIG.config_hash,
    )
    (report,) = SignedReport.sign(
        message, feed="BTC/USD", key=KEY, domains=CONFIG.domains, detail=detail
    )
    obj = json.loads(json.dumps(report.to_json()))
    assert obj["typedData"]["primaryType"] == "OracleError"
    assert SignedReport.from_json(obj) == report
    obj["detail"] = "everything is fine"
    with pytest.raises(ReportFormatError, match="detailHash"):
        SignedReport.from_json(obj)


def test_tampered_price_no_longer_recovers_the_signer() -> None:
    obj = signed_price().to_json()
    obj["typedData"]["message"]["price"] += 1  # type: ignore[index]
    with pytest.raises(SignatureFormatError, match="signer"):
        SignedReport.from_json(obj)
    loose = SignedReport.from_json(obj, check_signer=False)
    assert loose.recover() != address_of(KEY.public_key.format(compressed=False))


def _edit(path: list[str], value: object) -> dict[str, object]:
    obj = copy.deepcopy(signed_price().to_json())
    target: dict[str, object] = obj
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["version"], 2),
        (["typedData", "primaryType"], "Mail"),
        (["typedData", "types", "PriceReport"], [{"name": "price", "type": "int256"}]),
        (["typedData", "types", "Extra"], [{"name": "x", "type": "uint8"}]),
        (["typedData", "message", "price"], "9651122000000"),
        (["typedData", "message", "price"], 1.5),
        (["typedData", "message", "decimals"], True),
        (["typedData", "message", "feedId"], "0x1234"),
        (["typedData", "message", "extra"], 1),
        (["typedData", "domain", "chainId"], "1"),
        (["typedData", "domain", "salt"], "0x" + "00" * 32),
        (["signature"], "0x" + "00" * 64),
        (["signature"], "not hex"),
        (["feed"], "ETH/USD"),
        (["detail"], "a price report has no detail"),
        (["domains"], []),
        (["sources"], [{"source": "okx"}]),
        (
            ["sources"],
            [
                {
                    "source": "okx",
                    "outcome": "invented",
                    "price": None,
                    "sourceTime": None,
                    "detail": "",
                }
            ],
        ),
        (["signer"], "0x" + "00" * 20),
    ],
)
def test_report_json_is_read_strictly(path: list[str], value: object) -> None:
    with pytest.raises(ReportFormatError):
        SignedReport.from_json(_edit(path, value))


def test_parse_typed_data_inverts_typed_data() -> None:
    message = sample_report(price=-(1 << 255))
    domain = Eip712Domain(name="X", chain_id=5, verifying_contract=b"\x07" * 20)
    assert parse_typed_data(typed_data(message, domain)) == (message, domain)


@pytest.mark.parametrize("cls", [PriceReport, OracleError])
def test_the_dataclass_fields_are_the_eip712_members_in_order(cls: type[Any]) -> None:
    # `TYPE` is the one definition; the Python attributes must follow it member by member.
    assert [f.name for f in dataclasses.fields(cls)] == [attr for attr, _, _ in cls.FIELDS]
    assert encode_type(cls.TYPE_NAME, [(n, t) for _, n, t in cls.FIELDS]) == cls.TYPE
