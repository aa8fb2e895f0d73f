"""The fast path of document decoding: the exact CBOR shapes the NSM writes, or decline.

`document.AttestationDocument.parse` tries these two functions first and falls back to the
strict general decoder (`_cbor.decode`) whenever one returns `None`. Each returns exactly what
`_cbor.decode` returns for the same bytes (same types, same values, same key order) or `None`;
it never raises and never accepts bytes that `_cbor.decode` refuses. It does not decide any
rejection either: every malformed or merely unusual input is declined, so the strict decoder
judges it and names the error. The field rules (`document._from_fields`) run on the result
either way. `tests/attestation/test_payload_fast.py` checks all of this against the strict
decoder on the corpus, the real documents and generated mutations of them.

Why a second decoder: the general one spends most of a warm verification's Python time on
dispatching every item by its initial byte. The NSM's output has one shape (real documents:
reference in vectors/real/MANIFEST.json, `payload_keys_in_order`):

- envelope: untagged array of 4 = `44 a1013822` (protected `{1: -35}`), `a0` (empty
  unprotected map), the payload as a byte string, `58 60` + 96 signature bytes;
- payload: a map (definite up to 23 entries, or indefinite until `ff`) of short text keys from
  the known set, no key twice, each value in its field's usual encoding: text (`module_id`,
  `digest`), an unsigned integer (`timestamp`, any length form), a definite map of keys
  0..23 to byte strings (`pcrs`, `nitrotpm_pcrs`), a byte string (`certificate`), a
  definite array of byte strings (`cabundle`), a byte string or null (`public_key`,
  `user_data`, `nonce`).

Anything else (tags, indefinite strings, another value type for a field, a key outside the set,
a duplicate, trailing or missing bytes) is declined.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

__all__ = ["NsmLayout", "fast_envelope", "fast_payload", "nsm_layout"]

# The protected header every NSM writes, as its byte-string item: 44 = bstr of 4 bytes.
_PROTECTED_ITEM = b"\x44\xa1\x01\x38\x22"
_PROTECTED = _PROTECTED_ITEM[1:]
# The signature item: 58 60 = bstr of 96 bytes (P-384 r || s).
_SIGNATURE_HEAD = b"\x58\x60"
_SIGNATURE_SIZE = 96

# Value shapes, one per known key.
_TEXT, _UINT, _REGISTERS, _BYTES, _BUNDLE, _OPTIONAL = range(6)
_FIELDS = {
    "module_id": _TEXT,
    "digest": _TEXT,
    "timestamp": _UINT,
    "pcrs": _REGISTERS,
    "nitrotpm_pcrs": _REGISTERS,
    "certificate": _BYTES,
    "cabundle": _BUNDLE,
    "public_key": _OPTIONAL,
    "user_data": _OPTIONAL,
    "nonce": _OPTIONAL,
}
# Each key as its encoded item (a text string shorter than 24 bytes: one head byte), so that a
# key is recognised by one slice and one dict lookup.
_KEYS = {
    bytes([0x60 + len(name)]) + name.encode(): (name, shape) for name, shape in _FIELDS.items()
}


def fast_envelope(body: bytes) -> list[object] | None:
    """`[protected, {}, payload, signature]` if `body` is the NSM's envelope form, else None."""
    end = len(body)
    # 84 = array of 4; then the protected item and a0 (the empty unprotected map).
    if end < 9 or body[0] != 0x84 or body[1:6] != _PROTECTED_ITEM or body[6] != 0xA0:
        return None
    head = body[7]
    if head == 0x59:
        start = 10
        length = (body[8] << 8) | body[9]
    elif head == 0x58:
        start = 9
        length = body[8]
    else:
        return None
    stop = start + length
    if stop + 2 + _SIGNATURE_SIZE != end or body[stop : stop + 2] != _SIGNATURE_HEAD:
        return None
    return [_PROTECTED, {}, body[start:stop], body[stop + 2 :]]


