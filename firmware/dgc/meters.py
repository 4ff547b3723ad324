"""Meters read over RTU, with the gateway's register maps in a compact form.

``crev provision`` turns the gateway's profile files into the JSON this
module reads: per meter its unit, role, source, counter and the points it
needs (serial, energy counters), each with function, address, type, unit and
word and byte order. Decoding is the core's (``words_value``,
``counter_mwh``), the gateway's too, so a counter gives the same mWh on both.

A SunSpec meter's JSON has, instead of fixed addresses, the profile's base
addresses and, per model kind it needs, the model ids and the points as
offsets into the model. The firmware discovers the device as the gateway
does: the "SunS" marker at the first base that has it, then the model chain
up to the end marker, taking the first model of each kind. The layout is
kept until a read fails, and found again on the next read.
"""

from crev import dgcc
from crev.errors import RegisterError
from crev.modbus_rtu import EXCEPTION, RtuError
from crev.registers import MWH_PER_KWH, MWH_PER_WH, counter_mwh, words_value

FUNCTIONS = {"holding": 3, "input": 4}
WORDS = {"float32": 2, "uint32": 2, "int32": 2, "acc32": 2, "uint16": 1, "int16": 1, "sunssf": 1}
UNITS = {"kWh": MWH_PER_KWH, "Wh": MWH_PER_WH}
SUM_TOLERANCE_MWH = 10000  # as the gateway: 10 Wh plus one part per million
ROLES = {"generation": dgcc.ROLE_GENERATION}
SOURCES = {name: i for i, name in enumerate(dgcc.SOURCE_NAMES)}


SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
SUNSPEC_END = 0xFFFF
SUNSPEC_MAX_MODELS = 64
HOLDING = 3
# str.strip()'s ASCII whitespace in CPython, which the gateway uses on SunSpec text
_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "


class MeterError(Exception):
    pass


def read_meter(bus: object, meter: dict) -> tuple:
    """``(serial, {"import"|"export"|"total": mWh})``; MeterError if any read or check fails."""
    if "sunspec" in meter:
        try:
            return _read_sunspec(bus, meter)
        except MeterError:
            meter.pop("layout", None)  # the device may have been replaced or re-mapped: discover again
            raise
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


# ---------------------------------------------------------------- SunSpec


def sunspec_text(words: list) -> str:
    """A SunSpec string point, exactly as the gateway decodes it (up to the first NUL, ASCII)."""
    chars = []  # type: list[str]
    for word in words:
        for byte in (word >> 8, word & 0xFF):
            if byte == 0:
                return "".join(chars).strip(_WHITESPACE)
            chars.append(chr(byte) if byte < 0x80 else "\ufffd")
    return "".join(chars).strip(_WHITESPACE)


def _signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def _holding(bus: object, meter: dict, what: str, address: int, count: int) -> list:
    try:
        return bus.read(meter["unit"], HOLDING, address, count)  # type: ignore[attr-defined]
    except Exception as err:
        raise MeterError("%s: %s: %s" % (meter["name"], what, err))


def discover(bus: object, meter: dict) -> dict:
    """``{kind: (model id, data address, length)}`` of the first model of each kind the meter needs."""
    sunspec = meter["sunspec"]
    kinds = {}
    for kind, model in sunspec["models"].items():
        for model_id in model["ids"]:
            kinds[model_id] = kind
    problems = []
    for base in sunspec["bases"]:
        try:
            marker = bus.read(meter["unit"], HOLDING, base, 2)  # type: ignore[attr-defined]
        except RtuError as err:
            if err.code != EXCEPTION:
                raise MeterError("%s: discovery at %d: %s" % (meter["name"], base, err))
            problems.append("%d: exception %d" % (base, err.exception_code))
            continue  # nothing mapped there: try the next base
        except Exception as err:  # no answer at all: the device is away, not elsewhere
            raise MeterError("%s: discovery at %d: %s" % (meter["name"], base, err))
        if marker != SUNSPEC_MARKER:
            problems.append("%d: no marker" % base)
            continue
        layout = {}  # type: dict
        address = base + 2
        for _ in range(SUNSPEC_MAX_MODELS):
            model_id, length = _holding(bus, meter, "model chain", address, 2)
            if model_id == SUNSPEC_END:
                return layout
            kind = kinds.get(model_id)
            if kind is not None and kind not in layout:
                layout[kind] = (model_id, address + 2, length)
            address += 2 + length
            if address > 0xFFFF:
                break
        raise MeterError("%s: SunSpec model chain at %d has no end marker" % (meter["name"], base))
    raise MeterError("%s: no SunSpec marker at %s" % (meter["name"], ", ".join(problems)))


