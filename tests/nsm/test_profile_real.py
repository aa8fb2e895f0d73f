"""The emulator's 2026 profile against the real 2026 enclave documents, field by field and byte
encoding by byte encoding.

Each real document is reduced to a skeleton: every CBOR head (major type, width, and the value
where it is not a key, a name, a time or a random value) of the envelope and the payload, and every
DER element (tag, and OIDs, booleans and small integers by value) of each certificate, descending
into extension values. An emulator document made with the same region, time and field sizes must
have the same skeleton; what may differ is exactly: key material and signatures, names (module_id,
CNs, CRL URLs), times, and random values (serial numbers, within the real lengths).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509

from attestation._chain_fast import _tlv
from nsm._protocol import decode_response, encode_request
from nsm.emulator import Emulator
from nsm.models import Attestation, AttestationResponse
from vectors.corpus import REAL_DIR, RealDocument, real_documents

pytestmark = pytest.mark.skipif(
    not real_documents(kind="nitro-enclave"), reason=f"no real documents at {REAL_DIR}"
)

MODULE_ID = re.compile(r"i-[0-9a-f]{17}-enc[0-9a-f]{16}")
# DER tags whose contents are names, times, keys or signatures: compared by tag only.
_NAME_OR_TIME = {0x0C, 0x13, 0x16, 0x17, 0x18, 0x86}
_CONSTRUCTED = {0x30, 0x31, 0xA0, 0xA3}


def _real_2026() -> list[RealDocument]:
    return [v for v in real_documents(kind="nitro-enclave") if v.name.startswith("2026-")]


def cbor_skeleton(data: bytes) -> list[object]:
    """Every CBOR head of `data`, in order; byte strings longer than 255 by head width only."""
    out: list[object] = []
    pos = 0
    while pos < len(data):
        head = data[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
        value = int.from_bytes(data[pos : pos + width], "big") if width else info
        pos += width
        if major == 2:
            out.append(("bstr", info, value if value < 256 else None))
            pos += value
        elif major == 3:
            text = data[pos : pos + value].decode()
            out.append(("tstr", info, "<module_id>" if MODULE_ID.fullmatch(text) else text))
            pos += value
        elif major == 0:
            # the 8-byte timestamp by width; small values (PCR indices) exactly
            out.append(("uint", info, value if width == 0 else None))
        else:
            out.append((major, info))  # arrays, maps (31: indefinite), null, break
    return out


def _one_element(content: bytes) -> bool:
    try:
        return _tlv(content, 0)[2] == len(content)
    except (ValueError, IndexError):
        return False


def der_skeleton(der: bytes) -> list[object]:
    """Every DER element of `der`: tag, and OIDs, booleans and one-byte integers by value."""
    out: list[object] = []
    pos = 0
    while pos < len(der):
        tag, start, end = _tlv(der, pos)
        content = der[start:end]
        if tag in _CONSTRUCTED:
            out.append((tag, der_skeleton(content)))
        elif tag == 0x80 or (tag == 0x04 and len(content) == 20):
            out.append((tag, len(content)))  # a key identifier: 20 random-looking bytes
        elif tag == 0x04 and _one_element(content):
            out.append((tag, der_skeleton(content)))  # an extension value: DER inside
        elif tag in (0x06, 0x01) or (tag == 0x02 and len(content) == 1):
            out.append((tag, content.hex()))
        elif tag == 0x03 and len(content) <= 4:
            out.append((tag, content.hex()))  # keyUsage bits
        else:
            assert tag in _NAME_OR_TIME | {0x02, 0x03, 0x04, 0x05}, hex(tag)
            out.append(tag)  # names, times, serials, keys, signatures
        pos = end
    return out


def _emulated_like(real: RealDocument, profile: str = "2026") -> tuple[bytes, Emulator]:
    """An emulator document with the real one's region, time and field sizes."""
    payload = cbor2.loads(cbor2.loads(real.data)[2])
    when = datetime.fromtimestamp(payload["timestamp"] / 1000, UTC)
    leaf = x509.load_der_x509_certificate(payload["certificate"])
    region = leaf.subject.rfc4514_string().split(".")[1]
    emulator = Emulator(seed=2026, region=region, profile=profile, clock=lambda: when)
    fields = {
        name: None if payload[name] is None else bytes(len(payload[name]))
        for name in ("user_data", "nonce", "public_key")
    }
    answer = decode_response(emulator.handle(encode_request(Attestation(**fields))))
    assert isinstance(answer, AttestationResponse)
    return answer.document, emulator


