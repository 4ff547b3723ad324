"""cbor2's C decoder as the core's fast path (crev.cbor.use_fast_decoder), on CPython.

The core's pure decoder stays what decides. The fast path returns a value
only when that value lies in the core's subset (SPEC §3: integers of 64
bits, byte and text strings, arrays, maps with keys 0..23, tags, true,
false, null; shallow) and cbor2's C encoder, in canonical form, gives back
exactly the bytes given. Within that subset canonical CBOR and the core's
deterministic CBOR are the same encoding: shortest heads, definite lengths,
and keys of one byte each, whose length-first order is their bytewise
order. Every other input (not deterministic, a float, a semantic tag cbor2
turns into a date or a big number, a key out of range, anything cbor2
refuses) goes back to the pure decoder, which accepts or names the problem
as it always has.
"""

from typing import Any

import cbor2

from crev import cbor
from crev.cose import COSE_SIGN1_TAG
from crev.reading import Reading

# Readings nest four deep; anything deeper is left to the pure decoder and its MAX_DEPTH.
MAX_FAST_DEPTH = 8


def _tag(_decoder: Any, tag: cbor2.CBORTag) -> cbor.Tag:
    return cbor.Tag(tag.tag, tag.value)


def _encode_tag(encoder: Any, value: Any) -> None:
    if type(value) is not cbor.Tag:
        raise ValueError("not in the core's subset: %s" % type(value).__name__)
    encoder.encode(cbor2.CBORTag(value.tag, value.value))


def _in_subset(value: object, depth: int) -> bool:
    kind = type(value)
    if kind is int:
        return -(2**64) <= value < 2**64  # type: ignore[operator]
    if kind is bytes or kind is str or kind is bool or value is None:
        return True
    if depth >= MAX_FAST_DEPTH:
        return False
    if kind is list:
        return all(_in_subset(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return all(
            type(key) is int and 0 <= key <= 23 and _in_subset(item, depth + 1)
            for key, item in value.items()  # type: ignore[attr-defined]
        )
    if kind is cbor.Tag:
        return 0 <= value.tag < 2**64 and _in_subset(value.value, depth + 1)  # type: ignore[attr-defined]
    return False


def fast_loads(data: bytes) -> object:
    value = cbor2.loads(data, tag_hook=_tag)
    if not _in_subset(value, 0):
        raise ValueError("not in the core's subset")
    if cbor2.dumps(value, canonical=True, default=_encode_tag) != data:
        raise ValueError("not the deterministic encoding")
    return value


def install() -> None:
    cbor.use_fast_decoder(fast_loads)


def decode_verified(raw: bytes) -> Reading:
    """A reading that a worker verified in full (SPEC §5 steps 1-6) before committing it: decoded only.

    The integrator takes pending readings that passed every check in the
    worker, so it need not check determinism, the schema or the signature
    again. Anything unexpected raises, and the caller falls back to the
    checking decoder, which names the problem.
    """
    envelope = cbor2.loads(raw)
    if type(envelope) is not cbor2.CBORTag or envelope.tag != COSE_SIGN1_TAG:
        raise ValueError("not a COSE_Sign1")
    return Reading.from_map(cbor2.loads(envelope.value[2]))