def _bytes(data: bytes, pos: int, end: int, base: int = 0x40) -> tuple[bytes, int] | None:
    """A definite byte string (`base` 0x40; 0x60: the raw bytes of a text string) of up to
    65535 bytes at `pos`: the only lengths a payload uses."""
    if pos >= end:
        return None
    initial = data[pos] - base
    if 0 <= initial < 0x18:
        start = pos + 1
        stop = start + initial
    elif initial == 0x18 and pos + 1 < end:
        start = pos + 2
        stop = start + data[pos + 1]
    elif initial == 0x19 and pos + 2 < end:
        start = pos + 3
        stop = start + ((data[pos + 1] << 8) | data[pos + 2])
    else:
        return None
    if stop > end:
        return None
    return data[start:stop], stop


class _RegisterLayout(NamedTuple):
    marks: bytes
    """`58` once per entry: each value is a byte string with a 1-byte length."""
    sizes: bytes
    """The length byte once per entry: every value the same size."""
    ascending: bytes
    """Indices 0, 1, 2, ...: the order the NSM writes."""
    values: struct.Struct
    """Skips each entry's 3 head bytes and takes its value: one C call for all of them."""


@functools.lru_cache(maxsize=64)
def _register_layout(size: int, count: int) -> _RegisterLayout:
    return _RegisterLayout(
        b"\x58" * count,
        bytes((size,)) * count,
        bytes(range(count)),
        struct.Struct(f"3x{size}s" * count),
    )


def _text(data: bytes, pos: int, end: int) -> tuple[str, int] | None:
    """A definite text string of valid UTF-8 at `pos` (as `_bytes` reads it)."""
    item = _bytes(data, pos, end, 0x60)
    if item is None:
        return None
    try:
        return item[0].decode("utf-8"), item[1]
    except UnicodeDecodeError:
        return None


def _uint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """An unsigned integer at `pos` in any of its length forms (1, 2, 4 or 8 bytes, or none)."""
    initial = data[pos]
    if initial < 0x18:
        return initial, pos + 1
    if initial < 0x1C:
        stop = pos + 1 + (1 << (initial - 0x18))
        if stop > end:
            return None
        return int.from_bytes(data[pos + 1 : stop], "big"), stop
    return None


def _registers(data: bytes, pos: int, end: int) -> tuple[dict[object, object], int] | None:
    """A definite map of up to 32 entries, each a key 0..23 and a byte string."""
    registers = _sized_registers(data, pos, end)
    return None if registers is None else registers[:2]


def _sized_registers(
    data: bytes, pos: int, end: int
) -> tuple[dict[object, object], int, int] | None:
    """`_registers`, and the size every value has (-1: not known to be one size)."""
    count = data[pos] - 0xA0
    pos += 1
    if count == 24 and pos < end:  # b8 nn: 24 or more entries (NitroTPM: 24 registers)
        count = data[pos]
        pos += 1
        if count > 32:
            return None
    elif not 0 <= count < 24:
        return None
    if count and pos + 2 < end and data[pos + 1] == 0x58:
        # Every real register map: `index 58 LL` + LL bytes, the same LL for all entries. Its
        # heads are checked with three strided slices instead of entry by entry.
        size = data[pos + 2]
        stride = size + 3
        stop = pos + stride * count
        if stop <= end:
            layout = _register_layout(size, count)
            indices = data[pos:stop:stride]
            if (
                data[pos + 1 : stop : stride] == layout.marks
                and data[pos + 2 : stop : stride] == layout.sizes
                and (
                    indices == layout.ascending
                    or (max(indices) < 0x18 and len(set(indices)) == count)
                )
            ):
                values = layout.values.unpack_from(data, pos)
                return dict(zip(indices, values, strict=True)), stop, size
    out: dict[object, object] = {}
    for _ in range(count):
        if pos + 2 >= end:
            return None
        index = data[pos]
        # Keys 0..23 are one byte each; a repeated one is for the strict decoder to refuse.
        if index >= 0x18 or index in out:
            return None
        if data[pos + 1] == 0x58:  # every real register: 58 30 + 48 bytes
            start = pos + 3
            stop = start + data[pos + 2]
            if stop > end:
                return None
            out[index] = data[start:stop]
            pos = stop
        else:
            value = _bytes(data, pos + 1, end)
            if value is None:
                return None
            out[index], pos = value
    return out, pos, -1