@pytest.fixture(params=_real_2026(), ids=lambda v: v.name[:10])
def pair(request: pytest.FixtureRequest) -> tuple[bytes, bytes]:
    real: RealDocument = request.param
    emulated, _ = _emulated_like(real)
    return real.data, emulated


def test_there_are_real_2026_documents() -> None:
    assert len(_real_2026()) >= 2


def test_envelope_and_payload_encode_alike(pair: tuple[bytes, bytes]) -> None:
    real, emulated = pair
    assert cbor_skeleton(real[:4]) == cbor_skeleton(emulated[:4])
    real_env, emu_env = cbor2.loads(real), cbor2.loads(emulated)
    assert real_env[0] == emu_env[0] == bytes.fromhex("a1013822")
    assert real_env[1] == emu_env[1] == {}
    assert len(real_env[3]) == len(emu_env[3]) == 96
    real_payload, emu_payload = real_env[2], emu_env[2]
    assert cbor_skeleton(real_payload) == cbor_skeleton(emu_payload)
    assert real_payload[0] == emu_payload[0] == 0xBF  # 2026: an indefinite-length map


def test_certificates_encode_alike(pair: tuple[bytes, bytes]) -> None:
    real, emulated = pair
    real_payload = cbor2.loads(cbor2.loads(real)[2])
    emu_payload = cbor2.loads(cbor2.loads(emulated)[2])
    real_chain = [*real_payload["cabundle"], real_payload["certificate"]]
    emu_chain = [*emu_payload["cabundle"], emu_payload["certificate"]]
    assert len(real_chain) == len(emu_chain) == 5
    for position, (real_der, emu_der) in enumerate(zip(real_chain, emu_chain, strict=True)):
        assert der_skeleton(real_der) == der_skeleton(emu_der), f"certificate {position}"


def _serial_length(cert: x509.Certificate) -> int:
    return (cert.serial_number.bit_length() + 8) // 8  # DER: a leading 00 when the top bit is set


def test_times_serials_and_ids_follow_the_real_rules(pair: tuple[bytes, bytes]) -> None:
    real, emulated = pair
    for document in (real, emulated):
        payload = cbor2.loads(cbor2.loads(document)[2])
        chain = [x509.load_der_x509_certificate(d) for d in payload["cabundle"]]
        leaf = x509.load_der_x509_certificate(payload["certificate"])
        root, regional, zonal, instance = chain
        # The root: 2019-10-28 13:28:05 to 2049-10-28 14:28:05, both UTCTime (the skeleton).
        assert root.not_valid_before_utc == datetime(2019, 10, 28, 13, 28, 5, tzinfo=UTC)
        assert root.not_valid_after_utc == datetime(2049, 10, 28, 14, 28, 5, tzinfo=UTC)
        for ca in (root, regional, zonal):
            assert _serial_length(ca) in (16, 17)
        assert _serial_length(instance) in (20, 21)  # 160 random bits
        assert instance.not_valid_after_utc - instance.not_valid_before_utc == timedelta(days=1)
        # The leaf: serial = enclave id, 4 zero bytes, issue time; valid issue-3 s .. issue+3 h.
        enclave = payload["module_id"].rpartition("-enc")[2]
        serial = leaf.serial_number.to_bytes(16, "big")
        assert serial[:8].hex() == enclave
        assert serial[8:12] == bytes(4)
        issued = datetime.fromtimestamp(int.from_bytes(serial[12:], "big"), UTC)
        assert leaf.not_valid_before_utc == issued - timedelta(seconds=3)
        assert leaf.not_valid_after_utc == issued + timedelta(hours=3)
        # The enclave id: launch time in ms (before the document), then 16 random bits.
        assert MODULE_ID.fullmatch(payload["module_id"])
        launch = datetime.fromtimestamp(int(enclave[:12], 16) / 1000, UTC)
        stamp = datetime.fromtimestamp(payload["timestamp"] / 1000, UTC)
        assert stamp - timedelta(days=30) < launch <= stamp


