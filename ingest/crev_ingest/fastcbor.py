"""cbor2's C decoder as the core's fast path (crev.cbor.use_fast_decoder), on CPython.

The core's pure decoder stays what decides: the fast path returns a value
only when the core's deterministic encoder turns that value back into
exactly the bytes given. Every other input (not deterministic, a float, a
semantic tag cbor2 would turn into a date, a key out of range, anything
cbor2 refuses) is handed back to the pure decoder, which accepts or names
the problem as it always has.
"""

from typing import Any

import cbor2

from crev import cbor
from crev.errors import CrevError


def _tag(_decoder: Any, tag: cbor2.CBORTag) -> cbor.Tag:
    return cbor.Tag(tag.tag, tag.value)


def fast_loads(data: bytes) -> object:
    value = cbor2.loads(data, tag_hook=_tag)
    try:
        same = cbor.dumps(value) == data
    except CrevError as err:
        raise ValueError("not in the core's subset: %s" % err) from None
    if not same:
        raise ValueError("not the deterministic encoding")
    return value


def install() -> None:
    cbor.use_fast_decoder(fast_loads)
