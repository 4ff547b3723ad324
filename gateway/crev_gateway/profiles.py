"""Register maps shipped as data (``profiles/*.toml``) and how to decode them.

A point says where a value lives (function, address or model offset), its
type, unit and scale factor. Energies decode to integer mWh through the
core's integer-only converters; other values are informational floats.
"""

import struct
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from crev.registers import MWH_PER_KWH, MWH_PER_WH, counter_mwh, words_value
from crev_gateway import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
WORDS = {"float32": 2, "uint32": 2, "int32": 2, "acc32": 2, "uint16": 1, "int16": 1, "sunssf": 1}
ENERGY_UNITS = {"kWh": MWH_PER_KWH, "Wh": MWH_PER_WH}


@dataclass(frozen=True)
class Point:
    name: str
    type: str
    address: int  # absolute for fixed maps, offset into the model for SunSpec
    function: str = "input"
    unit: str | None = None
    scale: str | None = None  # name of the SunSpec scale-factor point
    length: int = 1  # registers, for strings
    word_order: str = "big"  # "little": low word first (some vendors' 32-bit values)
    byte_order: str = "big"  # "little": bytes swapped within each word

    @property
    def count(self) -> int:
        return self.length if self.type == "string" else WORDS[self.type]


@dataclass(frozen=True)
class SunSpecModel:
    kind: str  # common, inverter, inverter_float, meter
    ids: tuple[int, ...]
    points: dict[str, Point]


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str  # fixed | sunspec
    max_power_w: float
    points: dict[str, Point]
    bases: tuple[int, ...] = ()
    models: tuple[SunSpecModel, ...] = ()
    sum_check: tuple[str, ...] = ()  # (a, b, total): total must equal a + b

    def model_kind(self, model_id: int) -> str | None:
        for model in self.models:
            if model_id in model.ids:
                return model.kind
        return None


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _point(name: str, raw: dict[str, Any], function: str, key: str) -> Point:
    if raw.get("type") not in (*WORDS, "string"):
        raise ConfigError("profile point %s has an unknown type %r" % (name, raw.get("type")))
    return Point(
        name=name,
        type=raw["type"],
        address=int(raw[key]),
        function=raw.get("function", function),
        unit=raw.get("unit"),
        scale=raw.get("scale"),
        length=int(raw.get("length", 1)),
        word_order=_order(name, raw, "word_order"),
        byte_order=_order(name, raw, "byte_order"),
    )


def _order(name: str, raw: dict[str, Any], key: str) -> str:
    value = raw.get(key, "big")
    if value not in ("big", "little"):
        raise ConfigError("profile point %s: %s must be big or little, got %r" % (name, key, value))
    return str(value)


@cache
def load_profile(name: str) -> Profile:
    path = PROFILE_DIR / (name + ".toml")
    if not path.exists():
        raise ConfigError("unknown profile %r (available: %s)" % (name, ", ".join(available_profiles())))
    raw = tomllib.loads(path.read_text())
    if raw.get("kind") == "sunspec":
        models = tuple(
            SunSpecModel(
                kind=kind,
                ids=tuple(body["ids"]),
                points={n: _point(n, p, raw.get("function", "holding"), "offset") for n, p in body["points"].items()},
            )
            for kind, body in raw["models"].items()
        )
        return Profile(name, "sunspec", float(raw["max_power_w"]), {}, tuple(raw["bases"]), models)
    points = {n: _point(n, p, "input", "address") for n, p in raw["points"].items()}
    sum_check = tuple(raw.get("sum_check", ()))
    if sum_check and (len(sum_check) != 3 or any(p not in points for p in sum_check)):
        raise ConfigError("profile %s: sum_check names three of its points" % name)
    return Profile(name, "fixed", float(raw["max_power_w"]), points, sum_check=sum_check)


# ------------------------------------------------------------------ decoding


def raw_value(point: Point, words: list[int], word_order: str | None = None, byte_order: str | None = None) -> int:
    """The point's bits as an unsigned integer.

    The point's own word and byte order come from the profile; a meter's
    configuration may override them for all its points.
    """
    return words_value(words, word_order or point.word_order, byte_order or point.byte_order)


def decode_text(words: list[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()


def decode_signed(point: Point, value: int) -> int:
    bits = 16 * WORDS[point.type]
    return value - (1 << bits) if point.type in ("int16", "int32", "sunssf") and value >> (bits - 1) else value


def decode_energy_mwh(point: Point, value: int, scale_exponent: int = 0) -> int:
    """An energy counter in integer mWh. Raises RegisterError if impossible.

    A float32 counter that is not zero but below 1 Wh is rejected: no
    certified counter holds such a value, but a register pair read in the
    wrong word order usually decodes to a tiny (or subnormal) number.
    """
    unit = ENERGY_UNITS.get(point.unit or "", 0)
    if not unit:
        raise ConfigError("profile point %s is an energy without unit kWh or Wh" % point.name)
    if point.type not in ("float32", "acc32", "uint32", "uint16"):
        raise ConfigError("profile point %s: type %s cannot hold an energy counter" % (point.name, point.type))
    return counter_mwh(point.type, value, unit, scale_exponent)


def decode_quantity(point: Point, value: int, scale_exponent: int = 0) -> float | None:
    """A non-energy value (power, frequency) as a float, for health only."""
    if point.type == "float32":
        (number,) = struct.unpack(">f", value.to_bytes(4, "big"))
        return float(number)
    signed = decode_signed(point, value)
    if point.type == "int16" and signed == -0x8000:
        return None  # SunSpec "not implemented"
    return signed * 10.0**scale_exponent
