"""Certificate path rules and the chain cache, on synthetic chains from attestation.builder."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import ChainError, PcrSet, Verifier
from attestation._chain import ChainValidator
from attestation.builder import (
    LEAF_KEY_USAGE,
    CertifiedKey,
    build_document,
    derive_key,
    encode_payload,
    encode_sign1,
    issue_certificate,
    key_usage,
)
from attestation.testing import DocumentFactory, default_pcrs


def _policy(factory: DocumentFactory) -> PcrSet:
    return PcrSet({0: default_pcrs(factory.pki.instance_id)[0]})


def _leaf(factory: DocumentFactory, label: str, **overrides: Any) -> CertifiedKey:
    key = overrides.pop("key", None) or derive_key(99, label)
    start = factory.leaf.certificate.not_valid_before_utc
    kwargs: dict[str, Any] = {
        "subject": f"{factory.module_id}.us-east-1.aws",
        "public_key": key.public_key(),
        "issuer": factory.pki.instance.certificate,
        "issuer_key": factory.pki.instance.key,
        "not_before": start,
        "not_after": start + timedelta(hours=3),
        "ca": False,
        "key_usage": LEAF_KEY_USAGE,
        "key_usage_critical": False,
    }
    kwargs.update(overrides)
    return CertifiedKey(key=key, certificate=issue_certificate(**kwargs))


def _document(
    factory: DocumentFactory, leaf: CertifiedKey, cabundle: list[bytes] | None = None
) -> bytes:
    return build_document(
        leaf=leaf,
        cabundle=factory.pki.cabundle if cabundle is None else cabundle,
        module_id=factory.module_id,
        timestamp_ms=int(factory.timestamp.timestamp() * 1000),
        pcrs=default_pcrs(factory.pki.instance_id),
    )


def _code(verifier: Verifier, factory: DocumentFactory, data: bytes) -> str:
    with pytest.raises(ChainError) as info:
        verifier.verify(data, policy=_policy(factory), at=factory.timestamp)
    return info.value.code


def test_synthetic_document_verifies(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    doc = synthetic_verifier.verify(
        factory.document(), policy=_policy(factory), at=factory.timestamp
    )
    assert [c.subject for c in doc.certificates] == [
        factory.leaf.certificate.subject,
        factory.pki.instance.certificate.subject,
        factory.pki.zonal.certificate.subject,
        factory.pki.regional.certificate.subject,
        factory.pki.root.certificate.subject,
    ]


def test_synthetic_root_is_not_aws(factory: DocumentFactory) -> None:
    assert _code(Verifier.aws(), factory, factory.document()) == "chain.untrusted"


def test_cabundle_zero_is_never_the_anchor(factory: DocumentFactory) -> None:
    # The document carries its own root in cabundle[0]; trusting it would accept anything.
    verifier = Verifier(roots=[Verifier.aws().roots[0]])
    assert _code(verifier, factory, factory.document()) == "chain.untrusted"


def test_cabundle_zero_is_ignored(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    bundle = [b"not a certificate", *factory.pki.cabundle[1:]]
    data = _document(factory, factory.leaf, bundle)
    synthetic_verifier.verify(data, policy=_policy(factory), at=factory.timestamp)


def test_validity_window(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    data = factory.document()
    policy = _policy(factory)
    synthetic_verifier.verify(data, policy=policy, at=factory.not_after)  # inclusive
    with pytest.raises(ChainError) as late:
        synthetic_verifier.verify(data, policy=policy, at=factory.not_after + timedelta(seconds=1))
    assert late.value.code == "chain.expired"
    with pytest.raises(ChainError) as early:
        synthetic_verifier.verify(data, policy=policy, at=factory.not_before - timedelta(seconds=1))
    assert early.value.code == "chain.not-yet-valid"


@pytest.mark.parametrize(
    ("label", "overrides", "code"),
    [
        ("ca-leaf", {"ca": True, "path_length": 0}, "chain.leaf-usage"),
        ("no-ku", {"key_usage": None}, "chain.leaf-usage"),
        ("no-ds", {"key_usage": key_usage(non_repudiation=True)}, "chain.leaf-usage"),
        ("sha256", {"hash_algorithm": hashes.SHA256()}, "chain.leaf-algorithm"),
        (
            "crit-ext",
            {
                "extra_extensions": [
                    (
                        x509.UnrecognizedExtension(
                            x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"
                        ),
                        True,
                    )
                ]
            },
            "chain.invalid",
        ),
        ("wrong-issuer-key", {"issuer_key": derive_key(5, "other")}, "chain.untrusted"),
    ],
)
def test_leaf_rules(
    factory: DocumentFactory,
    synthetic_verifier: Verifier,
    label: str,
    overrides: dict[str, Any],
    code: str,
) -> None:
    leaf = _leaf(factory, label, **overrides)
    assert _code(synthetic_verifier, factory, _document(factory, leaf)) == code


def test_leaf_key_must_be_p384(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    p256 = derive_key(99, "p256", curve=ec.SECP256R1())
    leaf = _leaf(factory, "p256", key=p256)
    payload = encode_payload(
        module_id=factory.module_id,
        timestamp_ms=int(factory.timestamp.timestamp() * 1000),
        pcrs=default_pcrs(factory.pki.instance_id),
        certificate=leaf.der,
        cabundle=factory.pki.cabundle,
    )
    # The chain step refuses the key before any signature is looked at.
    data = encode_sign1(payload=payload, signature=bytes(96))
    assert _code(synthetic_verifier, factory, data) == "chain.leaf-key"


def test_non_critical_unknown_extension_allowed(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    leaf = _leaf(factory, "noncrit", extra_extensions=[(ext, False)])
    synthetic_verifier.verify(
        _document(factory, leaf), policy=_policy(factory), at=factory.timestamp
    )


def test_bundle_out_of_order(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    root, regional, zonal, instance = factory.pki.cabundle
    data = _document(factory, factory.leaf, [root, zonal, regional, instance])
    assert _code(synthetic_verifier, factory, data) == "chain.path-mismatch"


def test_bundle_missing_link(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    root, _regional, zonal, instance = factory.pki.cabundle
    data = _document(factory, factory.leaf, [root, zonal, instance])
    assert _code(synthetic_verifier, factory, data) == "chain.untrusted"


def test_intermediate_without_key_cert_sign(
    factory: DocumentFactory, synthetic_verifier: Verifier
) -> None:
    pki = factory.pki
    instance = pki.instance.certificate
    bad_instance = issue_certificate(
        subject=instance.subject,
        public_key=pki.instance.key.public_key(),
        issuer=pki.zonal.certificate,
        issuer_key=pki.zonal.key,
        not_before=instance.not_valid_before_utc,
        not_after=instance.not_valid_after_utc,
        ca=True,
        path_length=0,
        key_usage=key_usage(digital_signature=True),
    )
    bundle = [*pki.cabundle[:3], CertifiedKey(pki.instance.key, bad_instance).der]
    assert (
        _code(synthetic_verifier, factory, _document(factory, factory.leaf, bundle))
        == "chain.invalid"
    )


def test_malformed_certificate(factory: DocumentFactory, synthetic_verifier: Verifier) -> None:
    bundle = [*factory.pki.cabundle[:3], b"\x30\x03\x02\x01\x00"]
    assert (
        _code(synthetic_verifier, factory, _document(factory, factory.leaf, bundle))
        == "chain.certificate-malformed"
    )


class TestCache:
    def test_warm_path_skips_chain_work(
        self,
        factory: DocumentFactory,
        synthetic_verifier: Verifier,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        data = factory.document()
        policy = _policy(factory)
        synthetic_verifier.verify(data, policy=policy, at=factory.timestamp)
        assert synthetic_verifier.cache_info().misses == 1

        # Every chain validation, fast path or engine, goes through _validate_cold.
        calls: list[object] = []
        original = ChainValidator._validate_cold

        def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(ChainValidator, "_validate_cold", counting)
        # A different document from the same leaf and bundle: same chain, new signature.
        for i in range(3):
            other = factory.document(nonce=bytes([i]))
            synthetic_verifier.verify(
                other, policy=policy, at=factory.timestamp + timedelta(minutes=i)
            )
        assert calls == []
        info = synthetic_verifier.cache_info()
        assert (info.hits, info.misses, info.size) == (3, 1, 1)

    def test_cached_chain_still_expires(
        self, factory: DocumentFactory, synthetic_verifier: Verifier
    ) -> None:
        data = factory.document()
        policy = _policy(factory)
        synthetic_verifier.verify(data, policy=policy, at=factory.timestamp)
        with pytest.raises(ChainError) as info:
            synthetic_verifier.verify(
                data, policy=policy, at=factory.not_after + timedelta(microseconds=1)
            )
        assert info.value.code == "chain.expired"
        with pytest.raises(ChainError) as early:
            synthetic_verifier.verify(
                data, policy=policy, at=factory.not_before - timedelta(microseconds=1)
            )
        assert early.value.code == "chain.not-yet-valid"
        assert synthetic_verifier.cache_info().hits == 0

    def test_new_instance_starts_cold(
        self, factory: DocumentFactory, synthetic_verifier: Verifier
    ) -> None:
        synthetic_verifier.verify(factory.document(), policy=_policy(factory), at=factory.timestamp)
        fresh = Verifier(roots=synthetic_verifier.roots)
        assert fresh.cache_info().size == 0

    def test_bounded(self, factory: DocumentFactory) -> None:
        verifier = Verifier(roots=[factory.pki.root.certificate], cache_size=2)
        for i in range(4):
            leaf = _leaf(factory, f"lru-{i}")
            verifier.verify(_document(factory, leaf), policy=_policy(factory), at=factory.timestamp)
        assert verifier.cache_info().size == 2

    def test_failed_chains_are_not_cached(self, factory: DocumentFactory) -> None:
        verifier = Verifier.aws()
        for _ in range(2):
            with pytest.raises(ChainError):
                verifier.verify(factory.document(), policy=_policy(factory), at=factory.timestamp)
        assert verifier.cache_info().size == 0

    def test_cache_disabled(self, factory: DocumentFactory) -> None:
        verifier = Verifier(roots=[factory.pki.root.certificate], cache_size=0)
        for _ in range(2):
            verifier.verify(factory.document(), policy=_policy(factory), at=factory.timestamp)
        assert verifier.cache_info() == type(verifier.cache_info())(0, 2, 0, 0)
