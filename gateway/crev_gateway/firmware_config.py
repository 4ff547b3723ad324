"""The compact meter description the MicroPython firmware reads (firmware/dgc/meters.py).

The firmware has no TOML parser and little memory, so the host turns a
gateway-style meter configuration and its profile file into plain JSON: only
the points a reading needs (the serial number and the energy counters), with
the meter's word and byte order already applied to each point. One register
map, two readers: the gateway reads the TOML, the firmware this.
"""

from typing import Any

from crev import dgcc
from crev_gateway import ConfigError
from crev_gateway.config import MeterConfig
from crev_gateway.profiles import Profile


def energy_points(meter: MeterConfig) -> list[str]:
    if meter.role == "grid":
        return ["import_energy", "export_energy"]
    return [meter.counter + "_energy"]


def compact_meter(meter: MeterConfig, profile: Profile) -> dict[str, Any]:
    if profile.kind != "fixed":
        raise ConfigError(
            "meter %s: profile %s needs SunSpec discovery, which the firmware does not do; "
            "use a fixed register map (sdm630, sdm120)" % (meter.name, profile.name)
        )
    wanted = ["serial", *energy_points(meter)]
    wanted += [p for p in profile.sum_check if p not in wanted]
    points = {}
    for name in wanted:
        point = profile.points[name]
        points[name] = {
            "function": point.function,
            "address": point.address,
            "type": point.type,
            "unit": point.unit,
            "word_order": meter.word_order or point.word_order,
            "byte_order": meter.byte_order or point.byte_order,
        }
    compact: dict[str, Any] = {
        "name": meter.name,
        "unit": meter.unit,
        "role": meter.role,
        "source": dgcc.SOURCE_NAMES[meter.source],
        "counter": meter.counter,
        "points": points,
        "sum_check": list(profile.sum_check),
    }
    if meter.meter_id:
        compact["meter_id"] = meter.meter_id
    return compact