def _same_shape(real: bytes, emulated: bytes) -> bool:
    real_env, emu_env = cbor2.loads(real), cbor2.loads(emulated)
    if cbor_skeleton(real_env[2]) != cbor_skeleton(emu_env[2]):
        return False
    real_payload, emu_payload = cbor2.loads(real_env[2]), cbor2.loads(emu_env[2])
    real_chain = [*real_payload["cabundle"], real_payload["certificate"]]
    emu_chain = [*emu_payload["cabundle"], emu_payload["certificate"]]
    if len(real_chain) != len(emu_chain):
        return False
    if any(der_skeleton(a) != der_skeleton(b) for a, b in zip(real_chain, emu_chain, strict=True)):
        return False
    real_leaf, emu_leaf = (x509.load_der_x509_certificate(c[-1]) for c in (real_chain, emu_chain))
    return bool(
        real_leaf.not_valid_after_utc - real_leaf.not_valid_before_utc
        == emu_leaf.not_valid_after_utc - emu_leaf.not_valid_before_utc
    )


def _era(name: str) -> str:
    # The switches as the real documents date them: leaf 3:00:03 between 2021-10 and 2022-07,
    # instance CA key identifiers between 2024-06 and 2024-07, the indefinite map between
    # 2025-04 and 2026-01.
    day = name[:10]
    if day < "2022":
        return "2021"
    if day < "2024-07":
        return "2022"
    return "2024" if day < "2026" else "2026"


def test_every_real_document_matches_its_eras_profile_only() -> None:
    """All real enclave documents, 2021 to 2026: each has the shape of exactly one profile."""
    reals = real_documents(kind="nitro-enclave")
    assert len(reals) >= 60
    for real in reals:
        matching = [
            name
            for name in ("2021", "2022", "2024", "2026")
            if _same_shape(real.data, _emulated_like(real, name)[0])
        ]
        assert matching == [_era(real.name)], real.name


def test_serials_have_the_real_length_spread() -> None:
    """Random 128-bit CA and 160-bit instance CA serials: DER needs a leading 00 for about half
    of them, so 16 or 17 bytes, and 20 or 21 (past RFC 5280's 20 octets, as AWS's are)."""
    pkis = [Emulator(seed=seed, profile="2026").pki for seed in range(24)]
    assert {_serial_length(pki.regional.certificate) for pki in pkis} == {16, 17}
    assert {_serial_length(pki.instance.certificate) for pki in pkis} == {20, 21}
    for pki in pkis:  # the hand-made long serials are signed like any other certificate
        pki.instance.certificate.verify_directly_issued_by(pki.zonal.certificate)


def _lifetime(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def test_ca_lifetimes_lie_within_the_real_ones() -> None:
    """Regional and zonal CAs: the emulator's lifetimes against every real enclave chain's.

    docs/fidelity.md quotes these ranges; real zonal CAs vary by half a day, so the emulator
    takes the shortest (its certificates expire first, the stricter case for a verifier).
    """
    real = [
        [x509.load_der_x509_certificate(d) for d in cbor2.loads(cbor2.loads(v.data)[2])["cabundle"]]
        for v in real_documents(kind="nitro-enclave")
    ]
    pki = Emulator(seed=7, profile="2026").pki
    for position, emulated in ((1, pki.regional.certificate), (2, pki.zonal.certificate)):
        lifetimes = [_lifetime(chain[position]) for chain in real]
        assert min(lifetimes) <= _lifetime(emulated) <= max(lifetimes), position
    zonal = sorted(_lifetime(chain[2]) for chain in real)
    hour = timedelta(hours=1)
    # The ranges docs/fidelity.md states, to the hour: 5 d 13 h to 6 d 1 h.
    assert abs(zonal[0] - timedelta(days=5, hours=13)) < hour
    assert abs(zonal[-1] - timedelta(days=6, hours=1)) < hour
