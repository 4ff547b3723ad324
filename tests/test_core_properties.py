"""Hypothesis properties of the portable core (STYLE: level 1 tests)."""

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crev import cbor, dgcc
from crev.errors import CborError, ReadingError
from crev.keys import SigningKey
from crev.reading import ChainHead, Reading, verify_reading

# The core's own decoder, not ingest's fast path, which another test module may have installed.
pytestmark = pytest.mark.usefixtures("pure_cbor")


KEY = SigningKey(bytes(range(32)))

counters = st.integers(min_value=0, max_value=10**13)
deltas = st.integers(min_value=0, max_value=10**10)


@st.composite
def channel_pairs(draw: st.DrawFn) -> tuple[list[tuple[int, str, int, int]], list[tuple[int, str, int, int]]]:
    """Previous and current channels with non-negative deltas."""
    n_gen = draw(st.integers(min_value=1, max_value=5))
    n_grid = draw(st.integers(min_value=0, max_value=2))
    before: list[tuple[int, str, int, int]] = []
    after: list[tuple[int, str, int, int]] = []
    for j in range(n_gen):
        source = draw(st.integers(min_value=1, max_value=5))
        start = draw(counters)
        before.append((dgcc.ROLE_GENERATION, "gen-%d" % j, source, start))
        after.append((dgcc.ROLE_GENERATION, "gen-%d" % j, source, start + draw(deltas)))
    for k in range(n_grid):
        for role in (dgcc.ROLE_IMPORT, dgcc.ROLE_EXPORT):
            start = draw(counters)
            before.append((role, "grid-%d" % k, dgcc.SOURCE_GRID, start))
            after.append((role, "grid-%d" % k, dgcc.SOURCE_GRID, start + draw(deltas)))
    return before, after


@given(channel_pairs())
def test_energy_balance(pair: tuple[list[tuple[int, str, int, int]], list[tuple[int, str, int, int]]]) -> None:
    before, after = pair
    energies, generator_self, flags = dgcc.apply_rules(before, after)
    assert energies is not None and generator_self is not None
    generated, imported, exported, self_mwh, demand = energies
    assert min(energies) >= 0
    assert sum(share for _, share in generator_self) == self_mwh
    assert all(share >= 0 for _, share in generator_self)
    assert self_mwh <= generated
    if exported <= generated:
        assert flags == 0
        assert self_mwh == generated - exported
        assert demand == self_mwh + imported
    else:
        assert flags == dgcc.EXPORT_EXCEEDS_GEN
        assert self_mwh == 0
        assert demand == max(0, generated + imported - exported)


@given(channel_pairs(), st.integers(min_value=0, max_value=40))
def test_any_negative_delta_is_a_counter_reset(
    pair: tuple[list[tuple[int, str, int, int]], list[tuple[int, str, int, int]]], which: int
) -> None:
    before, after = pair
    index = which % len(after)
    role, meter_id, source, _ = after[index]
    if before[index][3] == 0:
        return  # cannot go below zero
    after = list(after)
    after[index] = (role, meter_id, source, before[index][3] - 1)
    assert dgcc.apply_rules(before, after) == (None, None, dgcc.COUNTER_RESET)


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8), st.integers(0, 10**12))
def test_allocation_sums_exactly_and_stays_proportional(generation: list[int], self_seed: int) -> None:
    total = sum(generation)
    self_mwh = self_seed % (total + 1)
    shares = dgcc.allocate_self(self_mwh, generation)
    assert sum(shares) == self_mwh
    for share, g in zip(shares, generation, strict=True):
        if total:
            exact_floor = self_mwh * g // total
            assert exact_floor <= share <= exact_floor + 1


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.integers(min_value=0, max_value=23), children, max_size=6)
        | st.builds(cbor.Tag, st.integers(min_value=0, max_value=2**32), children)
    ),
    max_leaves=30,
)


@given(cbor_values)
def test_cbor_round_trip(value: object) -> None:
    encoded = cbor.dumps(value)
    assert cbor.loads(encoded) == value
    assert cbor.dumps(cbor.loads(encoded)) == encoded


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_decoder_raises_only_its_own_errors(data: bytes) -> None:
    with contextlib.suppress(CborError):
        cbor.loads(data)


@given(cbor_values, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
@settings(max_examples=1000)
def test_mutated_cbor_raises_only_decoder_errors(value: object, position: int, byte: int) -> None:
    data = bytearray(cbor.dumps(value))
    data[position % len(data)] = byte
    with contextlib.suppress(CborError):
        cbor.loads(bytes(data))


@st.composite
def signed_readings(draw: st.DrawFn) -> bytes:
    before, after = draw(channel_pairs())
    seq = draw(st.integers(min_value=0, max_value=2**40))
    prev = bytes(32) if seq == 0 else draw(st.binary(min_size=32, max_size=32))
    t1 = draw(st.integers(min_value=61, max_value=2**33))
    head = ChainHead(seq, prev, t1 - 60, before)
    flags = draw(st.sampled_from([0, dgcc.CLOCK_STEP, dgcc.RESTARTED, dgcc.METER_ERROR]))
    reading = head.next_reading("dgc-prop-0001", t1, 1, after, "crev-test/1", flags)
    return reading.sign(KEY)


@given(signed_readings(), st.integers(min_value=0), st.integers(min_value=1, max_value=255))
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_any_single_byte_change_fails(cose: bytes, position: int, xor: int) -> None:
    verify_reading(cose, KEY.public_key)  # the original is good
    tampered = bytearray(cose)
    tampered[position % len(tampered)] ^= xor
    try:
        verify_reading(bytes(tampered), KEY.public_key)
    except ReadingError:
        return
    raise AssertionError("a changed byte at %d still verified" % (position % len(tampered)))


@given(signed_readings())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_reading_round_trip(cose: bytes) -> None:
    reading = Reading.from_cose(cose)
    assert reading.sign(KEY) == cose
    assert ChainHead.after(cose).next_seq == reading.seq + 1


@given(st.binary(max_size=400))
@settings(max_examples=2000)
def test_random_bytes_are_never_a_reading(data: bytes) -> None:
    try:
        Reading.from_cose(data)
    except ReadingError:
        return
    raise AssertionError("random bytes parsed as a reading")
