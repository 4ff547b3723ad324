"""Class 0x028801 (crev.smartmeter): counters to mWh exactly, roll-over,
date-times, the history properties and their no-data markers."""

import contextlib
import datetime
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crev import smartmeter as sm
from crev.errors import MisuseError
from crev.smartmeter import Scale, SlotValues, SmartMeterError

UNIT_KWH = {
    0x00: Fraction(1),
    0x01: Fraction(1, 10),
    0x02: Fraction(1, 100),
    0x03: Fraction(1, 1000),
    0x04: Fraction(1, 10000),
    0x0A: Fraction(10),
    0x0B: Fraction(100),
    0x0C: Fraction(1000),
    0x0D: Fraction(10000),
}
JST = datetime.timezone(datetime.timedelta(hours=9))

scales = st.builds(
    Scale,
    coefficient=st.integers(1, sm.MAX_COEFFICIENT),
    unit_code=st.sampled_from(sorted(UNIT_KWH)),
    digits=st.integers(1, sm.MAX_DIGITS),
)


@given(scales, st.data())
def test_to_mwh_is_the_exact_rational_product(scale: Scale, data: st.DataObject) -> None:
    raw = data.draw(st.integers(0, scale.modulus - 1))
    exact = raw * scale.coefficient * UNIT_KWH[scale.unit_code] * 10**6
    assert exact.denominator == 1, "every defined unit gives whole mWh"
    assert scale.to_mwh(raw) == int(exact)
    assert isinstance(scale.to_mwh(raw), int)


def test_the_finest_step_is_100_mwh() -> None:
    assert Scale(1, 0x04, 8).mwh_per_step == 100
    assert min(Scale(1, code, 8).mwh_per_step for code in UNIT_KWH) == 100


@pytest.mark.parametrize(
    ("coefficient", "unit", "digits", "raw", "mwh"),
    [
        (1, 0x01, 6, 123456, 12_345_600_000),  # 12345.6 kWh
        (1, 0x00, 6, 1, 1_000_000),
        (40, 0x02, 7, 12345, 4_938_000_000),  # a CT meter: 123.45 kWh x 40
        (1, 0x04, 8, 12345678, 1_234_567_800),
        (2, 0x0A, 5, 3, 60_000_000),  # 60 kWh
        (999999, 0x0D, 8, 99999999, 99999999 * 999999 * 10**10),
    ],
)
def test_conversions(coefficient: int, unit: int, digits: int, raw: int, mwh: int) -> None:
    assert Scale(coefficient, unit, digits).to_mwh(raw) == mwh


@given(scales, st.data())
def test_delta_across_roll_over(scale: Scale, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, scale.modulus - 1))
    steps = data.draw(st.integers(0, scale.modulus - 1))
    later = (start + steps) % scale.modulus
    assert scale.delta_steps(start, later) == steps
    assert scale.delta_mwh(start, later) == steps * scale.mwh_per_step


def test_roll_over_examples() -> None:
    six = Scale(1, 0x01, 6)
    assert six.delta_mwh(999_999, 0) == 100_000
    assert six.delta_mwh(999_990, 15) == 2_500_000
    assert Scale(1, 0x00, 1).delta_steps(9, 2) == 3


def test_raw_outside_the_digits_and_no_data_are_refused() -> None:
    six = Scale(1, 0x01, 6)
    for raw, code in ((1_000_000, "OUT_OF_RANGE"), (-1, "OUT_OF_RANGE"), (sm.NO_DATA, "NO_DATA"), (None, "NO_DATA")):
        with pytest.raises(SmartMeterError) as err:
            six.to_mwh(raw)
        assert err.value.code == code
    with pytest.raises(SmartMeterError):
        six.delta_mwh(5, sm.NO_DATA)


def test_scale_from_the_edts_with_and_without_a_coefficient() -> None:
    assert sm.scale_from(None, b"\x01", b"\x06").mwh_per_step == 100_000
    assert sm.scale_from(b"", b"\x01", b"\x06").coefficient == 1, "Get_SNA's empty D3 means 1"
    assert sm.scale_from(b"\x00\x00\x00\x28", b"\x02", b"\x07").mwh_per_step == 400_000
    with pytest.raises(SmartMeterError) as err:
        sm.scale_from(None, b"\x05", b"\x06")
    assert err.value.code == "UNKNOWN_UNIT"
    with pytest.raises(MisuseError):
        Scale(0, 0x01, 6)


