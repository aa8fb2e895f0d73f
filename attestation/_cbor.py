"""A small, strict CBOR (RFC 8949) decoder for attestation documents.

It decodes exactly the subset an attestation document can contain and refuses everything else:

- unsigned and negative integers (any length form: the NSM writes `timestamp` in the 8-byte
  form even when a shorter one exists, so non-shortest integers and lengths are accepted; the
  same rule holds for every head, see `tag_head`);
- byte and text strings, definite or indefinite (chunked, each chunk a definite string of the
  same major type, RFC 8949 §3.2.3); text must be valid UTF-8, and so must every chunk of an
  indefinite text string on its own (§3.2.3: a chunk boundary may not split a character);
- arrays and maps, definite or indefinite (2026 documents use an indefinite payload map);
- `false`, `true`, `null`.

Refused: tags (the envelope handles its optional tag 18 itself), floats, `undefined`, other
simple values, reserved additional-info values, a stray `break`, duplicate map keys, map keys
that are not integers or strings, nesting deeper than a limit, and trailing bytes.

Failures raise `CborError` with a stable `code`; `document.py` translates them into the public
error hierarchy. Nothing here ever re-encodes: callers get the decoded content of each byte string,
which is what COSE signs (RFC 9052 §4.4).
"""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "CborError", "decode", "tag_head"]

# An attestation document nests at most three levels (payload map -> pcrs map -> value,
# envelope array -> header map); 16 leaves room without letting input drive deep recursion.
MAX_DEPTH = 16

_BREAK = object()


