"""Deterministic CBOR (RFC 8949 §4.2.1), restricted to the subset of SPEC §3.

The encoder writes only the one canonical form of a value. The decoder accepts
only that form and raises CborError with a distinct code for everything else,
so a verifier can tell a forged envelope from a merely sloppy encoder.

Supported values: int, bytes, str, list/tuple, dict with int keys 0..23,
Tag, True, False and None.
"""

from crev.errors import CborError, MisuseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_DEPTH = 16

# Decoder error codes. "canonical" codes mean the bytes are well-formed CBOR
# that a deterministic encoder would never have written.
INDEFINITE_LENGTH = "INDEFINITE_LENGTH"
FLOAT = "FLOAT"
NON_SHORTEST = "NON_SHORTEST"
UNSORTED_KEYS = "UNSORTED_KEYS"
DUPLICATE_KEY = "DUPLICATE_KEY"
KEY_OUT_OF_RANGE = "KEY_OUT_OF_RANGE"
TRAILING_BYTES = "TRAILING_BYTES"
TRUNCATED = "TRUNCATED"
LENGTH_EXCEEDS_INPUT = "LENGTH_EXCEEDS_INPUT"
TOO_DEEP = "TOO_DEEP"
RESERVED = "RESERVED"
UNSUPPORTED_SIMPLE = "UNSUPPORTED_SIMPLE"
BAD_UTF8 = "BAD_UTF8"
EMPTY = "EMPTY"


class Tag:
    """A CBOR tag: ``Tag(18, [...])`` is a COSE_Sign1 message."""

    def __init__(self, tag: int, value: object) -> None:
        self.tag = tag
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value

    def __repr__(self) -> str:
        return "Tag(%d, %r)" % (self.tag, self.value)


# ---------------------------------------------------------------- encoding


def _head(out: bytearray, major: int, value: int) -> None:
    mt = major << 5
    if value < 24:
        out.append(mt | value)
    elif value < 0x100:
        out.append(mt | 24)
        out.append(value)
    elif value < 0x10000:
        out.append(mt | 25)
        out.extend(value.to_bytes(2, "big"))
    elif value < 0x100000000:
        out.append(mt | 26)
        out.extend(value.to_bytes(4, "big"))
    elif value < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(value.to_bytes(8, "big"))
    else:
        raise MisuseError("integer does not fit in 64 bits")


def _encode(out: bytearray, obj: object, depth: int) -> None:
    if type(obj) is int:  # the commonest value, first (bool is not int here: type(True) is bool)
        if 0 <= obj < 24:
            out.append(obj)
        elif obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
        return
    if depth > MAX_DEPTH:
        raise MisuseError("value nests deeper than %d" % MAX_DEPTH)
    # bool before int: True is an int in Python.
    if obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        _head(out, 3, len(raw))
        out.extend(raw)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for item in obj:
            _encode(out, item, depth + 1)
    elif isinstance(obj, dict):
        keys = sorted(obj.keys())
        for key in keys:
            if not isinstance(key, int) or key is True or key is False or key < 0 or key > 23:
                raise MisuseError("map keys must be integers 0..23, got %r" % (key,))
        _head(out, 5, len(keys))
        for key in keys:
            out.append(key)
            _encode(out, obj[key], depth + 1)
    elif isinstance(obj, Tag):
        _head(out, 6, obj.tag)
        _encode(out, obj.value, depth + 1)
    else:
        raise MisuseError("cannot encode %s in deterministic CBOR" % type(obj).__name__)


def dumps(obj: object) -> bytes:
    """Encode ``obj`` in deterministic CBOR."""
    out = bytearray()
    _encode(out, obj, 0)
    return bytes(out)


# ---------------------------------------------------------------- decoding