@given(st.integers(0, 253402300799 - 9 * 3600))
def test_calendar_agrees_with_datetime(t: int) -> None:
    local = datetime.datetime.fromtimestamp(t, JST)
    expected = (local.year, local.month, local.day, local.hour, local.minute, local.second)
    assert sm.local_datetime(t) == expected
    assert sm.unix_time(*expected) == t


def test_fixed_value_and_pair() -> None:
    t = int(datetime.datetime(2026, 6, 21, 13, 30, tzinfo=JST).timestamp())
    normal = sm.decode_fixed(sm.encode_fixed(t, 4567))
    reverse = sm.decode_fixed(sm.encode_fixed(t, 89))
    assert (normal.t, normal.raw) == (t, 4567)
    assert sm.fixed_pair(normal, reverse, Scale(1, 0x01, 6)) == SlotValues(t, 456_700_000, 8_900_000)
    other = sm.decode_fixed(sm.encode_fixed(t + 1800, 90))
    with pytest.raises(SmartMeterError) as err:
        sm.fixed_pair(normal, other, Scale())
    assert err.value.code == "MISMATCH"
    with pytest.raises(SmartMeterError) as err:
        sm.decode_fixed(sm.encode_fixed(t, sm.NO_DATA))
    assert err.value.code == "NO_DATA"
    with pytest.raises(MisuseError):
        sm.encode_fixed(t + 60, 1)


def test_fixed_value_in_another_time_zone() -> None:
    edt = bytes.fromhex("07EA0615010000000004D2")  # 2026-06-21 01:00:00
    assert sm.decode_fixed(edt, utc_offset_s=0).t == int(
        datetime.datetime(2026, 6, 21, 1, tzinfo=datetime.UTC).timestamp()
    )


def test_history2_leaves_no_data_out() -> None:
    t = int(datetime.datetime(2026, 6, 21, 12, 0, tzinfo=JST).timestamp())
    edt = sm.encode_history2(t, [(120, 7), (None, 6), (118, None), (117, 5)])
    assert sm.decode_history2(edt) == [(t, 120, 7), (t - 1800, None, 6), (t - 3600, 118, None), (t - 5400, 117, 5)]
    slots = sm.history2_slots(edt, Scale(1, 0x01, 6))
    assert slots == [SlotValues(t, 12_000_000, 700_000), SlotValues(t - 5400, 11_700_000, 500_000)]
    assert sm.decode_history2_time(sm.encode_history2_time(t, 4)) == (t, 4)
    with pytest.raises(MisuseError):
        sm.encode_history2_time(t, 13)
    with pytest.raises(SmartMeterError) as err:
        sm.decode_history2(edt[:-1])
    assert err.value.code == "BAD_LENGTH"


def test_history1_of_a_day() -> None:
    normal = [None] * 10 + [1000 + i for i in range(38)]
    reverse = [5] * 47 + [None]
    today = (2026, 6, 21)
    slots = sm.history1_slots(sm.encode_history1(2, normal), sm.encode_history1(2, reverse), today, Scale(1, 0x00, 6))
    midnight = int(datetime.datetime(2026, 6, 19, tzinfo=JST).timestamp())
    assert [s.t for s in slots] == [midnight + 1800 * i for i in range(10, 47)]
    assert slots[0] == SlotValues(midnight + 18000, 1_000_000_000, 5_000_000)
    with pytest.raises(SmartMeterError) as err:
        sm.history1_slots(sm.encode_history1(2, normal), sm.encode_history1(3, reverse), today, Scale())
    assert err.value.code == "MISMATCH"
    assert sm.decode_history1_day(sm.encode_history1_day(99)) == 99
    with pytest.raises(MisuseError):
        sm.encode_history1_day(100)


@given(st.binary(max_size=220))
def test_property_decoders_raise_only_their_error(edt: bytes) -> None:
    for decode in (
        sm.decode_coefficient,
        sm.decode_digits,
        sm.decode_unit,
        sm.decode_cumulative,
        sm.decode_fixed,
        sm.decode_history1,
        sm.decode_history1_day,
        sm.decode_history2,
        sm.decode_history2_time,
    ):
        with contextlib.suppress(SmartMeterError):
            decode(edt)