class CborError(Exception):
    """Malformed or unsupported CBOR; `code` is one of the `cbor.*` codes in `errors`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode(data: bytes, *, max_depth: int = MAX_DEPTH) -> object:
    """Decode exactly one CBOR data item that spans all of `data`."""
    value, pos = _item(data, 0, max_depth)
    if value is _BREAK:
        raise CborError("cbor.invalid", "unexpected break code")
    if pos != len(data):
        raise CborError("cbor.trailing-bytes", f"{len(data) - pos} bytes after the item")
    return value


def tag_head(data: bytes) -> tuple[int | None, int]:
    """(tag number, offset of the tagged item) if `data` starts with a tag, else (None, 0).

    Like every other head, a tag's may use any length form (`d2`, `d8 12`, `d9 00 12`, ... all
    mean tag 18): one rule for all heads, so that no encoding choice of a writer is refused in
    one place and accepted in another.
    """
    if not data or data[0] >> 5 != 6:
        return None, 0
    info = data[0] & 0x1F
    if info >= 28:
        raise CborError("cbor.invalid", f"reserved additional info 0x{data[0]:02x}")
    return _argument(data, 1, info)


# The decoder is a few plain functions passing (value, position) around rather than a class:
# attestation documents are decoded on every verification, and avoiding attribute lookups
# roughly halves the cost in CPython.


def _truncated(pos: int) -> CborError:
    return CborError("cbor.truncated", f"input ends inside an item (offset {pos})")


def _argument(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """The argument after an initial byte with additional info `info` (< 28), and the new pos."""
    if info < 24:
        return info, pos
    stop = pos + (1 << (info - 24))  # 24..27 -> 1, 2, 4, 8 bytes
    if stop > len(data):
        raise _truncated(pos)
    return int.from_bytes(data[pos:stop], "big"), stop


def _string(data: bytes, pos: int, major: int, info: int) -> tuple[bytes, int]:
    if info != 31:
        length, pos = _argument(data, pos, info)
        stop = pos + length
        if stop > len(data):
            raise _truncated(pos)
        return data[pos:stop], stop
    chunks: list[bytes] = []
    while True:
        if pos >= len(data):
            raise _truncated(pos)
        initial = data[pos]
        pos += 1
        if initial == 0xFF:
            return b"".join(chunks), pos
        if initial >> 5 != major or (initial & 0x1F) >= 28:
            # RFC 8949 §3.2.3: chunks are definite strings of the same major type.
            raise CborError("cbor.invalid", "bad chunk in an indefinite-length string")
        chunk, pos = _string(data, pos, major, initial & 0x1F)
        if major == 3:
            _utf8(chunk)
        chunks.append(chunk)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CborError("cbor.invalid", "text string is not valid UTF-8") from exc


def _item(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    if pos >= len(data):
        raise _truncated(pos)
    initial = data[pos]
    pos += 1
    major = initial >> 5
    info = initial & 0x1F
    if major == 2:
        if info < 24:  # short byte string: the common case (PCR values, headers)
            stop = pos + info
            if stop > len(data):
                raise _truncated(pos)
            return data[pos:stop], stop
        if info == 25 and pos + 2 <= len(data):  # 2-byte length: certificates, payload
            start = pos + 2
            stop = start + ((data[pos] << 8) | data[pos + 1])
            if stop > len(data):
                raise _truncated(start)
            return data[start:stop], stop
        if info < 28 or info == 31:
            return _string(data, pos, 2, info)
    elif major == 0:
        if info < 28:
            return _argument(data, pos, info)
    elif major == 3:
        if info < 28 or info == 31:
            raw, pos = _string(data, pos, 3, info)
            return _utf8(raw), pos
    elif major == 5 or major == 4:
        if info < 28 or info == 31:
            if depth <= 0:
                raise CborError("cbor.too-deep", "nesting too deep")
            if major == 5:
                return _map(data, pos, info, depth - 1)
            return _array(data, pos, info, depth - 1)
    elif major == 1:
        if info < 28:
            value, pos = _argument(data, pos, info)
            return -1 - value, pos
    elif major == 7:
        if initial == 0xF6:
            return None, pos
        if initial == 0xF5:
            return True, pos
        if initial == 0xF4:
            return False, pos
        if initial == 0xFF:
            return _BREAK, pos
        raise CborError("cbor.unsupported", f"simple value or float 0x{initial:02x}")
    else:
        raise CborError("cbor.unsupported", "tags are not allowed here")
    raise CborError("cbor.invalid", f"reserved or misplaced additional info 0x{initial:02x}")


def _array(data: bytes, pos: int, info: int, depth: int) -> tuple[list[object], int]:
    out: list[object] = []
    if info == 31:
        while True:
            value, pos = _item(data, pos, depth)
            if value is _BREAK:
                return out, pos
            out.append(value)
    count, pos = _argument(data, pos, info)
    # Every item takes at least one byte: a count larger than what is left is a lie, and
    # checking it first keeps a forged length from driving a long loop.
    if count > len(data) - pos:
        raise _truncated(pos)
    for _ in range(count):
        value, pos = _item(data, pos, depth)
        if value is _BREAK:
            raise CborError("cbor.invalid", "break inside a definite-length array")
        out.append(value)
    return out, pos


def _map(data: bytes, pos: int, info: int, depth: int) -> tuple[dict[object, object], int]:
    out: dict[object, object] = {}
    indefinite = info == 31
    remaining = 0
    if not indefinite:
        remaining, pos = _argument(data, pos, info)
        if remaining * 2 > len(data) - pos:
            raise _truncated(pos)
    end = len(data)
    key: object
    value: object
    while indefinite or remaining:
        # Inline fast paths for the shapes a payload is made of (small uint keys, short text
        # keys, 1-byte-length byte strings); everything else goes through `_item`.
        initial = data[pos] if pos < end else 0xFF
        if initial < 0x18 and pos < end:
            key = initial
            pos += 1
        elif 0x60 <= initial < 0x78 and pos + 1 + (initial - 0x60) <= end:
            stop = pos + 1 + (initial - 0x60)
            try:
                key = data[pos + 1 : stop].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CborError("cbor.invalid", "text string is not valid UTF-8") from exc
            pos = stop
        else:
            key, pos = _item(data, pos, depth)
            if key is _BREAK:
                if indefinite:
                    return out, pos
                raise CborError("cbor.invalid", "break inside a definite-length map")
            # bool is an int subclass and True == 1: only real ints and strings are keys here.
            if type(key) is not int and type(key) is not str:
                raise CborError("cbor.unsupported", "map key is not an integer or text string")
        # Values: 1-byte-length byte strings (PCRs), null (absent optional fields) and short
        # text (module_id, digest) inline; anything else, or anything that does not fit in
        # what is left, goes through `_item` and gets its full checks and errors there.
        initial = data[pos] if pos < end else 0
        if initial == 0x58 and pos + 1 < end and pos + 2 + data[pos + 1] <= end:
            stop = pos + 2 + data[pos + 1]
            value = data[pos + 2 : stop]
            pos = stop
        elif initial == 0xF6:
            value = None
            pos += 1
        elif 0x60 <= initial <= 0x78 and (initial < 0x78 or pos + 1 < end):
            start = pos + 1 if initial < 0x78 else pos + 2
            stop = start + (initial - 0x60 if initial < 0x78 else data[pos + 1])
            if stop > end:
                raise _truncated(start)
            try:
                value = data[start:stop].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CborError("cbor.invalid", "text string is not valid UTF-8") from exc
            pos = stop
        else:
            value, pos = _item(data, pos, depth)
        if value is _BREAK:
            raise CborError("cbor.invalid", "break where a map value was expected")
        if key in out:
            raise CborError("cbor.duplicate-key", f"duplicate map key {key!r}")
        out[key] = value
        remaining -= 1
    return out, pos
