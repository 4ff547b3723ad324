"""cbor2's C decoder as the fast path: it gives what the pure decoder gives, or hands the bytes back."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crev import cbor
from crev.errors import CborError
from crev_ingest.fastcbor import fast_loads


def _values(tags: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**64), max_value=2**64 - 1)
        | st.binary(max_size=40)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.integers(0, 23), inner, max_size=5)
            | st.builds(cbor.Tag, tags, inner)
        ),
        max_leaves=20,
    )


# Any tag; and tags cbor2 gives no meaning of its own (COSE_Sign1 is 18), which it hands over as they are.
values = _values(st.integers(0, 2**32))
plain_tags = _values(st.sampled_from([18, 61, 96, 98, 1000, 40000]))


def _pure(data: bytes) -> Any:
    saved = cbor._fast_loads
    cbor.use_fast_decoder(None)
    try:
        return cbor.loads(data)
    except CborError as err:
        return ("error", err.code)
    finally:
        cbor.use_fast_decoder(saved)


def _fast(data: bytes) -> Any:
    try:
        return fast_loads(data)
    except Exception:
        return "declined"


@given(plain_tags)
@settings(max_examples=300, deadline=None)
def test_every_deterministic_encoding_takes_the_fast_path_to_the_same_value(value: Any) -> None:
    data = cbor.dumps(value)
    assert _fast(data) == _pure(data) == cbor.loads(data)


@given(values)
@settings(max_examples=300, deadline=None)
def test_a_tag_cbor2_gives_a_meaning_is_declined_or_read_the_same(value: Any) -> None:
    data = cbor.dumps(value)
    fast = _fast(data)
    assert fast == "declined" or fast == _pure(data)
    assert cbor.loads(data) == _pure(data)


@given(values, st.data())
@settings(max_examples=400, deadline=None)
def test_a_changed_byte_is_never_accepted_by_the_fast_path_alone(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(cbor.dumps(value))
    position = data.draw(st.integers(0, len(encoded)))
    edit = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    if edit == "flip" and position < len(encoded):
        encoded[position] ^= data.draw(st.integers(1, 255))
    elif edit == "insert":
        encoded.insert(position, data.draw(st.integers(0, 255)))
    elif position < len(encoded):
        del encoded[position]
    changed = bytes(encoded)
    fast = _fast(changed)
    if fast != "declined":
        assert fast == _pure(changed), changed.hex()


@pytest.mark.parametrize(
    ("hex_bytes", "code"),
    [
        ("fa3f800000", cbor.FLOAT),  # 1.0 as a float
        ("c11a514b67b0", None),  # tag 1, a date cbor2 makes a datetime: the core keeps the tag
        ("c249010000000000000000", None),  # tag 2, a bignum cbor2 makes an int: the core keeps the tag
        ("1817", cbor.NON_SHORTEST),  # 23 in two bytes
        ("9f01ff", cbor.INDEFINITE_LENGTH),
        ("a202000100", cbor.UNSORTED_KEYS),
        ("a201000100", cbor.DUPLICATE_KEY),
        ("a11820f6", cbor.KEY_OUT_OF_RANGE),
        ("0102", cbor.TRAILING_BYTES),
    ],
)
def test_what_cbor2_reads_otherwise_goes_to_the_pure_decoder(hex_bytes: str, code: str | None) -> None:
    data = bytes.fromhex(hex_bytes)
    fast = _fast(data)
    pure = _pure(data)
    if code is None:  # the core accepts it, as a plain tag: the fast path must not answer otherwise
        assert fast == "declined" and isinstance(pure, cbor.Tag) and cbor.loads(data) == pure
    else:
        assert fast == "declined" and pure == ("error", code)
        with pytest.raises(CborError) as caught:
            cbor.loads(data)  # through the installed fast path: the same error, named
        assert caught.value.code == code


def test_ingest_installs_the_fast_path() -> None:
    import crev_ingest.validate  # noqa: F401  (installs it on import)

    assert cbor._fast_loads is fast_loads


def test_the_core_vectors_read_the_same_through_the_fast_path(
    vectors: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cbor, "_fast_loads", fast_loads)
    for case in vectors["cbor_reject"]:
        data = bytes.fromhex(case["hex"])
        assert _fast(data) == "declined", case["name"]
        with pytest.raises(CborError) as caught:
            cbor.loads(data)  # the fast path installed: the pure decoder still names it
        assert caught.value.code == case["code"], case["name"]
    for case in vectors["cbor_encode"]:
        data = bytes.fromhex(case["hex"])
        assert _fast(data) == _pure(data) != "declined", case["name"]


def test_nesting_deeper_than_a_reading_goes_to_the_pure_decoder() -> None:
    value: Any = 0
    for _ in range(cbor.MAX_DEPTH + 1):
        value = [value]
    data = cbor.dumps(value)  # the encoder allows what the decoder refuses as TOO_DEEP
    assert _fast(data) == "declined" and _pure(data) == ("error", cbor.TOO_DEEP)
