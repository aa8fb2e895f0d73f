"""A small, strict CBOR (RFC 8949) decoder for attestation documents.

It decodes exactly the subset an attestation document can contain and refuses everything else:

- unsigned and negative integers (any length form: the NSM writes `timestamp` in the 8-byte
  form even when a shorter one exists, so non-shortest integers and lengths are accepted);
- byte and text strings, definite or indefinite (chunked, each chunk a definite string of the
  same major type, RFC 8949 §3.2.3); text must be valid UTF-8;
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

__all__ = ["MAX_DEPTH", "CborError", "decode"]

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
    decoder = _Decoder(data, max_depth)
    value = decoder.item(0)
    if value is _BREAK:
        raise CborError("cbor.invalid", "unexpected break code")
    if decoder.pos != len(data):
        raise CborError("cbor.trailing-bytes", f"{len(data) - decoder.pos} bytes after the item")
    return value


class _Decoder:
    __slots__ = ("data", "end", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.max_depth = max_depth

    def _truncated(self) -> CborError:
        return CborError("cbor.truncated", f"input ends inside an item (offset {self.pos})")

    def _argument(self, info: int) -> int:
        """Read the argument that follows an initial byte with additional info `info` (< 28)."""
        if info < 24:
            return info
        size = 1 << (info - 24)  # 24..27 -> 1, 2, 4, 8 bytes
        start = self.pos
        stop = start + size
        if stop > self.end:
            raise self._truncated()
        self.pos = stop
        return int.from_bytes(self.data[start:stop], "big")

    def _string(self, major: int, info: int) -> bytes:
        if info == 31:
            chunks: list[bytes] = []
            while True:
                if self.pos >= self.end:
                    raise self._truncated()
                initial = self.data[self.pos]
                self.pos += 1
                if initial == 0xFF:
                    return b"".join(chunks)
                if initial >> 5 != major or (initial & 0x1F) >= 28:
                    # RFC 8949 §3.2.3: chunks are definite strings of the same major type.
                    raise CborError("cbor.invalid", "bad chunk in an indefinite-length string")
                chunks.append(self._definite_string(initial & 0x1F))
        return self._definite_string(info)

    def _definite_string(self, info: int) -> bytes:
        length = self._argument(info)
        start = self.pos
        if length > self.end - start:
            raise self._truncated()
        self.pos = start + length
        return self.data[start : self.pos]

    def item(self, depth: int) -> object:
        if self.pos >= self.end:
            raise self._truncated()
        initial = self.data[self.pos]
        self.pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if major == 7:
            if initial == 0xF6:
                return None
            if initial == 0xF5:
                return True
            if initial == 0xF4:
                return False
            if initial == 0xFF:
                return _BREAK
            raise CborError("cbor.unsupported", f"simple value or float 0x{initial:02x}")
        if info >= 28 and not (info == 31 and major >= 2):
            raise CborError("cbor.invalid", f"reserved or misplaced additional info 0x{initial:02x}")
        if major == 0:
            return self._argument(info)
        if major == 1:
            return -1 - self._argument(info)
        if major == 2:
            return self._string(2, info)
        if major == 3:
            raw = self._string(3, info)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CborError("cbor.invalid", "text string is not valid UTF-8") from exc
        if major == 6:
            raise CborError("cbor.unsupported", "tags are not allowed here")
        if depth >= self.max_depth:
            raise CborError("cbor.too-deep", f"nesting deeper than {self.max_depth}")
        if major == 4:
            return self._array(info, depth + 1)
        return self._map(info, depth + 1)

    def _array(self, info: int, depth: int) -> list[object]:
        out: list[object] = []
        if info == 31:
            while True:
                value = self.item(depth)
                if value is _BREAK:
                    return out
                out.append(value)
        count = self._argument(info)
        # Every item takes at least one byte: a count larger than what is left is a lie, and
        # checking it first keeps a forged length from driving a long loop.
        if count > self.end - self.pos:
            raise self._truncated()
        for _ in range(count):
            value = self.item(depth)
            if value is _BREAK:
                raise CborError("cbor.invalid", "break inside a definite-length array")
            out.append(value)
        return out

    def _map(self, info: int, depth: int) -> dict[object, object]:
        out: dict[object, object] = {}
        indefinite = info == 31
        remaining = 0
        if not indefinite:
            remaining = self._argument(info)
            if remaining * 2 > self.end - self.pos:
                raise self._truncated()
        while indefinite or remaining:
            key = self.item(depth)
            if key is _BREAK:
                if indefinite:
                    return out
                raise CborError("cbor.invalid", "break inside a definite-length map")
            # bool is an int subclass and True == 1: only real ints and strings are keys here.
            if type(key) is not int and type(key) is not str:
                raise CborError("cbor.unsupported", "map key is not an integer or text string")
            value = self.item(depth)
            if value is _BREAK:
                raise CborError("cbor.invalid", "break where a map value was expected")
            if key in out:
                raise CborError("cbor.duplicate-key", f"duplicate map key {key!r}")
            out[key] = value
            remaining -= 1
        return out
