"""The low-voltage smart electric energy meter, ECHONET Lite class 0x028801 (SPEC §13).

The properties the B-route reconciliation reads, with their EDTs::

    0xD3 coefficient            4 bytes, 1..999999; absent means 1
    0xD7 effective digits       1 byte, 1..8: the counters roll over at 10^digits
    0xE1 unit                   1 byte, the kWh of one counter step (UNITS)
    0xE0 / 0xE3 cumulative      4 bytes, normal (import) / reverse (export)
    0xEA / 0xEB fixed-time      11 bytes: year (2) month day hour minute second,
                                then the 4-byte counter at that :00 or :30
    0xE5 day for history 1      1 byte, 0 (today) .. 99 days ago
    0xE2 / 0xE4 history 1       2-byte day, then 48 counters, 00:00 .. 23:30
                                of that day, normal / reverse
    0xED time for history 2     year (2) month day hour minute (0 or 30), count 1..12
    0xEC history 2              the same 6-byte time and the count, then per
                                point the normal and the reverse counter (4 + 4),
                                from that time backwards in 30-minute steps

History entries that the meter has no value for hold 0xFFFFFFFE (NO_DATA);
they decode to None, and ``Scale.to_mwh`` refuses them, so a missing slot can
never be taken for a counter value.

Energy in mWh, exactly: one counter step is ``coefficient x unit`` kWh, a
rational number whose denominator divides 10^4 (the finest unit, 0x04, is
0.0001 kWh), and a kWh is 10^6 mWh, so a step is always a whole number of
mWh (at least 100 mWh) and ``raw x step`` involves no rounding at all. A
unit code outside UNITS, which could be finer than a mWh, is refused
(UNKNOWN_UNIT) rather than rounded. Counters wrap at 10^digits steps, so a
delta is taken modulo 10^digits (``Scale.delta_mwh``).

The meter's date-times are local time; they convert to Unix seconds with the
UTC offset the caller gives (Japan: +9 h, the default), with integer
calendar arithmetic and no clock.

Errors::

    InvalidInput
     +-- SmartMeterError  code: BAD_LENGTH, OUT_OF_RANGE, UNKNOWN_UNIT,
                          BAD_TIME, NO_DATA, MISMATCH
    MisuseError           arguments this module cannot honour
"""

from crev.errors import InvalidInput, MisuseError

CLASS_EOJ = b"\x02\x88\x01"

EPC_OPERATION_STATUS = 0x80
EPC_COEFFICIENT = 0xD3
EPC_DIGITS = 0xD7
EPC_CUMULATIVE_NORMAL = 0xE0
EPC_UNIT = 0xE1
EPC_HISTORY1_NORMAL = 0xE2
EPC_CUMULATIVE_REVERSE = 0xE3
EPC_HISTORY1_REVERSE = 0xE4
EPC_HISTORY1_DAY = 0xE5
EPC_INSTANT_POWER = 0xE7
EPC_FIXED_NORMAL = 0xEA
EPC_FIXED_REVERSE = 0xEB
EPC_HISTORY2 = 0xEC
EPC_HISTORY2_TIME = 0xED

NO_DATA = 0xFFFFFFFE
MAX_COEFFICIENT = 999999
MAX_DIGITS = 8
HISTORY1_POINTS = 48
HISTORY1_MAX_DAY = 99
HISTORY2_MAX_POINTS = 12
SLOT_S = 1800
JST_OFFSET_S = 9 * 3600
MWH_PER_KWH = 1000000

# E1: the kWh of one counter step, as (numerator, denominator).
UNITS = {
    0x00: (1, 1),
    0x01: (1, 10),
    0x02: (1, 100),
    0x03: (1, 1000),
    0x04: (1, 10000),
    0x0A: (10, 1),
    0x0B: (100, 1),
    0x0C: (1000, 1),
    0x0D: (10000, 1),
}

BAD_LENGTH = "BAD_LENGTH"
OUT_OF_RANGE = "OUT_OF_RANGE"
UNKNOWN_UNIT = "UNKNOWN_UNIT"
BAD_TIME = "BAD_TIME"
NO_DATA_CODE = "NO_DATA"
MISMATCH = "MISMATCH"


