"""The fast document decoder (`_payload_fast`) against the strict one (`_cbor.decode`).

`AttestationDocument.parse` reads the envelope and the payload with `fast_envelope` /
`fast_payload` and falls back to `_cbor.decode` when they decline. Two properties keep that
honest, checked on the real documents, every corpus document and generated mutations:

- the fast decoder never accepts what the strict one refuses, and when it accepts it returns
  exactly what the strict one returns (same types, values and key order), so a fast-path bug
  cannot change any verification result;
- it accepts every real document and every corpus document of the NSM's shape, so it is the path
  that actually runs.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import AttestationDocument, MalformedDocument
from attestation._cbor import CborError, decode
from attestation._payload_fast import fast_envelope, fast_payload, nsm_layout
from attestation.builder import Map, encode
from tests.attestation.conftest import requires_real
from vectors import corpus

_REAL = corpus.real_documents(kind=None)
_CORPUS = corpus.cases()


def _same(a: object, b: object) -> bool:
    """Equal with the same types all the way down (True == 1 and b"" != "" are not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(
            _same(k, j) and _same(a[k], b[j]) for k, j in zip(a, b, strict=True)
        )
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _strict(data: bytes) -> object:
    try:
        return decode(data)
    except CborError as exc:
        return exc


def _agree(fast: Callable[[bytes], object | None], data: bytes) -> bool:
    """Check the property for one fast decoder on `data`; True if it accepted."""
    result = fast(data)
    if result is None:
        return False
    strict = _strict(data)
    assert not isinstance(strict, CborError), f"{fast.__name__} accepted, strict said {strict}"
    assert _same(result, strict)
    return True


def _agree_envelope(body: bytes) -> bool:
    return _agree(fast_envelope, body)


def _agree_payload(payload: bytes) -> bool:
    return _agree(fast_payload, payload)


def _payload_of(document: bytes) -> bytes:
    body = document[1:] if document[:1] == b"\xd2" else document
    envelope = decode(body)
    assert isinstance(envelope, list)
    payload = envelope[2]
    assert isinstance(payload, bytes)
    return payload


@requires_real
@pytest.mark.parametrize("document", _REAL, ids=lambda d: d.name)
def test_real_documents_take_the_fast_path(document: corpus.RealDocument) -> None:
    assert _agree_envelope(document.data)
    assert _agree_payload(_payload_of(document.data))


def test_corpus_documents_agree() -> None:
    accepted = 0
    for case in _CORPUS:
        data = case.document()
        body = data[1:] if data[:1] == b"\xd2" else data
        _agree_envelope(body)
        envelope = _strict(body)
        if isinstance(envelope, list) and len(envelope) == 4 and type(envelope[2]) is bytes:
            accepted += _agree_payload(envelope[2])
    # Most corpus cases change one thing outside the payload's encoding: the fast path reads them.
    assert accepted > len(_CORPUS) // 2


_SEEDS = [bytes(d.data) for d in _REAL] or [case.document() for case in _CORPUS[:8]]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_documents_agree(data: st.DataObject) -> None:
    """Byte flips, insertions, deletions and truncations of real payloads and envelopes."""
    document = data.draw(st.sampled_from(_SEEDS))
    target = data.draw(st.sampled_from(["envelope", "payload"]))
    blob = bytearray(document if target == "envelope" else _payload_of(document))
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = rng.randrange(len(blob)) if blob else 0
        action = rng.choice(["flip", "set", "insert", "delete", "truncate"])
        if action == "flip" and blob:
            blob[position] ^= 1 << rng.randrange(8)
        elif action == "set" and blob:
            blob[position] = rng.choice(
                [
                    0x00,
                    0x17,
                    0x18,
                    0x1B,
                    0x40,
                    0x58,
                    0x59,
                    0x5F,
                    0x60,
                    0x78,
                    0x7F,
                    0x80,
                    0x9F,
                    0xA0,
                    0xB8,
                    0xBF,
                    0xC0,
                    0xD2,
                    0xF4,
                    0xF5,
                    0xF6,
                    0xF7,
                    0xFF,
                    rng.randrange(256),
                ]
            )
        elif action == "insert":
            blob[position:position] = bytes([rng.randrange(256)])
        elif action == "delete" and blob:
            del blob[position]
        elif action == "truncate":
            del blob[position:]
    if target == "envelope":
        _agree_envelope(bytes(blob))
    else:
        _agree_payload(bytes(blob))


_KEYS = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "nitrotpm_pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
    "foo",
    1,
]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=300),
    st.text(max_size=30),
    st.lists(st.binary(max_size=40), max_size=5),
    st.dictionaries(st.integers(0, 40), st.binary(max_size=70), max_size=26),
    st.dictionaries(st.text(max_size=3), st.binary(max_size=4), max_size=3),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=11),
    st.booleans(),
)
def test_generated_payloads_agree(entries: list[tuple[object, object]], indefinite: bool) -> None:
    """Maps with the payload's keys (and others, and duplicates) and values of every type."""
    payload = encode(Map(tuple(entries), indefinite=indefinite))
    _agree_payload(payload)
    _agree_payload(payload + b"\x00")  # trailing bytes are the strict decoder's to refuse


