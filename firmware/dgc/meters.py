"""Meters read over RTU, with the gateway's register maps in a compact form.

``crev provision`` turns the gateway's profile files into the JSON this
module reads: per meter its unit, role, source, counter and the points it
needs (serial, energy counters), each with function, address, type, unit and
word and byte order. Decoding is the core's (``words_value``,
``counter_mwh``), the gateway's too, so a counter gives the same mWh on both.
"""

from crev import dgcc
from crev.errors import RegisterError
from crev.registers import MWH_PER_KWH, MWH_PER_WH, counter_mwh, words_value

FUNCTIONS = {"holding": 3, "input": 4}
WORDS = {"float32": 2, "uint32": 2, "acc32": 2, "uint16": 1}
UNITS = {"kWh": MWH_PER_KWH, "Wh": MWH_PER_WH}
SUM_TOLERANCE_MWH = 10000  # as the gateway: 10 Wh plus one part per million
ROLES = {"generation": dgcc.ROLE_GENERATION}
SOURCES = {name: i for i, name in enumerate(dgcc.SOURCE_NAMES)}


class MeterError(Exception):
    pass


def read_meter(bus: object, meter: dict) -> tuple:
    """``(serial, {"import"|"export"|"total": mWh})``; MeterError if any read or check fails."""
    values = {}
    for name, point in meter["points"].items():
        count = WORDS[point["type"]]
        try:
            words = bus.read(meter["unit"], FUNCTIONS[point["function"]], point["address"], count)  # type: ignore[attr-defined]
        except Exception as err:  # a timeout, a CRC error, an exception reply: no value, never a guess
            raise MeterError("%s: %s: %s" % (meter["name"], name, err))
        values[name] = words_value(words, point.get("word_order", "big"), point.get("byte_order", "big"))
    energies = {}
    for name, value in values.items():
        if name.endswith("_energy"):
            try:
                point = meter["points"][name]
                energies[name[: -len("_energy")]] = counter_mwh(point["type"], value, UNITS[point["unit"]])
            except RegisterError as err:
                raise MeterError("%s: %s: %s" % (meter["name"], name, err.detail))
    check = meter.get("sum_check")
    if check:
        a, b, total = (energies[p[: -len("_energy")]] for p in check)
        if abs(total - (a + b)) > SUM_TOLERANCE_MWH + total // 1000000:
            raise MeterError("%s: total is not import + export (check word_order)" % meter["name"])
    return meter.get("meter_id") or str(values["serial"]), energies


def channels(meters: list, samples: list) -> list:
    """The reading's channels, in the configured meter order (as the gateway builds them)."""
    out = []
    for meter, (serial, energies) in zip(meters, samples):
        if meter["role"] == "generation":
            out.append((dgcc.ROLE_GENERATION, serial, SOURCES[meter["source"]], energies[meter["counter"]]))
        else:
            out.append((dgcc.ROLE_IMPORT, serial, dgcc.SOURCE_GRID, energies["import"]))
            out.append((dgcc.ROLE_EXPORT, serial, dgcc.SOURCE_GRID, energies["export"]))
    return out
