"""Generated chains: the fast path never accepts what the engine rejects.

`test_chain_crosscheck.py` compares the two paths of `ChainValidator` on every chain we have;
this file generates chains instead (names in every string encoding, broken ones included;
extensions; validity windows; key types and signature hashes) and checks the same property on
each: if the fast path accepts, the engine accepts the same path. Names are written as raw DER
(cryptography's builder cannot write an invalid UTF8String), so each certificate is built with
a placeholder name, then its TBS is patched and signed again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from attestation import ChainError
from attestation._chain import ChainValidator, VerifiedChain
from attestation.builder import derive_key, encode_payload, key_usage, sign_payload
from tests.attestation.test_chain_crosscheck import _agree, _both

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
_SEED = 1010
_CN = bytes.fromhex("0603550403")  # OID 2.5.4.3 commonName, DER

# --- raw DER ------------------------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _children(der: bytes) -> list[bytes]:
    """The DER elements inside the SEQUENCE `der`, each with its own tag and length."""
    out = []
    pos = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    while pos < len(der):
        head = 2
        size = der[pos + 1]
        if size & 0x80:
            head += size & 0x7F
            size = int.from_bytes(der[pos + 2 : pos + head], "big")
        out.append(der[pos : pos + head + size])
        pos += head + size
    return out


def raw_name(tag: int, value: bytes) -> bytes:
    """A Name of one RDN: commonName with a value of any tag and content (DER)."""
    return _der(0x30, _der(0x31, _der(0x30, _CN + _der(tag, value))))


#: Names the engine decodes, and names it refuses to decode (the fast path must decline them).
GOOD_NAMES = {
    "utf8": raw_name(0x0C, "Nitro CA é".encode()),
    "printable": raw_name(0x13, b"Nitro CA"),
    "ia5": raw_name(0x16, b"nitro@ca"),
    "teletex-7bit": raw_name(0x14, b"Nitro CA"),
    "bmp": raw_name(0x1E, "Nitro".encode("utf-16-be")),
}
BAD_NAMES = {
    "utf8-invalid": raw_name(0x0C, b"Nitro \xff CA"),
    "utf8-overlong": raw_name(0x0C, b"Nitro \xc0\xaf CA"),
    "utf8-lone-surrogate": raw_name(0x0C, b"Nitro \xed\xa0\x80 CA"),
    "utf8-truncated": raw_name(0x0C, b"Nitro \xe2\x82"),
    "teletex-8bit": raw_name(0x14, b"Nitro \xe9t\xe9"),
    "sequence-value": raw_name(0x30, _der(0x02, b"\x01")),
    "bmp-lone-surrogate": raw_name(0x1E, b"\xd8\x00\x00a"),
}


@dataclass(frozen=True)
class Spec:
    """One certificate of a generated chain (the issuer is the next one up)."""

    name: bytes
    key: ec.EllipticCurvePrivateKey
    ca: bool | None
    path_length: int | None
    usage: x509.KeyUsage | None
    usage_critical: bool
    basic_critical: bool
    extras: tuple[tuple[x509.ExtensionType, bool], ...]
    not_before: datetime
    not_after: datetime
    hash: hashes.SHA256 | hashes.SHA384


_PLACEHOLDER = "placeholder-{:02d}"


def _placeholder(index: int) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _PLACEHOLDER.format(index))])


def _issue(
    spec: Spec,
    index: int,
    issuer_name: bytes,
    issuer_index: int,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> bytes:
    """`spec` signed by `issuer_key`, with its subject and issuer replaced by raw DER names."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_placeholder(index))
        .issuer_name(_placeholder(issuer_index))
        .public_key(spec.key.public_key())
        .serial_number(1000 + index)
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
    )
    if spec.ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=spec.ca, path_length=spec.path_length), spec.basic_critical
        )
    if spec.usage is not None:
        builder = builder.add_extension(spec.usage, spec.usage_critical)
    for extension, critical in spec.extras:
        builder = builder.add_extension(extension, critical)
    draft = builder.sign(issuer_key, spec.hash, ecdsa_deterministic=True)
    _, algorithm, _ = _children(draft.public_bytes(Encoding.DER))
    tbs = draft.tbs_certificate_bytes
    for placeholder, name in (
        (_placeholder(index).public_bytes(), spec.name),
        (_placeholder(issuer_index).public_bytes(), issuer_name),
    ):
        assert tbs.count(placeholder) == 1 or index == issuer_index
        tbs = tbs.replace(placeholder, name)
    tbs = _der(0x30, b"".join(_children(tbs)))
    signature = issuer_key.sign(tbs, ec.ECDSA(spec.hash, deterministic_signing=True))
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))