def _bundle(data: bytes, pos: int, end: int) -> tuple[list[object], int] | None:
    """A definite array of up to 23 byte strings."""
    count = data[pos] - 0x80
    if not 0 <= count < 24:
        return None
    pos += 1
    out: list[object] = []
    for _ in range(count):
        if pos + 2 < end and data[pos] == 0x59:  # every real certificate: 59 LL LL + DER
            start = pos + 3
            pos = start + ((data[pos + 1] << 8) | data[pos + 2])
            if pos > end:
                return None
            out.append(data[start:pos])
        else:
            value = _bytes(data, pos, end)
            if value is None:
                return None
            item, pos = value
            out.append(item)
    return out, pos


def fast_payload(payload: bytes) -> dict[object, object] | None:
    """The payload map as `_cbor.decode` gives it, if it has the NSM's shape, else None."""
    end = len(payload)
    if not end:
        return None
    initial = payload[0]
    indefinite = initial == 0xBF
    remaining = 0 if indefinite else initial - 0xA0
    if not indefinite and not 0 <= remaining < 24:
        return None
    out: dict[object, object] = {}
    pos = 1
    keys = _KEYS
    value: object
    while indefinite or remaining:
        if pos >= end:
            return None
        initial = payload[pos]
        if indefinite and initial == 0xFF:
            return out if pos + 1 == end else None
        known = keys.get(payload[pos : pos + 1 + initial - 0x60]) if 0x60 < initial < 0x78 else None
        if known is None:
            return None
        name, shape = known
        if name in out:
            return None
        pos += 1 + initial - 0x60
        if pos >= end:
            return None
        initial = payload[pos]
        if shape == _REGISTERS:
            registers = _registers(payload, pos, end)
            if registers is None:
                return None
            value, pos = registers
        elif shape == _TEXT:
            text = _text(payload, pos, end)
            if text is None:
                return None
            value, pos = text
        elif shape == _UINT:
            number = _uint(payload, pos, end)
            if number is None:
                return None
            value, pos = number
        elif shape == _BUNDLE:
            bundle = _bundle(payload, pos, end)
            if bundle is None:
                return None
            value, pos = bundle
        elif shape == _OPTIONAL and initial == 0xF6:
            value = None
            pos += 1
        else:  # _BYTES, or _OPTIONAL that is not null
            item = _bytes(payload, pos, end)
            if item is None:
                return None
            value, pos = item
        out[name] = value
        remaining -= 1
    return out if pos == end else None


# --- the NSM's own layout, fields in its order -----------------------------------------------

# Each key as its encoded item, in the order the NSM writes them (every real document:
# `payload_keys_in_order` in vectors/real/MANIFEST.json), with `digest` and its only value.
_MODULE_ID = b"\x69module_id"
_DIGEST_SHA384 = b"\x66digest\x66SHA384"
_TIMESTAMP = b"\x69timestamp"
_PCRS = b"\x64pcrs"
_NITROTPM_PCRS = b"\x6dnitrotpm_pcrs"
_CERTIFICATE = b"\x6bcertificate"
_CABUNDLE = b"\x68cabundle"
_PUBLIC_KEY = b"\x6apublic_key"
_USER_DATA = b"\x69user_data"
_NONCE = b"\x65nonce"
# The runs of fixed bytes in the usual case, each compared at once: the digest entry, the
# timestamp key and the 8-byte integer head; the three optional fields all null.
_DIGEST_TIMESTAMP_U64 = _DIGEST_SHA384 + _TIMESTAMP + b"\x1b"
_NO_OPTIONALS = _PUBLIC_KEY + b"\xf6" + _USER_DATA + b"\xf6" + _NONCE + b"\xf6"