class SmartMeterError(InvalidInput):
    """A smart-meter property value that cannot be used; ``code`` says why."""


def _uint(edt: bytes, size: int, what: str) -> int:
    if len(edt) != size:
        raise SmartMeterError(BAD_LENGTH, "%s: %d bytes, expected %d" % (what, len(edt), size))
    value = 0
    for byte in edt:
        value = (value << 8) | byte
    return value


def _u32(edt: bytes, at: int) -> int:
    return (edt[at] << 24) | (edt[at + 1] << 16) | (edt[at + 2] << 8) | edt[at + 3]


def _or_none(value: int) -> object:
    return None if value == NO_DATA else value


# --- calendar -------------------------------------------------------------


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if _is_leap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Days since 1970-01-01 in the proleptic Gregorian calendar, counting
    # years from March so that the leap day falls at a year's end.
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(days: int) -> tuple:
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return (year, month, day)


def check_datetime(year: int, month: int, day: int, hour: int, minute: int, second: int) -> None:
    if not (1 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= days_in_month(year, month)):
        raise SmartMeterError(BAD_TIME, "%04d-%02d-%02d is not a date" % (year, month, day))
    if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 59):
        raise SmartMeterError(BAD_TIME, "%02d:%02d:%02d is not a time of day" % (hour, minute, second))


def unix_time(
    year: int, month: int, day: int, hour: int, minute: int, second: int, utc_offset_s: int = JST_OFFSET_S
) -> int:
    """Unix seconds of a local date-time at ``utc_offset_s`` east of UTC."""
    check_datetime(year, month, day, hour, minute, second)
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - utc_offset_s