def _model_points(bus: object, meter: dict, layout: dict, kind: str, names: list) -> dict:
    """The words of the named points of one model (and their scale factors), in one request."""
    if kind not in layout:
        raise MeterError("%s: the device has no SunSpec %s model" % (meter["name"], kind))
    _model_id, address, length = layout[kind]
    points = meter["sunspec"]["models"][kind]["points"]
    wanted = list(names)
    for name in names:
        scale = points[name].get("scale")
        if scale and scale not in wanted:
            wanted.append(scale)
    first = min(points[n]["offset"] for n in wanted)
    end = max(points[n]["offset"] + _count(points[n]) for n in wanted)
    if end > length:
        raise MeterError("%s: the SunSpec %s model is shorter than its points" % (meter["name"], kind))
    block = _holding(bus, meter, kind, address + first, end - first)
    return {n: block[points[n]["offset"] - first : points[n]["offset"] - first + _count(points[n])] for n in wanted}


def _count(point: dict) -> int:
    return point.get("length", 1) if point["type"] == "string" else WORDS[point["type"]]


def _scale(meter: dict, points: dict, words: dict, name: str) -> int:
    """The scale exponent of a point (0 without one); the gateway refuses one beyond +-10."""
    scale_name = points[name].get("scale")
    if not scale_name:
        return 0
    sf = points[scale_name]
    scale = _signed16(words_value(words[scale_name], sf.get("word_order", "big"), sf.get("byte_order", "big")))
    if not -10 <= scale <= 10:
        raise MeterError("%s: scale factor %s = %d" % (meter["name"], scale_name, scale))
    return scale


def _sunspec_energy(meter: dict, points: dict, words: dict, name: str) -> int:
    point = points[name]
    scale = _scale(meter, points, words, name)
    value = words_value(words[name], point.get("word_order", "big"), point.get("byte_order", "big"))
    try:
        return counter_mwh(point["type"], value, UNITS[point["unit"]], scale)
    except RegisterError as err:
        raise MeterError("%s: %s: %s (check word_order)" % (meter["name"], name, err.detail))


def _read_sunspec(bus: object, meter: dict) -> tuple:
    layout = meter.get("layout")
    if layout is None:
        layout = meter["layout"] = discover(bus, meter)
    models = meter["sunspec"]["models"]
    serial = sunspec_text(_model_points(bus, meter, layout, "common", ["serial"])["serial"])
    energies = {}
    if meter["role"] == "generation" and meter["counter"] == "total":
        kind = "inverter" if "inverter" in layout else "inverter_float"
        names = ["total_energy"]
    else:
        kind = "meter"
        names = ["import_energy", "export_energy"] if meter["role"] == "grid" else [meter["counter"] + "_energy"]
    points = models[kind]["points"]
    # The gateway also reads the power point (for its alarms) and refuses a reading whose
    # power scale factor is out of range; its scale factor is checked here for the same answer.
    checked = [n for n in ("power",) if n in points]
    words = _model_points(bus, meter, layout, kind, names + checked)
    for name in names:
        energies[name[: -len("_energy")]] = _sunspec_energy(meter, points, words, name)
    for name in checked:
        _scale(meter, points, words, name)
    serial = meter.get("meter_id") or serial
    if not serial:
        raise MeterError("%s: the meter reports no serial number; set meter_id" % meter["name"])
    return serial, energies
