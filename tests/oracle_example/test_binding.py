"""user_data layout, key binding, config hashing, and `verify_report` from root to price."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import coincurve
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation import Policy, Verifier, load_pem_roots
from attestation.testing import DocumentFactory, default_pcrs
from oracle_example.aggregate import Aggregate, Quote, aggregate_feed, message_for
from oracle_example.binding import (
    MAGIC,
    USER_DATA_LENGTH,
    Binding,
    VerifiedReport,
    address_from_public_key,
    public_key_bytes,
    verify_report,
)
from oracle_example.config import FeedConfig, Market, OracleConfig
from oracle_example.errors import (
    BindingError,
    ConfigError,
    OracleReported,
    ReportVerificationError,
)
from oracle_example.eth import Eip712Domain, to_checksum_address
from oracle_example.report import SignedReport

# --- user_data layout -------------------------------------------------------------------------

b20 = st.binary(min_size=20, max_size=20)
b32 = st.binary(min_size=32, max_size=32)


@given(address=b20, config_hash=b32, domains_hash=b32)
def test_user_data_round_trip(address: bytes, config_hash: bytes, domains_hash: bytes) -> None:
    binding = Binding(address=address, config_hash=config_hash, domains_hash=domains_hash)
    data = binding.encode()
    assert len(data) == USER_DATA_LENGTH == 88
    assert data[:4] == MAGIC == b"TPO1"
    assert data[4:24] == address and data[24:56] == config_hash and data[56:] == domains_hash
    assert Binding.decode(data) == binding


@given(st.binary(max_size=200).filter(lambda b: len(b) != 88))
def test_user_data_of_any_other_length_is_refused(data: bytes) -> None:
    with pytest.raises(BindingError, match="88 bytes"):
        Binding.decode(MAGIC + data[4:] if len(data) >= 4 else data)


@given(
    magic=st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC),
    rest=st.binary(min_size=84, max_size=84),
)
def test_user_data_with_another_magic_is_refused(magic: bytes, rest: bytes) -> None:
    with pytest.raises(BindingError, match="magic"):
        Binding.decode(magic + rest)


def test_binding_fields_are_length_checked() -> None:
    with pytest.raises(BindingError):
        Binding(address=b"\x00" * 19, config_hash=b"\x00" * 32, domains_hash=b"\x00" * 32)
    with pytest.raises(BindingError):
        Binding(address=b"\x00" * 20, config_hash=b"\x00" * 33, domains_hash=b"\x00" * 32)


# --- public_key ---------------------------------------------------------------------------------

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
KEY = coincurve.PrivateKey(SECRET)


@pytest.mark.crosscheck
def test_public_key_is_65_bytes_uncompressed_and_gives_eth_address() -> None:
    from eth_account import Account

    pub = public_key_bytes(KEY)
    assert len(pub) == 65 and pub[0] == 4
    assert public_key_bytes(KEY.public_key) == pub
    assert to_checksum_address(address_from_public_key(pub)) == Account.from_key(SECRET).address


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        KEY.public_key.format(compressed=True),  # 33 bytes: the predecessor's form
        public_key_bytes(KEY)[:64],
        public_key_bytes(KEY) + b"\x00",
        b"\x05" + public_key_bytes(KEY)[1:],
        b"\x04" + b"\x00" * 64,  # right shape, not on the curve
        b"\x04" + public_key_bytes(KEY)[1:33] + bytes(32),
    ],
)
def test_malformed_public_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(BindingError):
        address_from_public_key(bad)


# --- config hashing ---------------------------------------------------------------------------


def test_config_round_trips_and_hashes_canonically() -> None:
    config = OracleConfig()
    obj = json.loads(json.dumps(config.to_json()))
    assert OracleConfig.from_json(obj) == config
    # Key order on the wire does not matter; the canonical bytes do not depend on it.
    shuffled = dict(reversed(list(obj.items())))
    assert OracleConfig.from_json(shuffled).config_hash == config.config_hash
    assert (
        config.canonical_bytes() == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"min_sources": 4},
        {"max_depeg_bps": 99},
        {"max_deviation_bps": 101},
        {"max_dispersion_bps": 149},
        {"max_source_age": timedelta(seconds=31)},
        {"max_clock_skew": timedelta(milliseconds=2001)},
        {"domains": (Eip712Domain(chain_id=1),)},
    ],
)
def test_every_setting_moves_the_config_hash(change: dict[str, object]) -> None:
    base = OracleConfig()
    assert replace(base, **change).config_hash != base.config_hash  # type: ignore[arg-type]


def test_quote_currency_choice_is_in_the_hash() -> None:
    base = OracleConfig()
    btc = base.feed("BTC/USD")
    only_usd = FeedConfig(symbol="BTC/USD", markets=btc.markets[1:3], min_sources=2)
    changed = replace(base, feeds=tuple(only_usd if f is btc else f for f in base.feeds))
    assert changed.config_hash != base.config_hash
    with pytest.raises(ConfigError, match="convert_quotes"):
        FeedConfig(symbol="BTC/USD", markets=btc.markets)  # USDT markets without declaring it


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(extra=1),
        lambda o: o.pop("minSources"),
        lambda o: o.update(version=2),
        lambda o: o.update(minSources="2"),
        lambda o: o.update(minSources=True),
        lambda o: o.update(minSources=9),
        lambda o: o.update(maxSourceAgeMs=0),
        lambda o: o["feeds"][0].update(decimals=99),
        lambda o: o["feeds"][0]["markets"][0].update(source="nowhere"),
        lambda o: o["sources"].append(o["sources"][0]),
        lambda o: o["domains"][0].update(verifyingContract="0x1234"),
        lambda o: o.update(domains=[]),
    ],
)
def test_config_reader_is_strict(mutate) -> None:  # type: ignore[no-untyped-def]
    obj = OracleConfig().to_json()
    mutate(obj)
    with pytest.raises(ConfigError):
        OracleConfig.from_json(obj)


def test_binding_for_key_and_config() -> None:
    config = OracleConfig()
    binding = Binding.for_key(public_key_bytes(KEY), config)
    assert binding.config_hash == config.config_hash
    assert binding.domains_hash == config.domains_hash


# --- verify_report end to end (synthetic PKI from attestation.testing) ---------------------------

PKI_START = datetime(2026, 1, 5, tzinfo=UTC)
CONFIG = OracleConfig(
    domains=(Eip712Domain(), Eip712Domain(chain_id=8453, verifying_contract=b"\x42" * 20)),
)


@pytest.fixture(scope="module")
def factory() -> DocumentFactory:
    return DocumentFactory.create(seed=5, not_before=PKI_START)


@pytest.fixture(scope="module")
def verifier(factory: DocumentFactory) -> Verifier:
    return Verifier(roots=load_pem_roots(factory.root_pem))


def pcrs(factory: DocumentFactory) -> dict[int, bytes]:
    return default_pcrs(factory.pki.instance_id)


def policy(factory: DocumentFactory, **kw: object) -> Policy:
    return Policy(pcrs={i: pcrs(factory)[i] for i in (0, 1, 2)}, **kw)  # type: ignore[arg-type]


def document(
    factory: DocumentFactory,
    key: coincurve.PrivateKey = KEY,
    *,
    config: OracleConfig = CONFIG,
    **kw: object,
) -> bytes:
    pub = public_key_bytes(key)
    args: dict[str, object] = {
        "public_key": pub,
        "user_data": Binding.for_key(pub, config).encode(),
        "nonce": b"challenge",
    }
    args.update(kw)
    return factory.document(**args)  # type: ignore[arg-type]


# USDT at par: these tests are about the binding, not the conversion (test_market_truth.py)
PAR = {"USDT": Decimal(1)}


def round_quotes(
    at: datetime, prices: tuple[str, ...] = ("100.1", "100.2", "100.0")
) -> list[Quote]:
    sources = ("coinbase", "kraken", "okx", "binance")
    return [
        Quote(
            source=s,
            feed="BTC/USD",
            instrument="X",
            price=Decimal(p),
            source_time=at - timedelta(seconds=2),
            received_at=at,
        )
        for s, p in zip(sources, prices, strict=False)
    ]


def make_report(
    at: datetime,
    *,
    key: coincurve.PrivateKey = KEY,
    domain_index: int = 0,
    prices: tuple[str, ...] = ("100.1", "100.2", "100.0"),
    config: OracleConfig = CONFIG,
) -> dict[str, object]:
    result = aggregate_feed(config, "BTC/USD", round_quotes(at, prices), now=at, rates=PAR)
    message, detail = message_for(result, round_id=1, config=config)
    reports = SignedReport.sign(
        message,
        feed="BTC/USD",
        key=key,
        domains=config.domains,
        sources=result.outcomes,
        detail=detail,
    )
    return json.loads(json.dumps(reports[domain_index].to_json()))  # type: ignore[no-any-return]


def check(
    factory: DocumentFactory, verifier: Verifier, report: object, doc: bytes, **kw: object
) -> VerifiedReport:
    args: dict[str, object] = {
        "verifier": verifier,
        "policy": policy(factory, nonce=b"challenge"),
        "at": factory.timestamp,
        "feed": "BTC/USD",
        "config": CONFIG,
        "min_sources": 2,
    }
    args.update(kw)
    return verify_report(report, doc, **args)  # type: ignore[arg-type]


@pytest.mark.crosscheck
def test_a_good_report_verifies_from_root_to_price(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    from eth_account import Account

    at = factory.timestamp
    verified = check(factory, verifier, make_report(at), document(factory))
    assert verified.price == Decimal("100.10000000")
    assert verified.message.num_sources == 3
    assert to_checksum_address(verified.address) == Account.from_key(SECRET).address
    assert verified.binding.config_hash == CONFIG.config_hash
    assert verified.document.nonce == b"challenge"
    # As a JSON string too, and under the second domain when asked for it.
    text = json.dumps(make_report(at, domain_index=1))
    assert check(factory, verifier, text, document(factory), domain=CONFIG.domains[1]).price


def expect(step: str, code: str, fn, *args, **kw) -> ReportVerificationError:  # type: ignore[no-untyped-def]
    with pytest.raises(ReportVerificationError) as info:
        fn(*args, **kw)
    assert (info.value.step, info.value.code) == (step, code), str(info.value)
    return info.value


def test_tampered_report_fails_at_the_signature(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    report = make_report(factory.timestamp)
    report["typedData"]["message"]["price"] += 1  # type: ignore[index]
    expect("signature", "verify.signer", check, factory, verifier, report, document(factory))


def test_report_signed_by_another_key_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    other = coincurve.PrivateKey(b"\x07" * 32)
    report = make_report(factory.timestamp, key=other)
    expect("signature", "verify.signer", check, factory, verifier, report, document(factory))


def test_signer_field_must_be_the_attested_address(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    report = make_report(factory.timestamp)
    report["signer"] = "0x" + "00" * 20
    expect("report", "verify.signer_field", check, factory, verifier, report, document(factory))


def test_document_with_another_pcr0_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    other = {**pcrs(factory), 0: b"\x01" * 48}
    err = expect(
        "document",
        "policy.pcr-mismatch",
        check,
        factory,
        verifier,
        make_report(factory.timestamp),
        document(factory, pcrs=other),
    )
    assert err.__cause__ is not None


def test_debug_document_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    zeros = dict.fromkeys(range(16), bytes(48))
    loose = Policy(pcrs={0: bytes(48), 1: bytes(48), 2: bytes(48)}, nonce=b"challenge")
    expect(
        "document",
        "policy.debug",
        check,
        factory,
        verifier,
        make_report(factory.timestamp),
        document(factory, pcrs=zeros),
        policy=loose,
    )


def test_stale_document_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    at = factory.timestamp + timedelta(minutes=30)
    expect(
        "document",
        "policy.stale",
        check,
        factory,
        verifier,
        make_report(at),
        document(factory),
        at=at,
        policy=policy(factory, max_age=timedelta(minutes=5)),
    )


def test_wrong_nonce_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    expect(
        "document",
        "policy.nonce-mismatch",
        check,
        factory,
        verifier,
        make_report(factory.timestamp),
        document(factory, nonce=b"replayed"),
    )


def test_document_from_an_untrusted_root_fails(factory) -> None:  # type: ignore[no-untyped-def]
    stranger = Verifier(
        roots=load_pem_roots(DocumentFactory.create(seed=6, not_before=PKI_START).root_pem)
    )
    with pytest.raises(ReportVerificationError) as info:
        check(factory, stranger, make_report(factory.timestamp), document(factory))
    assert info.value.step == "document" and info.value.code.startswith("chain.")


@pytest.mark.parametrize(
    ("doc_kw", "step", "code"),
    [
        ({"public_key": None}, "public_key", "verify.public_key_missing"),
        (
            {"public_key": KEY.public_key.format(compressed=True)},
            "public_key",
            "verify.public_key_format",
        ),
        ({"user_data": None}, "user_data", "verify.user_data_missing"),
        ({"user_data": b"TPO2" + bytes(84)}, "user_data", "verify.user_data_layout"),
        ({"user_data": b"TPO1" + bytes(83)}, "user_data", "verify.user_data_layout"),
        (
            {
                "user_data": Binding(
                    address=b"\x01" * 20,
                    config_hash=CONFIG.config_hash,
                    domains_hash=CONFIG.domains_hash,
                ).encode()
            },
            "user_data",
            "verify.user_data_address",
        ),
    ],
)
def test_binding_failures(factory, verifier, doc_kw, step, code) -> None:  # type: ignore[no-untyped-def]
    expect(
        step,
        code,
        check,
        factory,
        verifier,
        make_report(factory.timestamp),
        document(factory, **doc_kw),
    )


def test_enclave_running_another_config_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    other = replace(CONFIG, max_deviation_bps=500)
    report = make_report(factory.timestamp, config=other)
    doc = document(factory, config=other)
    expect("config", "verify.config_hash", check, factory, verifier, report, doc)
    # Without an expected config, the report still has to match what is attested.
    assert check(factory, verifier, report, doc, config=None).price
    expect(
        "config",
        "verify.config_hash",
        check,
        factory,
        verifier,
        report,
        doc,
        config=None,
        config_hash=CONFIG.config_hash,
    )


def test_stale_and_future_reports_fail(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    at = factory.timestamp
    expect(
        "freshness",
        "verify.stale_report",
        check,
        factory,
        verifier,
        make_report(at - timedelta(minutes=3)),
        document(factory),
    )
    expect(
        "freshness",
        "verify.future_report",
        check,
        factory,
        verifier,
        make_report(at + timedelta(seconds=30)),
        document(factory),
    )
    # A tighter bound than the default is honoured.
    expect(
        "freshness",
        "verify.stale_report",
        check,
        factory,
        verifier,
        make_report(at - timedelta(seconds=20)),
        document(factory),
        max_age=timedelta(seconds=10),
    )
    # A looser age bound does not outlive the signed expiresAt (enclave time + 120 s).
    expect(
        "freshness",
        "verify.expired_report",
        check,
        factory,
        verifier,
        make_report(at - timedelta(seconds=121)),
        document(factory),
        max_age=timedelta(minutes=10),
    )
    check(
        factory,
        verifier,
        make_report(at - timedelta(seconds=120)),
        document(factory),
        max_age=timedelta(minutes=10),
    )


def test_thin_or_dispersed_reports_fail_the_consumer_bounds(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    at = factory.timestamp
    report = make_report(at)
    expect(
        "sources",
        "verify.too_few_sources",
        check,
        factory,
        verifier,
        report,
        document(factory),
        min_sources=4,
    )
    expect(
        "sources",
        "verify.dispersion",
        check,
        factory,
        verifier,
        report,
        document(factory),
        max_dispersion_bps=10,
    )


def test_a_consumer_defaults_to_a_quorum_of_three_or_the_pinned_configs(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    # An enclave configured with a quorum of 2 signs a 2-source price; a consumer that pins only
    # the config hash refuses it by default (3), one that pins the config itself accepts it.
    thin = replace(CONFIG, min_sources=2)
    at = factory.timestamp
    report = make_report(at, prices=("100.1", "100.2"), config=thin)
    doc = document(factory, config=thin)
    default = {"min_sources": None}  # what verify_report does when the caller gives none
    error = expect(
        "sources",
        "verify.too_few_sources",
        check,
        factory,
        verifier,
        report,
        doc,
        config=None,
        config_hash=thin.config_hash,
        **default,
    )
    assert "2 sources, 3 required" in str(error)
    verified = check(factory, verifier, report, doc, config=thin, **default)
    assert verified.message.num_sources == 2


def test_detail_that_misdescribes_the_signed_numbers_fails(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    report = make_report(factory.timestamp)
    (line,) = [s for s in report["sources"] if s["source"] == "kraken"]  # type: ignore[attr-defined]
    assert line["outcome"] == "used"
    line["price"] = "100.3"  # still within the band, but not what was signed
    expect("sources", "verify.detail", check, factory, verifier, report, document(factory))
    assert check(factory, verifier, report, document(factory), check_detail=False).price


def test_signed_oracle_error_is_reported_not_priced(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    report = make_report(factory.timestamp, prices=("100.1",))  # one source: too thin
    assert report["typedData"]["primaryType"] == "OracleError"  # type: ignore[index]
    with pytest.raises(OracleReported) as info:
        check(factory, verifier, report, document(factory))
    assert info.value.code == "verify.oracle_error"
    assert getattr(info.value.error, "code", None) == 1


def test_old_or_foreign_oracle_error_is_not_reported_as_current(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    # A refusal signed long ago by the same key is a stale report, not today's state.
    old = make_report(factory.timestamp - timedelta(hours=1), prices=("100.1",))
    assert old["typedData"]["primaryType"] == "OracleError"  # type: ignore[index]
    expect("freshness", "verify.stale_report", check, factory, verifier, old, document(factory))
    thin = make_report(factory.timestamp, prices=("100.1",))
    expect(
        "report", "verify.feed", check, factory, verifier, thin, document(factory), feed="ETH/USD"
    )


def test_wrong_feed_and_foreign_domain_list_fail(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    report = make_report(factory.timestamp)
    expect(
        "report", "verify.feed", check, factory, verifier, report, document(factory), feed="ETH/USD"
    )
    expect(
        "report",
        "verify.domain",
        check,
        factory,
        verifier,
        report,
        document(factory),
        domain=CONFIG.domains[1],
    )
    report["domains"] = report["domains"][:1]  # type: ignore[index]
    expect(
        "report",
        "verify.domains_hash",
        check,
        factory,
        verifier,
        report,
        document(factory),
        config=None,
    )


def test_garbage_report_json_fails_at_the_report_step(factory, verifier) -> None:  # type: ignore[no-untyped-def]
    expect(
        "report", "verify.report_json", check, factory, verifier, b"{not json", document(factory)
    )
    expect("report", "report.format", check, factory, verifier, {"version": 1}, document(factory))


def test_aggregate_used_here_is_a_price(factory) -> None:  # type: ignore[no-untyped-def]
    at = factory.timestamp
    assert isinstance(
        aggregate_feed(CONFIG, "BTC/USD", round_quotes(at), now=at, rates=PAR), Aggregate
    )


def test_market_helpers() -> None:
    feed = CONFIG.feed("BTC/USD")
    assert feed.market("kraken") == Market(source="kraken", instrument="XBTUSD", quote="USD")
    with pytest.raises(ConfigError):
        feed.market("bitstamp")
    with pytest.raises(ConfigError):
        CONFIG.feed("SOL/USD")