def local_datetime(t: int, utc_offset_s: int = JST_OFFSET_S) -> tuple:
    """``(year, month, day, hour, minute, second)`` of Unix time ``t`` in local time."""
    local = t + utc_offset_s
    days = local // 86400
    rest = local - days * 86400
    year, month, day = _civil_from_days(days)
    return (year, month, day, rest // 3600, (rest // 60) % 60, rest % 60)


def _fixed_time(edt: bytes, at: int, with_seconds: bool, utc_offset_s: int, what: str) -> int:
    year = (edt[at] << 8) | edt[at + 1]
    second = edt[at + 6] if with_seconds else 0
    t = unix_time(year, edt[at + 2], edt[at + 3], edt[at + 4], edt[at + 5], second, utc_offset_s)
    if edt[at + 5] not in (0, 30) or second != 0:
        raise SmartMeterError(
            BAD_TIME, "%s: %02d:%02d:%02d is not a 30-minute mark" % (what, edt[at + 4], edt[at + 5], second)
        )
    return t


# --- scale: raw counter steps to mWh -----------------------------------------


def decode_coefficient(edt: bytes) -> int:
    value = _uint(edt, 4, "coefficient (0xD3)")
    if not 1 <= value <= MAX_COEFFICIENT:
        raise SmartMeterError(OUT_OF_RANGE, "coefficient %d is not 1..%d" % (value, MAX_COEFFICIENT))
    return value


def decode_digits(edt: bytes) -> int:
    value = _uint(edt, 1, "effective digits (0xD7)")
    if not 1 <= value <= MAX_DIGITS:
        raise SmartMeterError(OUT_OF_RANGE, "effective digits %d is not 1..%d" % (value, MAX_DIGITS))
    return value


def decode_unit(edt: bytes) -> int:
    code = _uint(edt, 1, "unit (0xE1)")
    if code not in UNITS:
        raise SmartMeterError(UNKNOWN_UNIT, "unit code 0x%02X is not defined for class 0x028801" % code)
    return code


class Scale:
    """Coefficient, unit and digits of one meter: raw counters to mWh."""

    def __init__(self, coefficient: int = 1, unit_code: int = 0x01, digits: int = 6) -> None:
        if not 1 <= coefficient <= MAX_COEFFICIENT:
            raise MisuseError("coefficient %r is not 1..%d" % (coefficient, MAX_COEFFICIENT))
        if unit_code not in UNITS:
            raise MisuseError("unit code %r is not one of class 0x028801's" % (unit_code,))
        if not 1 <= digits <= MAX_DIGITS:
            raise MisuseError("digits %r is not 1..%d" % (digits, MAX_DIGITS))
        numerator, denominator = UNITS[unit_code]
        scaled = coefficient * numerator * MWH_PER_KWH
        if scaled % denominator:
            raise MisuseError("a step of this meter is not a whole number of mWh")
        self.coefficient = coefficient
        self.unit_code = unit_code
        self.digits = digits
        self.modulus = int(10**digits)
        self.mwh_per_step = scaled // denominator

    def __repr__(self) -> str:
        return "Scale(coefficient=%d, unit=0x%02X, digits=%d, step=%d mWh)" % (
            self.coefficient,
            self.unit_code,
            self.digits,
            self.mwh_per_step,
        )

    def check_raw(self, raw: object) -> int:
        if raw is None or raw == NO_DATA:
            raise SmartMeterError(NO_DATA_CODE, "the meter has no value here (0xFFFFFFFE)")
        if not isinstance(raw, int) or not 0 <= raw < self.modulus:
            raise SmartMeterError(
                OUT_OF_RANGE, "counter %r is not below 10^%d (the effective digits)" % (raw, self.digits)
            )
        return raw

    def to_mwh(self, raw: object) -> int:
        """A counter value in mWh, exactly."""
        return self.check_raw(raw) * self.mwh_per_step

    def delta_steps(self, earlier: object, later: object) -> int:
        """Steps from ``earlier`` to ``later``, across a roll-over at 10^digits."""
        return (self.check_raw(later) - self.check_raw(earlier)) % self.modulus

    def delta_mwh(self, earlier: object, later: object) -> int:
        return self.delta_steps(earlier, later) * self.mwh_per_step

    def raw_from_mwh(self, mwh: int) -> int:
        """The counter a meter shows for ``mwh`` true mWh: whole steps, rolled over."""
        if mwh < 0:
            raise MisuseError("energy cannot be negative")
        return (mwh // self.mwh_per_step) % self.modulus


def scale_from(coefficient_edt: object, unit_edt: bytes, digits_edt: bytes) -> Scale:
    """A Scale from the EDTs of 0xD3 (None or b"" when absent), 0xE1 and 0xD7."""
    coefficient = 1
    if isinstance(coefficient_edt, (bytes, bytearray)) and coefficient_edt:
        coefficient = decode_coefficient(bytes(coefficient_edt))
    return Scale(coefficient, decode_unit(unit_edt), decode_digits(digits_edt))


# --- counters ----------------------------------------------------------------


def decode_cumulative(edt: bytes) -> int:
    """0xE0 / 0xE3: the raw counter (check it with ``Scale.check_raw``)."""
    return _uint(edt, 4, "cumulative energy")


class FixedValue:
    """A 30-minute fixed-time counter: Unix time ``t`` and the raw counter."""

    def __init__(self, t: int, raw: int) -> None:
        self.t = t
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixedValue) and (self.t, self.raw) == (other.t, other.raw)

    def __repr__(self) -> str:
        return "FixedValue(t=%d, raw=%d)" % (self.t, self.raw)


def decode_fixed(edt: bytes, utc_offset_s: int = JST_OFFSET_S) -> FixedValue:
    """0xEA / 0xEB. A NO_DATA counter raises NO_DATA."""
    if len(edt) != 11:
        raise SmartMeterError(BAD_LENGTH, "fixed-time value: %d bytes, expected 11" % len(edt))
    t = _fixed_time(edt, 0, True, utc_offset_s, "fixed-time value")
    raw = _u32(edt, 7)
    if raw == NO_DATA:
        raise SmartMeterError(NO_DATA_CODE, "the fixed-time value at %d holds no data" % t)
    return FixedValue(t, raw)


def encode_fixed(t: int, raw: int, utc_offset_s: int = JST_OFFSET_S) -> bytes:
    if t % SLOT_S:
        raise MisuseError("a fixed-time value is at a 30-minute mark")
    if not 0 <= raw <= 0xFFFFFFFF:
        raise MisuseError("a counter is 4 bytes")
    year, month, day, hour, minute, second = local_datetime(t, utc_offset_s)
    return bytes([year >> 8, year & 0xFF, month, day, hour, minute, second]) + _u32_bytes(raw)


def _u32_bytes(value: int) -> bytes:
    return bytes([(value >> 24) & 0xFF, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF])


class SlotValues:
    """Import (normal) and export (reverse) counters at the end ``t`` of a slot, in mWh."""

    def __init__(self, t: int, import_mwh: int, export_mwh: int) -> None:
        self.t = t
        self.import_mwh = import_mwh
        self.export_mwh = export_mwh

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotValues) and (self.t, self.import_mwh, self.export_mwh) == (
            other.t,
            other.import_mwh,
            other.export_mwh,
        )

    def __repr__(self) -> str:
        return "SlotValues(t=%d, import_mwh=%d, export_mwh=%d)" % (self.t, self.import_mwh, self.export_mwh)