def build_chain(leaf: Spec, cas: list[Spec]) -> tuple[x509.Certificate, bytes, tuple[bytes, ...]]:
    """(root, leaf DER, bundle root side first) for `leaf` under `cas` (root last)."""
    root_spec = cas[-1]
    root_index = len(cas)
    root = x509.load_der_x509_certificate(
        _issue(root_spec, root_index, root_spec.name, root_index, root_spec.key)
    )
    ders = []
    chain = [leaf, *cas]
    for index, spec in enumerate(chain[:-1]):
        parent = chain[index + 1]
        ders.append(_issue(spec, index, parent.name, index + 1, parent.key))
    return root, ders[0], tuple(reversed(ders[1:]))


# --- strategies ---------------------------------------------------------------------------

_KEYS = {
    "p384": [derive_key(_SEED, f"k{i}") for i in range(5)],
    "p256": [derive_key(_SEED, f"k{i}", curve=ec.SECP256R1()) for i in range(5)],
}
_NAMES = {**GOOD_NAMES, **BAD_NAMES}
_EXTRAS: dict[str, tuple[tuple[x509.ExtensionType, bool], ...]] = {
    "none": (),
    "eku": ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),),
    "unknown-critical": (
        (
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"\x05\x00"),
            True,
        ),
    ),
    "name-constraints": ((x509.NameConstraints([x509.DNSName("aws")], None), True),),
}


def _valid(index: int, *, ca: bool, name: bytes) -> Spec:
    """The AWS shape: P-384, ecdsa-with-SHA384, CA extensions critical, valid at `AT`."""
    return Spec(
        name=name,
        key=_KEYS["p384"][index],
        ca=ca,
        path_length=None,
        usage=key_usage(key_cert_sign=True, crl_sign=True)
        if ca
        else key_usage(digital_signature=True),
        usage_critical=ca,
        basic_critical=True,
        extras=(),
        not_before=AT - timedelta(days=1 + index),
        not_after=AT + timedelta(days=1 + index),
        hash=hashes.SHA384(),
    )


ROOT = _valid(4, ca=True, name=raw_name(0x0C, b"aws.nitro-enclaves"))


def _name_case(position: str, name: bytes) -> tuple[x509.Certificate, bytes, tuple[bytes, ...]]:
    """A valid two-intermediate chain with `name` as the leaf's or a CA's subject."""
    names = {
        "leaf": GOOD_NAMES["utf8"],
        "zonal": raw_name(0x13, b"zonal"),
        "instance": raw_name(0x0C, b"i"),
    }
    names[position] = name
    return build_chain(
        _valid(0, ca=False, name=names["leaf"]),
        [_valid(1, ca=True, name=names["instance"]), _valid(2, ca=True, name=names["zonal"]), ROOT],
    )


def signed_document(position: str, kind: str, pcrs: dict[int, bytes]) -> tuple[bytes, bytes]:
    """(document, root PEM): signed at `AT` over `_name_case(position, BAD_NAMES[kind])`."""
    root, leaf_der, bundle = _name_case(position, BAD_NAMES[kind])
    payload = encode_payload(
        module_id="i-0-enc0",
        timestamp_ms=int(AT.timestamp() * 1000),
        pcrs=pcrs,
        certificate=leaf_der,
        cabundle=[root.public_bytes(Encoding.DER), *bundle],
    )
    return sign_payload(payload, _KEYS["p384"][0]), root.public_bytes(Encoding.PEM)