_SHAPED = {
    "module_id": st.text(max_size=40),
    "digest": st.sampled_from(["SHA384", "SHA256", ""]),
    "timestamp": st.integers(0, 2**64 - 1),
    "pcrs": st.dictionaries(st.integers(0, 31), st.binary(min_size=30, max_size=66), max_size=33),
    "nitrotpm_pcrs": st.dictionaries(st.integers(0, 25), st.binary(max_size=64), max_size=26),
    "certificate": st.binary(max_size=1100),
    "cabundle": st.lists(st.binary(max_size=300), max_size=25),
    "public_key": st.none() | st.binary(max_size=300),
    "user_data": st.none() | st.binary(max_size=30),
    "nonce": st.none() | st.binary(max_size=30),
}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_payload_shaped_maps_agree(data: st.DataObject) -> None:
    """Maps of the NSM's shape with random sizes, key subsets and orders: mostly accepted."""
    keys = data.draw(st.permutations(list(_SHAPED)))
    keys = keys[: data.draw(st.integers(0, len(keys)))]
    entries = tuple((key, data.draw(_SHAPED[key])) for key in keys)
    payload = encode(Map(entries, indefinite=data.draw(st.booleans())))
    _agree_payload(payload)


# --- the NSM layout (`nsm_layout` + `AttestationDocument._from_layout`) -----------------------


def _outcome(data: bytes) -> object:
    try:
        doc = AttestationDocument.parse(data)
    except MalformedDocument as exc:
        return (type(exc), exc.code)
    return (
        doc,
        list(doc.pcrs.items()),
        [type(getattr(doc, f.name)) for f in dataclasses.fields(doc)],
    )


def _parse_both(data: bytes) -> tuple[object, object]:
    """(parse as it runs, parse with the layout path switched off): the general route."""
    fast = _outcome(data)
    with mock.patch("attestation.document.nsm_layout", lambda payload: None):
        general = _outcome(data)
    return fast, general


@requires_real
@pytest.mark.parametrize("document", _REAL, ids=lambda d: d.name)
def test_real_documents_take_the_layout_path(document: corpus.RealDocument) -> None:
    layout = nsm_layout(_payload_of(document.data))
    assert layout is not None
    fast, general = _parse_both(document.data)
    assert fast == general


def test_corpus_documents_parse_the_same_either_way() -> None:
    taken = 0
    for case in _CORPUS:
        data = case.document()
        fast, general = _parse_both(data)
        assert fast == general, case.id
        body = data[1:] if data[:1] == b"\xd2" else data
        envelope = _strict(body)
        if isinstance(envelope, list) and len(envelope) == 4 and type(envelope[2]) is bytes:
            taken += nsm_layout(envelope[2]) is not None
    assert taken > len(_CORPUS) // 2


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_documents_parse_the_same_either_way(data: st.DataObject) -> None:
    """Byte flips, insertions, deletions of real documents, mostly inside the payload."""
    blob = bytearray(data.draw(st.sampled_from(_SEEDS)))
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    for _ in range(data.draw(st.integers(1, 3))):
        position = rng.randrange(len(blob))
        action = rng.choice(["flip", "set", "insert", "delete"])
        if action == "flip":
            blob[position] ^= 1 << rng.randrange(8)
        elif action == "set":
            blob[position] = rng.choice([0x00, 0x17, 0x18, 0x1B, 0x58, 0x59, 0xF6, 0xFF])
        elif action == "insert":
            blob[position:position] = bytes([rng.randrange(256)])
        else:
            del blob[position]
    fast, general = _parse_both(bytes(blob))
    assert fast == general


def _layout_document(rng: random.Random) -> bytes:
    """A document in the NSM's key order, values mostly valid, often at a rule's edge."""

    def size(valid: list[int], edges: list[int]) -> int:
        return rng.choice(valid) if rng.random() < 0.95 else rng.choice(edges)

    count = size([16, 24, 1], [0, 25, 32])
    pcr_size = size([32, 48, 64], [0, 31, 33, 65])
    pcrs = {
        index: bytes(rng.randrange(256) for _ in range(pcr_size if rng.random() < 0.95 else 48))
        for index in rng.sample(range(26), min(count, 26))
    }
    entries: list[tuple[object, object]] = [
        ("module_id", "i-0abc-enc0def" if rng.random() < 0.9 else rng.choice(["", "é", "x" * 30])),
        ("digest", "SHA384" if rng.random() < 0.9 else "SHA256"),
        ("timestamp", size([1_700_000_000_000, 1], [0, 2**64 - 1, 253402300800000])),
        ("nitrotpm_pcrs" if rng.random() < 0.2 else "pcrs", pcrs),
        ("certificate", bytes(size([600, 1024, 1], [0, 1025]))),
        ("cabundle", [bytes(size([500, 1024], [0, 1025])) for _ in range(size([4, 1], [0]))]),
    ]
    for key in ("public_key", "user_data", "nonce"):
        entries.append((key, rng.choice([None, b"", bytes(size([32, 1024], [1025]))])))
    payload = encode(Map(tuple(entries), indefinite=rng.random() < 0.3))
    return encode([b"\xa1\x01\x38\x22", Map(()), payload, bytes(96)])


def test_layout_documents_parse_the_same_either_way() -> None:
    """The layout path's own edges (sizes, ranges, register maps) against the general route."""
    rng = random.Random(1)
    taken = 0
    for _ in range(600):
        document = _layout_document(rng)
        fast, general = _parse_both(document)
        assert fast == general
        taken += isinstance(fast, tuple) and isinstance(fast[0], AttestationDocument)
    assert 100 < taken < 600  # both outcomes are exercised