class _Decoder:
    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.max_depth = max_depth

    def _take(self, n: int) -> bytes:
        start = self.pos
        if n > self.end - start:
            raise CborError(TRUNCATED, "need %d bytes at offset %d" % (n, start))
        self.pos = start + n
        return self.data[start : start + n]

    def _argument(self, ai: int, major: int) -> int:
        if ai < 24:
            return ai
        if ai == 24:
            value = self._take(1)[0]
            if value < 24:
                raise CborError(NON_SHORTEST, "at offset %d" % (self.pos - 2), True)
            return value
        if ai == 25:
            value = int.from_bytes(self._take(2), "big")
            if value < 0x100:
                raise CborError(NON_SHORTEST, "at offset %d" % (self.pos - 3), True)
            return value
        if ai == 26:
            value = int.from_bytes(self._take(4), "big")
            if value < 0x10000:
                raise CborError(NON_SHORTEST, "at offset %d" % (self.pos - 5), True)
            return value
        if ai == 27:
            value = int.from_bytes(self._take(8), "big")
            if value < 0x100000000:
                raise CborError(NON_SHORTEST, "at offset %d" % (self.pos - 9), True)
            return value
        if ai == 31 and major in (2, 3, 4, 5):
            raise CborError(INDEFINITE_LENGTH, "at offset %d" % (self.pos - 1), True)
        raise CborError(RESERVED, "additional info %d at offset %d" % (ai, self.pos - 1))

    def item(self, depth: int) -> object:
        # The hot path of every verification: locals and direct indexing
        # instead of _take() keep a reading's payload decode about 2x faster.
        if depth > self.max_depth:
            raise CborError(TOO_DEEP, "more than %d levels" % self.max_depth)
        data = self.data
        start = self.pos
        if start >= self.end:
            raise CborError(TRUNCATED, "need 1 bytes at offset %d" % start)
        initial = data[start]
        self.pos = start + 1
        major = initial >> 5
        ai = initial & 0x1F
        if major == 7:
            return self._simple(ai, start)
        if ai < 24:
            value = ai
        elif ai == 24 and start + 1 < self.end:
            # One-byte arguments (32-byte hashes, short strings) are the most common.
            value = data[start + 1]
            if value < 24:
                raise CborError(NON_SHORTEST, "at offset %d" % start, True)
            self.pos = start + 2
        elif (ai == 26 or ai == 27) and start + 9 <= self.end:
            # Counters in mWh are four- or eight-byte integers.
            width = 4 if ai == 26 else 8
            value = int.from_bytes(data[start + 1 : start + 1 + width], "big")
            if value < (0x10000 if width == 4 else 0x100000000):
                raise CborError(NON_SHORTEST, "at offset %d" % start, True)
            self.pos = start + 1 + width
        else:
            value = self._argument(ai, major)
        if major == 0:
            return value
        if major == 2 or major == 3:
            pos = self.pos
            end = pos + value
            if end > self.end:
                raise CborError(LENGTH_EXCEEDS_INPUT, "string of %d bytes at offset %d" % (value, start))
            self.pos = end
            if major == 2:
                return data[pos:end]
            try:
                return str(data[pos:end], "utf-8")
            except Exception:  # MicroPython raises UnicodeError, CPython its subclass
                raise CborError(BAD_UTF8, "text string at offset %d" % start)
        if major == 4:
            # Each element needs at least one byte: refuse absurd counts early.
            end = self.end
            if value > end - self.pos:
                raise CborError(LENGTH_EXCEEDS_INPUT, "array of %d items at offset %d" % (value, start))
            item = self.item
            depth += 1
            inline = depth <= self.max_depth  # else item() must raise TOO_DEEP
            out = []  # type: list[object]
            for _ in range(value):
                pos = self.pos
                if inline and pos < end:
                    # The commonest elements without a call: small integers, and the
                    # byte strings of 24..255 bytes that proofs are made of.
                    first = data[pos]
                    if first < 24:
                        out.append(first)
                        self.pos = pos + 1
                        continue
                    if first == 0x58 and pos + 1 < end:
                        size = data[pos + 1]
                        if size >= 24 and pos + 2 + size <= end:
                            self.pos = pos + 2 + size
                            out.append(data[pos + 2 : pos + 2 + size])
                            continue
                out.append(item(depth))
            return out
        if major == 1:
            return -1 - value
        if major == 5:
            if 2 * value > self.end - self.pos:
                raise CborError(LENGTH_EXCEEDS_INPUT, "map of %d pairs at offset %d" % (value, start))
            result = {}  # type: dict[int, object]
            last = -1
            depth += 1
            for _ in range(value):
                key_at = self.pos
                if depth <= self.max_depth and key_at < self.end and data[key_at] < 24:
                    key = data[key_at]  # the only keys SPEC §3 allows: one byte, 0..23
                    self.pos = key_at + 1
                else:
                    decoded = self.item(depth)
                    if not isinstance(decoded, int) or decoded is True or decoded is False or not 0 <= decoded <= 23:
                        raise CborError(KEY_OUT_OF_RANGE, "map key at offset %d" % key_at, True)
                    key = decoded
                if key <= last:
                    if key == last:
                        raise CborError(DUPLICATE_KEY, "key %d at offset %d" % (key, key_at), True)
                    raise CborError(UNSORTED_KEYS, "key %d after %d at offset %d" % (key, last, key_at), True)
                last = key
                pos = self.pos
                if depth <= self.max_depth and pos < self.end and data[pos] < 24:
                    result[key] = data[pos]  # a small unsigned integer, without a call
                    self.pos = pos + 1
                else:
                    result[key] = self.item(depth)
            return result
        # major 6: a tag
        return Tag(value, self.item(depth + 1))

    def _simple(self, ai: int, start: int) -> object:
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if 25 <= ai <= 27:
            raise CborError(FLOAT, "at offset %d" % start, True)
        if ai == 31:
            raise CborError(RESERVED, "break outside an indefinite item at offset %d" % start)
        if ai == 24:
            self._take(1)
        elif 28 <= ai <= 30:
            raise CborError(RESERVED, "additional info %d at offset %d" % (ai, start))
        raise CborError(UNSUPPORTED_SIMPLE, "simple value at offset %d" % start)