def _check(
    chain: tuple[x509.Certificate, bytes, tuple[bytes, ...]],
) -> tuple[VerifiedChain | None, VerifiedChain | ChainError]:
    root, leaf, bundle = chain
    validator = ChainValidator([root], cache_size=0)
    try:
        fast, reference = _both(validator, leaf, bundle, AT)
    except ChainError as exc:  # refused when parsed: neither path runs
        assert exc.code == "chain.certificate-malformed"
        return None, exc
    _agree(fast, reference)
    return fast, reference


def test_the_aws_shape_takes_the_fast_path() -> None:
    fast, reference = _check(_name_case("leaf", GOOD_NAMES["utf8"]))
    assert fast is not None
    assert isinstance(reference, VerifiedChain)


@pytest.mark.parametrize("position", ["leaf", "instance", "zonal"])
@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
def test_undecodable_names_are_refused(kind: str, position: str) -> None:
    chain = _name_case(position, BAD_NAMES[kind])
    fast, _ = _check(chain)
    assert fast is None
    root, leaf, bundle = chain
    with pytest.raises(ChainError) as caught:
        ChainValidator([root]).validate(leaf, bundle, AT)
    assert caught.value.code == "chain.certificate-malformed"
    assert "ParseError" not in caught.value.reason


@pytest.mark.parametrize("kind", sorted(GOOD_NAMES))
def test_decodable_names_verify(kind: str) -> None:
    root, leaf, bundle = _name_case("instance", GOOD_NAMES[kind])
    chain = ChainValidator([root]).validate(leaf, bundle, AT)
    assert chain.certificates[-1] == root


def _changes(ca: bool) -> dict[str, list[object]]:
    """Per field of a `Spec`, the values a generated chain may put there instead of the AWS one."""
    days = [timedelta(days=d) for d in (-30, -1, 0, 1, 30)]
    return {
        "name": [_NAMES[k] for k in sorted(_NAMES)],
        "key": [_KEYS["p256"][0]],
        "ca": [None, not ca],
        "path_length": [0, 1, 3] if ca else [],
        "usage": [key_usage(crl_sign=True), key_usage(digital_signature=True), None]
        if ca
        else [key_usage(key_cert_sign=True), key_usage(), None],
        "usage_critical": [not ca],
        "basic_critical": [False],
        "extras": [_EXTRAS[k] for k in sorted(_EXTRAS)],
        "not_before": [AT + d for d in days],
        "not_after": [AT + d for d in days],
        "hash": [hashes.SHA256()],
    }


@st.composite
def chains(draw: st.DrawFn) -> tuple[x509.Certificate, bytes, tuple[bytes, ...]]:
    """The AWS shape (1 to 3 intermediates) with up to three fields changed anywhere in it.

    Few changes per chain keep a good share of chains valid, so that the fast path accepts
    often enough for the property to mean something (see the test's statistics).
    """
    depth = draw(st.integers(min_value=1, max_value=3))
    chain = [
        _valid(0, ca=False, name=GOOD_NAMES["printable"]),
        *(_valid(i, ca=True, name=raw_name(0x0C, f"ca-{i}".encode())) for i in range(1, depth + 1)),
    ]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        index = draw(st.integers(min_value=0, max_value=depth))
        spec = chain[index]
        options = {k: v for k, v in _changes(spec.ca is True or index > 0).items() if v}
        field = draw(st.sampled_from(sorted(options)))
        value: Any = draw(st.sampled_from(options[field]))
        if field == "key":
            value = _KEYS["p256"][index]
        spec = replace(spec, **{field: value})
        if spec.not_after <= spec.not_before or (
            spec.ca is not True and spec.path_length is not None
        ):
            continue  # not expressible in a certificate
        chain[index] = spec
    return build_chain(chain[0], [*chain[1:], ROOT])


# Building and checking a chain signs and verifies about ten times: keep the count modest.
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(chains())
@example(_name_case("leaf", BAD_NAMES["teletex-8bit"]))
@example(_name_case("instance", BAD_NAMES["sequence-value"]))
def test_generated_chains_never_pass_only_the_fast_path(
    chain: tuple[x509.Certificate, bytes, tuple[bytes, ...]],
) -> None:
    fast, reference = _check(chain)
    event("fast path accepted" if fast is not None else "fast path declined")
    event(f"engine: {reference.code if isinstance(reference, ChainError) else 'accepted'}")
