"""Parse rules of `AttestationDocument.parse`: envelope, CBOR strictness, payload fields."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from attestation import AttestationDocument, MalformedDocument
from attestation._cbor import CborError, decode
from attestation.builder import encode_payload, encode_sign1
from attestation.document import MAX_DOCUMENT_SIZE
from attestation.testing import DocumentFactory

SIG = bytes(range(96))


def _fields(factory: DocumentFactory) -> dict[str, Any]:
    return {
        "module_id": factory.module_id,
        "digest": "SHA384",
        "timestamp": 1_700_000_000_000,
        "pcrs": {i: bytes([i + 1]) * 48 for i in range(16)},
        "certificate": factory.leaf.der,
        "cabundle": factory.pki.cabundle,
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }


def _doc(payload: bytes, **kwargs: Any) -> bytes:
    kwargs.setdefault("signature", SIG)
    return encode_sign1(payload=payload, **kwargs)


def _parse_fields(fields: dict[Any, Any]) -> AttestationDocument:
    return AttestationDocument.parse(_doc(cbor2.dumps(fields)))


def _code(data: bytes) -> str:
    with pytest.raises(MalformedDocument) as info:
        AttestationDocument.parse(data)
    return info.value.code


def _field_code(fields: dict[Any, Any]) -> str:
    return _code(_doc(cbor2.dumps(fields)))


@pytest.fixture
def good(factory: DocumentFactory) -> dict[str, Any]:
    return _fields(factory)


class TestEnvelope:
    def test_builder_document_parses(self, factory: DocumentFactory) -> None:
        doc = AttestationDocument.parse(factory.document(nonce=b"n", user_data=b""))
        assert doc.kind == "nitro-enclave"
        assert doc.nonce == b"n"
        assert doc.user_data == b""
        assert doc.public_key is None
        assert doc.protected == bytes.fromhex("a1013822")
        assert not doc.tagged

    def test_tag18_accepted(self, factory: DocumentFactory) -> None:
        assert AttestationDocument.parse(factory.document(tag18=True)).tagged

    def test_indefinite_payload_map_accepted(self, factory: DocumentFactory) -> None:
        doc = AttestationDocument.parse(factory.document(indefinite=True))
        assert doc.payload[0] == 0xBF

    def test_other_tags_refused(self, factory: DocumentFactory) -> None:
        body = factory.document()
        assert _code(b"\xd8\x62" + body) == "envelope.tag"  # tag 98 (COSE_Sign)
        assert _code(b"\xd2\xd2" + body) == "envelope.tag"
        assert _code(b"\xc0" + body) == "envelope.tag"

    def test_not_an_array(self) -> None:
        assert _code(cbor2.dumps({"a": 1})) == "envelope.not-array"
        assert _code(b"\x40") == "envelope.not-array"

    @pytest.mark.parametrize("count", [0, 3, 5])
    def test_wrong_length(self, count: int) -> None:
        assert _code(cbor2.dumps([b""] * count)) == "envelope.wrong-length"

    def test_element_types(self, good: dict[str, Any]) -> None:
        payload = cbor2.dumps(good)
        p = bytes.fromhex("a1013822")
        assert _code(cbor2.dumps([{1: -35}, {}, payload, SIG])) == "envelope.field-type"
        assert _code(cbor2.dumps([p, [], payload, SIG])) == "envelope.field-type"
        assert _code(cbor2.dumps([p, {}, "text", SIG])) == "envelope.field-type"
        assert _code(cbor2.dumps([p, {}, payload, None])) == "envelope.field-type"

    @pytest.mark.parametrize(
        "protected",
        [
            "",  # empty: no alg at all
            "a0",
            "a10126",  # ES256
            "a1013823",  # ES512
            "a20138220300",  # extra label (content type)
            "a2013822028101",  # crit
            "a1013822ff",  # trailing byte
            "f6",
            "a1613138 22",  # text key "1"
        ],
    )
    def test_protected_header_must_be_es384_only(
        self, good: dict[str, Any], protected: str
    ) -> None:
        data = _doc(cbor2.dumps(good), protected=bytes.fromhex(protected.replace(" ", "")))
        assert _code(data) == "envelope.protected-header"

    @pytest.mark.parametrize("unprotected", ["a10126", "a104426b69", "a1013822"])
    def test_unprotected_header_must_be_empty(self, good: dict[str, Any], unprotected: str) -> None:
        data = _doc(cbor2.dumps(good), unprotected=bytes.fromhex(unprotected))
        assert _code(data) == "envelope.unprotected-header"

    def test_indefinite_empty_unprotected_map_is_empty(self, good: dict[str, Any]) -> None:
        AttestationDocument.parse(_doc(cbor2.dumps(good), unprotected=b"\xbf\xff"))

    @pytest.mark.parametrize("size", [0, 64, 95, 97, 128])
    def test_signature_size(self, good: dict[str, Any], size: int) -> None:
        assert _code(_doc(cbor2.dumps(good), signature=bytes(size))) == "envelope.signature-size"

    def test_payload_size(self, good: dict[str, Any]) -> None:
        assert _code(_doc(b"")) == "envelope.payload-size"
        while len(cbor2.dumps(good)) <= 16384:
            good["cabundle"] = [*good["cabundle"], b"c" * 100]
        big = cbor2.dumps(good)
        assert 16384 < len(big) < MAX_DOCUMENT_SIZE - 200
        assert _code(_doc(big)) == "envelope.payload-size"

    def test_document_size(self, factory: DocumentFactory) -> None:
        assert _code(b"") == "document.size"
        assert _code(b"\x84" + bytes(MAX_DOCUMENT_SIZE)) == "document.size"

    def test_trailing_bytes(self, factory: DocumentFactory) -> None:
        assert _code(factory.document() + b"\x00") == "cbor.trailing-bytes"

    def test_truncation_at_every_length(self, factory: DocumentFactory) -> None:
        data = factory.document()
        for cut in range(0, len(data), 37):
            with pytest.raises(MalformedDocument):
                AttestationDocument.parse(data[:cut])

    def test_sig_structure_uses_bytes_as_received(self, good: dict[str, Any]) -> None:
        # A non-shortest payload length head and a non-shortest protected header: the
        # Sig_structure must carry the received content, not a re-encoding of the values.
        payload = cbor2.dumps(good)
        protected = bytes.fromhex("a101390022")  # {1: -35} with a 2-byte integer head
        data = _doc(payload, protected=protected)
        doc = AttestationDocument.parse(data)
        assert doc.protected == protected
        assert doc.payload == payload
        assert doc.sig_structure() == cbor2.dumps(["Signature1", protected, b"", payload])


class TestCborStrictness:
    def test_duplicate_payload_key(self, factory: DocumentFactory, good: dict[str, Any]) -> None:
        payload = bytearray(cbor2.dumps(good))
        assert payload[0] == 0xA9
        extra = cbor2.dumps("digest")[0:] + cbor2.dumps("SHA384")
        payload[0] = 0xAA
        assert _code(_doc(bytes(payload) + extra)) == "cbor.duplicate-key"

    def test_duplicate_pcr_index(self, good: dict[str, Any]) -> None:
        pcrs = b"\xa2" + b"\x00\x58\x30" + bytes(48) + b"\x00\x58\x30" + bytes(48)
        payload = _replace_value(good, "pcrs", pcrs)
        assert _code(_doc(payload)) == "cbor.duplicate-key"

    def test_duplicate_via_non_shortest_key(self, good: dict[str, Any]) -> None:
        pcrs = b"\xa2" + b"\x01\x58\x30" + bytes(48) + b"\x18\x01\x58\x30" + bytes(48)
        assert _code(_doc(_replace_value(good, "pcrs", pcrs))) == "cbor.duplicate-key"

    @pytest.mark.parametrize(
        ("value", "code"),
        [
            (b"\xf9\x00\x00", "cbor.unsupported"),  # half float
            (b"\xfb" + bytes(8), "cbor.unsupported"),  # double
            (b"\xf7", "cbor.unsupported"),  # undefined
            (b"\xf0", "cbor.unsupported"),  # simple(16)
            (b"\xc1\x1a\x00\x00\x00\x01", "cbor.unsupported"),  # tag 1 (epoch time)
            (b"\x1c", "cbor.invalid"),  # reserved additional info
            (b"\x3f", "cbor.invalid"),  # indefinite negative integer
            (b"\xff", "cbor.invalid"),  # stray break
        ],
    )
    def test_refused_items_inside_payload(
        self, good: dict[str, Any], value: bytes, code: str
    ) -> None:
        assert _code(_doc(_replace_value(good, "timestamp", value))) == code

    def test_non_shortest_integers_accepted(self, good: dict[str, Any]) -> None:
        # The NSM writes timestamp as 0x1b + 8 bytes; other widths must work as well.
        for head in (
            b"\x1b" + (1700000000000).to_bytes(8, "big"),
            b"\x1b" + (5).to_bytes(8, "big"),
        ):
            doc = AttestationDocument.parse(_doc(_replace_value(good, "timestamp", head)))
            assert doc.timestamp_ms == int.from_bytes(head[1:], "big")

    def test_indefinite_strings_and_arrays(self, good: dict[str, Any]) -> None:
        chunked = b"\x5f\x42ab\x41c\xff"  # (_ h'6162', h'63')
        doc = AttestationDocument.parse(_doc(_replace_value(good, "nonce", chunked)))
        assert doc.nonce == b"abc"
        text = b"\x7f\x63i-0\x62ab\xff"
        assert AttestationDocument.parse(
            _doc(_replace_value(good, "module_id", text))
        ).module_id == ("i-0ab")
        bundle = b"\x9f" + b"".join(cbor2.dumps(c) for c in good["cabundle"]) + b"\xff"
        doc = AttestationDocument.parse(_doc(_replace_value(good, "cabundle", bundle)))
        assert doc.cabundle == tuple(good["cabundle"])

    @pytest.mark.parametrize(
        "value",
        [
            b"\x5f\x62ab\xff",  # text chunk in a byte string
            b"\x5f\x5f\xff\xff",  # nested indefinite chunk
            b"\x5f\x41a",  # no break
        ],
    )
    def test_bad_chunks(self, good: dict[str, Any], value: bytes) -> None:
        assert _code(_doc(_replace_value(good, "nonce", value))).startswith("cbor.")

    def test_invalid_utf8(self, good: dict[str, Any]) -> None:
        assert _code(_doc(_replace_value(good, "module_id", b"\x62\xc3\x28"))) == "cbor.invalid"

    def test_non_string_map_keys_refused(self) -> None:
        for data in (b"\xa1\x40\x00", b"\xa1\xf5\x00", b"\xa1\x80\x00"):
            with pytest.raises(CborError) as info:
                decode(data)
            assert info.value.code == "cbor.unsupported"

    def test_depth_limit(self) -> None:
        with pytest.raises(CborError) as info:
            decode(b"\x81" * 40 + b"\x00")
        assert info.value.code == "cbor.too-deep"
        assert decode(b"\x81" * 10 + b"\x00") == [[[[[[[[[[0]]]]]]]]]]

    def test_lying_lengths_fail_fast(self) -> None:
        for data in (b"\x9b" + b"\xff" * 8, b"\xbb" + b"\xff" * 8, b"\x5b" + b"\xff" * 8 + b"ab"):
            with pytest.raises(CborError) as info:
                decode(data)
            assert info.value.code == "cbor.truncated"

    def test_break_in_definite_containers(self) -> None:
        for data in (b"\x82\x00\xff", b"\xa1\x00\xff", b"\xa1\xff"):
            with pytest.raises(CborError):
                decode(data)

    def test_decoder_agrees_with_cbor2_on_well_formed_input(self, good: dict[str, Any]) -> None:
        encoded = cbor2.dumps(good)
        assert decode(encoded) == cbor2.loads(encoded)


def _replace_value(fields: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    """The payload map with `key`'s value replaced by hand-written CBOR."""
    parts = [bytes([0xA0 + len(fields)])]
    for name, value in fields.items():
        parts.append(cbor2.dumps(name))
        parts.append(raw_value if name == key else cbor2.dumps(value))
    return b"".join(parts)


