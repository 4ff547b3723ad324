"""Register images of the simulated devices, written from the vendors' maps.

Deliberately independent of the gateway's profile files: if both sides read
the same table, an address mistake would cancel out and no test would see it.

- Eastron SDM630 / SDM120: input registers, float32 big-endian (word swap
  optional, to simulate a misconfigured point).
- SunSpec: holding registers from a base address (0, 40000 or 50000): the
  "SunS" marker, common model 1, inverter model 103, meter model 203, end
  marker 0xFFFF. Energies are acc32 Wh with scale factor 0.
"""

import struct
from fractions import Fraction

# SDM630 input register addresses (0-based; 30001 is address 0).
SDM_VOLTAGE_L1 = 0x0000
SDM_POWER_SDM120 = 0x000C
SDM_POWER_SDM630 = 0x0034
SDM_FREQUENCY = 0x0046
SDM_IMPORT_KWH = 0x0048
SDM_EXPORT_KWH = 0x004A
SDM_TOTAL_KWH = 0x0156
SDM_INPUT_SIZE = 0x0160
SDM_SERIAL_HOLDING = 0xFC00

SUNSPEC_BASES = (0, 40000, 50000)
COMMON_LEN = 66
INVERTER_LEN = 50
METER_LEN = 105


def float32_words(value: float, swap: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if swap else [hi, lo]


def u32_words(value: int, swap: bool = False) -> list[int]:
    hi, lo = (value >> 16) & 0xFFFF, value & 0xFFFF
    return [lo, hi] if swap else [hi, lo]


def float32_kwh_as_mwh(words: list[int]) -> int:
    """What a float32 kWh register certifies, in mWh (exact, half to even)."""
    (value,) = struct.unpack(">f", struct.pack(">HH", words[0], words[1]))
    return round(Fraction(value) * 1_000_000)  # Fraction rounds half to even


def sdm_input_registers(
    import_mwh: int, export_mwh: int, power_w: float, swap: bool = False, sdm120: bool = False
) -> tuple[list[int], dict[str, int]]:
    """The SDM input register block, and the counters it certifies in mWh."""
    regs = [0] * SDM_INPUT_SIZE
    imp = float32_words(import_mwh / 1e6, swap)
    exp = float32_words(export_mwh / 1e6, swap)
    certified_import = float32_kwh_as_mwh(float32_words(import_mwh / 1e6))
    certified_export = float32_kwh_as_mwh(float32_words(export_mwh / 1e6))
    total = float32_words((certified_import + certified_export) / 1e6, swap)
    regs[SDM_VOLTAGE_L1 : SDM_VOLTAGE_L1 + 2] = float32_words(230.1, swap)
    power_at = SDM_POWER_SDM120 if sdm120 else SDM_POWER_SDM630
    regs[power_at : power_at + 2] = float32_words(power_w, swap)
    regs[SDM_FREQUENCY : SDM_FREQUENCY + 2] = float32_words(50.0, swap)
    regs[SDM_IMPORT_KWH : SDM_IMPORT_KWH + 2] = imp
    regs[SDM_EXPORT_KWH : SDM_EXPORT_KWH + 2] = exp
    regs[SDM_TOTAL_KWH : SDM_TOTAL_KWH + 2] = total
    return regs, {
        "import": certified_import,
        "export": certified_export,
        "total": float32_kwh_as_mwh(float32_words((certified_import + certified_export) / 1e6)),
    }


def _text(value: str, registers: int) -> list[int]:
    raw = value.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _s16(value: int) -> int:
    return value & 0xFFFF


def sunspec_common(serial: str, model: str) -> list[int]:
    data = [0] * COMMON_LEN
    data[0:16] = _text("crev-sim", 16)  # Mn
    data[16:32] = _text(model, 16)  # Md
    data[40:48] = _text("1.0", 8)  # Vr
    data[48:64] = _text(serial, 16)  # SN
    data[64] = 1  # DA
    return [1, COMMON_LEN, *data]


def sunspec_inverter(wh: int, power_w: float, swap: bool = False) -> list[int]:
    """Model 103 (three-phase inverter): W with W_SF, WH acc32 with WH_SF."""
    data = [0] * INVERTER_LEN
    data[8:11] = [2301, 2299, 2302]  # PhVphA..C
    data[11] = _s16(-1)  # V_SF
    data[12] = min(32767, round(power_w))  # W
    data[13] = 0  # W_SF
    data[14] = 5000  # Hz
    data[15] = _s16(-2)  # Hz_SF
    data[22:24] = u32_words(wh, swap)  # WH
    data[24] = 0  # WH_SF
    data[36] = 4  # St: MPPT
    return [103, INVERTER_LEN, *data]


def sunspec_meter(import_wh: int, export_wh: int, power_w: float, swap: bool = False) -> list[int]:
    """Model 203 (wye three-phase meter): TotWhExp/TotWhImp acc32, TotWh_SF."""
    data = [0] * METER_LEN
    data[5:9] = [2300, 2300, 2301, 2299]  # PhV, PhVphA..C
    data[13] = _s16(-1)  # V_SF
    data[14] = 5000  # Hz
    data[15] = _s16(-2)  # Hz_SF
    data[16] = _s16(round(max(-32768, min(32767, power_w))))  # W (import positive)
    data[20] = 0  # W_SF
    data[36:38] = u32_words(export_wh, swap)  # TotWhExp
    data[44:46] = u32_words(import_wh, swap)  # TotWhImp
    data[52] = 0  # TotWh_SF
    return [203, METER_LEN, *data]


def sunspec_image(models: list[list[int]]) -> list[int]:
    """'SunS', the model chain, and the end marker."""
    image = [0x5375, 0x6E53]
    for model in models:
        image.extend(model)
    image.extend([0xFFFF, 0])
    return image