def fixed_pair(normal: FixedValue, reverse: FixedValue, scale: Scale) -> SlotValues:
    """EA and EB of one slot in mWh; they must be of the same time."""
    if normal.t != reverse.t:
        raise SmartMeterError(MISMATCH, "EA is of %d but EB of %d" % (normal.t, reverse.t))
    return SlotValues(normal.t, scale.to_mwh(normal.raw), scale.to_mwh(reverse.raw))


# --- history -----------------------------------------------------------------


def encode_history1_day(day: int) -> bytes:
    """The EDT of 0xE5: history 1 of ``day`` days ago (0 is today)."""
    if not 0 <= day <= HISTORY1_MAX_DAY:
        raise MisuseError("day %r is not 0..%d" % (day, HISTORY1_MAX_DAY))
    return bytes([day])


def decode_history1_day(edt: bytes) -> int:
    day = _uint(edt, 1, "day for historical data 1 (0xE5)")
    if day > HISTORY1_MAX_DAY:
        raise SmartMeterError(OUT_OF_RANGE, "day %d is not 0..%d" % (day, HISTORY1_MAX_DAY))
    return day


def decode_history1(edt: bytes) -> tuple:
    """0xE2 / 0xE4: ``(day, values)`` with 48 raw counters or None (no data),
    for 00:00, 00:30, ..., 23:30 of the day ``day`` days before the meter's today."""
    size = 2 + 4 * HISTORY1_POINTS
    if len(edt) != size:
        raise SmartMeterError(BAD_LENGTH, "historical data 1: %d bytes, expected %d" % (len(edt), size))
    day = (edt[0] << 8) | edt[1]
    if day > HISTORY1_MAX_DAY:
        raise SmartMeterError(OUT_OF_RANGE, "historical data 1 of day %d, not 0..%d" % (day, HISTORY1_MAX_DAY))
    return (day, [_or_none(_u32(edt, 2 + 4 * i)) for i in range(HISTORY1_POINTS)])


def encode_history1(day: int, values: list) -> bytes:
    if len(values) != HISTORY1_POINTS:
        raise MisuseError("historical data 1 has 48 values")
    out = bytearray([day >> 8, day & 0xFF])
    for value in values:
        out.extend(_u32_bytes(NO_DATA if value is None else value))
    return bytes(out)


def history1_times(today: tuple, day: int, utc_offset_s: int = JST_OFFSET_S) -> list:
    """Unix times of the 48 entries of history 1 for ``day`` days before the
    meter's local date ``today`` (year, month, day)."""
    midnight = (_days_from_civil(today[0], today[1], today[2]) - day) * 86400 - utc_offset_s
    return [midnight + SLOT_S * i for i in range(HISTORY1_POINTS)]