class TestPayloadFields:
    def test_good(self, good: dict[str, Any]) -> None:
        doc = _parse_fields(good)
        assert doc.timestamp_ms == 1_700_000_000_000
        assert doc.timestamp.isoformat() == "2023-11-14T22:13:20+00:00"
        assert len(doc.pcrs) == 16

    def test_not_a_map(self) -> None:
        assert _code(_doc(cbor2.dumps([1, 2]))) == "payload.not-map"

    @pytest.mark.parametrize(
        "name", ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"]
    )
    def test_mandatory_missing_or_null(self, good: dict[str, Any], name: str) -> None:
        good[name] = None
        assert _field_code(good) == "payload.missing-field"
        del good[name]
        assert _field_code(good) == "payload.missing-field"

    @pytest.mark.parametrize("name", ["public_key", "user_data", "nonce"])
    def test_optional_absent_null_empty(self, good: dict[str, Any], name: str) -> None:
        assert getattr(_parse_fields(good), name) is None
        del good[name]
        assert getattr(_parse_fields(good), name) is None
        good[name] = b""
        assert getattr(_parse_fields(good), name) == b""
        good[name] = b"x" * 1024
        assert getattr(_parse_fields(good), name) == b"x" * 1024
        good[name] = b"x" * 1025
        assert _field_code(good) == "payload.field-size"
        good[name] = "text"
        assert _field_code(good) == "payload.field-type"

    def test_unknown_key(self, good: dict[str, Any]) -> None:
        good["extra"] = 1
        assert _field_code(good) == "payload.unknown-field"
        del good["extra"]
        with_int_key: dict[Any, Any] = {**good, 7: 1}
        assert _field_code(with_int_key) == "payload.unknown-field"

    def test_key_order_irrelevant(self, good: dict[str, Any]) -> None:
        shuffled = dict(reversed(list(good.items())))
        assert _parse_fields(shuffled).module_id == good["module_id"]

    @pytest.mark.parametrize(
        ("name", "value", "code"),
        [
            ("module_id", "", "payload.field-size"),
            ("module_id", b"i-0", "payload.field-type"),
            ("digest", "SHA256", "payload.field-value"),
            ("digest", "sha384", "payload.field-value"),
            ("digest", b"SHA384", "payload.field-type"),
            ("timestamp", 0, "payload.field-value"),
            ("timestamp", -1, "payload.field-value"),
            ("timestamp", 2**64 - 1, "payload.field-value"),
            ("timestamp", "1700000000000", "payload.field-type"),
            ("timestamp", True, "payload.field-type"),
            ("pcrs", {}, "payload.field-size"),
            ("pcrs", [b"\x00" * 48], "payload.field-type"),
            ("pcrs", {32: bytes(48)}, "payload.field-value"),
            ("pcrs", {-1: bytes(48)}, "payload.field-value"),
            ("pcrs", {"0": bytes(48)}, "payload.field-type"),
            ("pcrs", {0: bytes(47)}, "payload.field-size"),
            ("pcrs", {0: bytes(0)}, "payload.field-size"),
            ("pcrs", {0: "00" * 48}, "payload.field-type"),
            ("pcrs", {i: bytes(48) for i in range(33)}, "payload.field-size"),
            ("certificate", b"", "payload.field-size"),
            ("certificate", b"x" * 1025, "payload.field-size"),
            ("certificate", "x", "payload.field-type"),
            ("cabundle", [], "payload.field-size"),
            ("cabundle", b"x", "payload.field-type"),
            ("cabundle", [b""], "payload.field-size"),
            ("cabundle", [b"x" * 1025], "payload.field-size"),
            ("cabundle", ["x"], "payload.field-type"),
        ],
    )
    def test_field_rules(self, good: dict[str, Any], name: str, value: object, code: str) -> None:
        good[name] = value
        assert _field_code(good) == code

    @pytest.mark.parametrize("size", [32, 48, 64])
    def test_pcr_sizes(self, good: dict[str, Any], size: int) -> None:
        good["pcrs"] = {0: bytes(size), 31: b"\x01" * size}
        assert set(_parse_fields(good).pcrs) == {0, 31}

    def test_nitrotpm_kind(self, good: dict[str, Any]) -> None:
        good["nitrotpm_pcrs"] = good.pop("pcrs")
        assert _parse_fields(good).kind == "nitrotpm"
        good["pcrs"] = good["nitrotpm_pcrs"]
        assert _field_code(good) == "payload.unknown-field"

    def test_debug_flag(self, good: dict[str, Any]) -> None:
        assert not _parse_fields(good).is_debug
        good["pcrs"] = {0: bytes(48), 1: b"\x01" * 48}
        assert _parse_fields(good).is_debug

    def test_pcrs_are_read_only(self, good: dict[str, Any]) -> None:
        doc = _parse_fields(good)
        with pytest.raises(TypeError):
            doc.pcrs[0] = b""  # type: ignore[index]

    def test_builder_payload_matches_parse(self, factory: DocumentFactory) -> None:
        payload = encode_payload(
            module_id="m",
            timestamp_ms=1,
            pcrs={0: bytes(48)},
            certificate=b"c",
            cabundle=[b"r"],
            indefinite=True,
        )
        doc = AttestationDocument.parse(_doc(payload))
        assert (doc.module_id, doc.timestamp_ms, doc.cabundle) == ("m", 1, (b"r",))

    def test_not_bytes(self) -> None:
        with pytest.raises(TypeError):
            AttestationDocument.parse("84")  # type: ignore[arg-type]
