"""Meter register words to integer mWh, without floating point (SPEC §2).

MicroPython ports use single-precision floats, which cannot hold a counter of
12345677734 mWh exactly, so the float32 bits are decoded with integers.
"""

from crev.errors import RegisterError


def _round_half_even(numerator: int, denominator: int) -> int:
    quotient = numerator // denominator
    twice_remainder = 2 * (numerator - quotient * denominator)
    if twice_remainder > denominator or (twice_remainder == denominator and quotient & 1):
        quotient += 1
    return quotient


MWH_PER_KWH = 1000000
MWH_PER_WH = 1000


def float32_bits_to_mwh(bits: int, mwh_per_unit: int = MWH_PER_KWH) -> int:
    """A float32 energy value (kWh by default), given as its 32 raw bits, in mWh.

    Rounds half to even. ``mwh_per_unit`` is MWH_PER_WH for registers in Wh.
    """
    if not 0 <= bits <= 0xFFFFFFFF:
        raise RegisterError("BAD_REGISTER", "float32 bits out of range")
    negative = bits >> 31
    exponent = (bits >> 23) & 0xFF
    fraction = bits & 0x7FFFFF
    if exponent == 0xFF:
        raise RegisterError("NOT_A_NUMBER", "register holds NaN or infinity (0x%08x)" % bits)
    if exponent == 0:
        mantissa = fraction  # subnormal: 0.fraction * 2**-126
        shift = -149
    else:
        mantissa = fraction | 0x800000
        shift = exponent - 150
    if mantissa == 0:
        return 0  # +0.0 and -0.0
    if negative:
        raise RegisterError("NEGATIVE_COUNTER", "an energy counter cannot be negative (0x%08x)" % bits)
    # value = mantissa * 2**shift units, so mWh = mantissa * mwh_per_unit * 2**shift.
    scaled = mantissa * mwh_per_unit
    if shift >= 0:
        return scaled << shift
    return _round_half_even(scaled, 1 << -shift)


def float32_words_to_mwh(high: int, low: int, mwh_per_unit: int = MWH_PER_KWH) -> int:
    """Two 16-bit registers, high word first, holding a float32 counter, in mWh."""
    if not (0 <= high <= 0xFFFF and 0 <= low <= 0xFFFF):
        raise RegisterError("BAD_REGISTER", "a register word is 16 bits")
    return float32_bits_to_mwh((high << 16) | low, mwh_per_unit)


def scaled_wh_to_mwh(wh: int, scale_exponent: int) -> int:
    """A SunSpec energy counter ``wh * 10**scale_exponent`` Wh, in mWh.

    Rounds half to even when the scale factor leaves a fraction of a mWh.
    """
    if wh < 0:
        raise RegisterError("NEGATIVE_COUNTER", "an energy counter cannot be negative")
    exponent = scale_exponent + 3  # Wh -> mWh
    if exponent >= 0:
        return wh * int(10**exponent)
    return _round_half_even(wh, int(10**-exponent))


def words_value(words: list, word_order: str = "big", byte_order: str = "big") -> int:
    """A multi-register value as an unsigned integer.

    ``byte_order`` "little" swaps the bytes within each word; ``word_order``
    "little" puts the low word first (both are vendor quirks).
    """
    if byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order == "little":
        words = list(reversed(words))
    value = 0
    for word in words:
        value = (value << 16) | word
    return value


def counter_mwh(register_type: str, value: int, mwh_per_unit: int, scale_exponent: int = 0) -> int:
    """An energy counter register in integer mWh. Raises RegisterError if impossible.

    A float32 counter that is not zero but below 1 Wh is refused: no
    certified counter holds such a value, but a register pair read in the
    wrong word order usually decodes to a tiny (or subnormal) number.
    """
    if register_type == "float32":
        mwh = float32_bits_to_mwh(value, mwh_per_unit)
        if value & 0x7FFFFFFF and mwh < MWH_PER_WH:
            raise RegisterError("IMPLAUSIBLE", "float32 0x%08x is a counter below 1 Wh but not zero" % value)
        return mwh
    if register_type in ("acc32", "uint32", "uint16"):
        return scaled_wh_to_mwh(value, scale_exponent) * (mwh_per_unit // MWH_PER_WH)
    raise RegisterError("BAD_REGISTER", "a %s register cannot hold an energy counter" % register_type)