def encode_history2_time(t: int, count: int, utc_offset_s: int = JST_OFFSET_S) -> bytes:
    """The EDT of 0xED: history 2 of ``count`` slots ending at ``t`` and before."""
    if t % SLOT_S:
        raise MisuseError("history 2 starts at a 30-minute mark")
    if not 1 <= count <= HISTORY2_MAX_POINTS:
        raise MisuseError("history 2 holds 1..%d points, not %r" % (HISTORY2_MAX_POINTS, count))
    year, month, day, hour, minute, _ = local_datetime(t, utc_offset_s)
    return bytes([year >> 8, year & 0xFF, month, day, hour, minute, count])


def decode_history2_time(edt: bytes, utc_offset_s: int = JST_OFFSET_S) -> tuple:
    """0xED: ``(t, count)``."""
    if len(edt) != 7:
        raise SmartMeterError(BAD_LENGTH, "time for historical data 2: %d bytes, expected 7" % len(edt))
    count = edt[6]
    if not 1 <= count <= HISTORY2_MAX_POINTS:
        raise SmartMeterError(OUT_OF_RANGE, "history 2 count %d is not 1..%d" % (count, HISTORY2_MAX_POINTS))
    return (_fixed_time(edt, 0, False, utc_offset_s, "time for historical data 2"), count)


def decode_history2(edt: bytes, utc_offset_s: int = JST_OFFSET_S) -> list:
    """0xEC: ``[(t, normal, reverse), ...]`` newest first, raw counters or None."""
    if len(edt) < 7:
        raise SmartMeterError(BAD_LENGTH, "historical data 2: %d bytes, at least 7 expected" % len(edt))
    count = edt[6]
    if not 1 <= count <= HISTORY2_MAX_POINTS:
        raise SmartMeterError(OUT_OF_RANGE, "history 2 count %d is not 1..%d" % (count, HISTORY2_MAX_POINTS))
    if len(edt) != 7 + 8 * count:
        raise SmartMeterError(
            BAD_LENGTH, "historical data 2 of %d points: %d bytes, expected %d" % (count, len(edt), 7 + 8 * count)
        )
    t = _fixed_time(edt, 0, False, utc_offset_s, "historical data 2")
    points = []
    for i in range(count):
        at = 7 + 8 * i
        points.append((t - SLOT_S * i, _or_none(_u32(edt, at)), _or_none(_u32(edt, at + 4))))
    return points


def encode_history2(t: int, points: list, utc_offset_s: int = JST_OFFSET_S) -> bytes:
    """0xEC from ``[(normal, reverse), ...]`` newest first (None for no data)."""
    out = bytearray(encode_history2_time(t, len(points), utc_offset_s))
    for normal, reverse in points:
        out.extend(_u32_bytes(NO_DATA if normal is None else normal))
        out.extend(_u32_bytes(NO_DATA if reverse is None else reverse))
    return bytes(out)


def history2_slots(edt: bytes, scale: Scale, utc_offset_s: int = JST_OFFSET_S) -> list:
    """SlotValues for every point of 0xEC that has both counters; points
    with no data are left out, never filled in."""
    found = []
    for t, normal, reverse in decode_history2(edt, utc_offset_s):
        if normal is None or reverse is None:
            continue
        found.append(SlotValues(t, scale.to_mwh(normal), scale.to_mwh(reverse)))
    return found


def history1_slots(
    normal_edt: bytes, reverse_edt: bytes, today: tuple, scale: Scale, utc_offset_s: int = JST_OFFSET_S
) -> list:
    """SlotValues from 0xE2 and 0xE4 of the same day (entries with no data left out)."""
    day, normal = decode_history1(normal_edt)
    other_day, reverse = decode_history1(reverse_edt)
    if day != other_day:
        raise SmartMeterError(MISMATCH, "E2 is of day %d but E4 of day %d" % (day, other_day))
    found = []
    for t, imp, exp in zip(history1_times(today, day, utc_offset_s), normal, reverse):
        if imp is None or exp is None:
            continue
        found.append(SlotValues(t, scale.to_mwh(imp), scale.to_mwh(exp)))
    return found