NsmLayout = tuple[
    str, int, bool, dict[object, object], int, bytes, list[object], object, object, object
]
"""module_id, timestamp, NitroTPM registers?, registers, their common size (-1: mixed),
certificate, cabundle, public_key, user_data, nonce."""


def _optional_item(data: bytes, pos: int, end: int) -> tuple[object, int] | None:
    if pos < end and data[pos] == 0xF6:
        return None, pos + 1
    return _bytes(data, pos, end)


def nsm_layout(payload: bytes) -> NsmLayout | None:
    """The payload's values if it is exactly the NSM's layout, else None.

    The layout: a map of the nine keys in the NSM's order (definite `a9`, or indefinite until
    `ff`), `digest` = "SHA384", each value in its usual encoding (as `fast_payload` reads
    them). What `fast_payload` would return for such bytes is the dict of these values in this
    order; `document.AttestationDocument.parse` applies the field rules to them directly.
    """
    end = len(payload)
    if end < 2:
        return None
    first = payload[0]
    if first == 0xA9:
        indefinite = False
    elif first == 0xBF:
        indefinite = True
    else:
        return None
    if not payload.startswith(_MODULE_ID, 1):
        return None
    text = _text(payload, 11, end)
    if text is None:
        return None
    module_id, pos = text
    if payload.startswith(_DIGEST_TIMESTAMP_U64, pos):  # every real document: 8-byte form
        pos += 25
        timestamp = int.from_bytes(payload[pos : pos + 8], "big")
        pos += 8
        return _from_registers(payload, pos, end, indefinite, module_id, timestamp)
    if not payload.startswith(_DIGEST_SHA384, pos) or not payload.startswith(_TIMESTAMP, pos + 14):
        return None
    pos += 24
    if pos >= end:
        return None
    number = _uint(payload, pos, end)
    if number is None:
        return None
    timestamp, pos = number
    return _from_registers(payload, pos, end, indefinite, module_id, timestamp)


def _from_registers(
    payload: bytes, pos: int, end: int, indefinite: bool, module_id: str, timestamp: int
) -> NsmLayout | None:
    """`nsm_layout` from the register map on."""
    if payload.startswith(_PCRS, pos):
        tpm = False
        pos += 5
    elif payload.startswith(_NITROTPM_PCRS, pos):
        tpm = True
        pos += 14
    else:
        return None
    if pos >= end:
        return None
    registers = _sized_registers(payload, pos, end)
    if registers is None:
        return None
    pcrs, pos, size = registers
    if not payload.startswith(_CERTIFICATE, pos):
        return None
    pos += 12
    if pos + 2 < end and payload[pos] == 0x59:  # every real certificate: 59 LL LL + DER
        start = pos + 3
        pos = start + ((payload[pos + 1] << 8) | payload[pos + 2])
        if pos > end:
            return None
        certificate = payload[start:pos]
    else:
        item = _bytes(payload, pos, end)
        if item is None:
            return None
        certificate, pos = item
    if not payload.startswith(_CABUNDLE, pos):
        return None
    pos += 9
    if pos >= end:
        return None
    bundle = _bundle(payload, pos, end)
    if bundle is None or not payload.startswith(_PUBLIC_KEY, bundle[1]):
        return None
    cabundle, pos = bundle
    if payload.startswith(_NO_OPTIONALS, pos):  # public_key, user_data and nonce all null
        pos += len(_NO_OPTIONALS)
        values: tuple[object, object, object] = (None, None, None)
    else:
        public_key = _optional_item(payload, pos + 11, end)
        if public_key is None or not payload.startswith(_USER_DATA, public_key[1]):
            return None
        user_data = _optional_item(payload, public_key[1] + 10, end)
        if user_data is None or not payload.startswith(_NONCE, user_data[1]):
            return None
        nonce = _optional_item(payload, user_data[1] + 6, end)
        if nonce is None:
            return None
        pos = nonce[1]
        values = (public_key[0], user_data[0], nonce[0])
    if pos + indefinite != end or (indefinite and payload[pos] != 0xFF):
        return None
    return (module_id, timestamp, tpm, pcrs, size, certificate, cabundle, *values)