# A faster decoder of the same subset, where the platform has one: CPython installs
# cbor2's C decoder (crev_ingest.fastcbor). It must return exactly what the decoder
# below returns, or raise to hand the bytes back to it, which then names the error.
_fast_loads: "Callable[[bytes], object] | None" = None


def use_fast_decoder(decoder: "Callable[[bytes], object] | None") -> None:
    """Install ``decoder(data) -> value`` (raising to decline), or None to remove it."""
    global _fast_loads
    _fast_loads = decoder


def loads(data: bytes, max_depth: int = MAX_DEPTH) -> object:
    """Decode exactly one deterministic CBOR item that fills all of ``data``."""
    if _fast_loads is not None and max_depth == MAX_DEPTH and type(data) is bytes:
        try:
            return _fast_loads(data)
        except Exception:  # declined: the pure decoder decides, and says why
            pass
    if not isinstance(data, (bytes, bytearray)):
        raise MisuseError("loads() takes bytes, not %s" % type(data).__name__)
    if not data:
        raise CborError(EMPTY, "no bytes")
    decoder = _Decoder(data if isinstance(data, bytes) else bytes(data), max_depth)
    value = decoder.item(0)
    if decoder.pos != decoder.end:
        raise CborError(TRAILING_BYTES, "%d bytes after the item" % (decoder.end - decoder.pos))
    return value


def load_prefix(data: bytes, offset: int = 0, max_depth: int = MAX_DEPTH) -> tuple:
    """Decode one item starting at ``offset``; return ``(value, next_offset)``.

    Used to walk a sequence of items, e.g. a streamed evidence bundle.
    """
    decoder = _Decoder(data if isinstance(data, bytes) else bytes(data), max_depth)
    decoder.pos = offset
    if offset >= decoder.end:
        raise CborError(TRUNCATED, "no item at offset %d" % offset)
    value = decoder.item(0)
    return value, decoder.pos


def encode_head(major: int, value: int) -> bytes:
    """The head of an item: lets a writer stream an array's elements after it."""
    out = bytearray()
    _head(out, major, value)
    return bytes(out)


def decode_head(data: bytes, offset: int = 0) -> tuple:
    """``(major, argument, next_offset)`` of the item at ``offset``, in shortest form.

    Lets a reader walk into a streamed array without decoding it whole.
    """
    if offset >= len(data):
        raise CborError(TRUNCATED, "no item at offset %d" % offset)
    decoder = _Decoder(data, MAX_DEPTH)
    decoder.pos = offset + 1
    major = data[offset] >> 5
    ai = data[offset] & 0x1F
    if major == 7:
        raise CborError(RESERVED, "a simple value where a head was expected at offset %d" % offset)
    value = ai if ai < 24 else decoder._argument(ai, major)
    return major, value, decoder.pos
