"""The compact meter description the MicroPython firmware reads (firmware/dgc/meters.py).

The firmware has no TOML parser and little memory, so the host turns a
gateway-style meter configuration and its profile file into plain JSON: only
the points a reading needs (the serial number and the energy counters), with
the meter's word and byte order already applied to each point. One register
map, two readers: the gateway reads the TOML, the firmware this.

For SunSpec that is the profile's base addresses and, per model kind a
reading needs, the model ids and the points' offsets: the firmware then
discovers the device itself, as the gateway does.

With site control (SPEC §12: the site lists ``[[operator]]`` keys), a
SunSpec generation meter is also an inverter to command: its compact map
then carries the control models too (123 and 704, every point of the
profile's), which the firmware's site control (firmware/dgc/control.py)
finds by the same discovery.
"""

from typing import Any

from crev import dgcc
from crev_gateway.config import MeterConfig
from crev_gateway.profiles import Point, Profile


def energy_points(meter: MeterConfig) -> list[str]:
    if meter.role == "grid":
        return ["import_energy", "export_energy"]
    return [meter.counter + "_energy"]


def _sunspec_point(meter: MeterConfig, point: Point) -> dict[str, Any]:
    compact: dict[str, Any] = {
        "offset": point.address,  # into the model, after its ID and L
        "type": point.type,
        "word_order": meter.word_order or point.word_order,
        "byte_order": meter.byte_order or point.byte_order,
    }
    if point.unit is not None:
        compact["unit"] = point.unit
    if point.scale is not None:
        compact["scale"] = point.scale
    if point.type == "string":
        compact["length"] = point.length
    return compact


CONTROL_KINDS = ("controls", "der_controls")  # SunSpec models 123 and 704 (gateway/crev_gateway/control.py)


def _compact_sunspec(meter: MeterConfig, profile: Profile, controls: bool = False) -> dict[str, Any]:
    """The models a reading of this meter uses, as the gateway's MeterReader picks them
    (and with ``controls``, on a generation meter, the control models)."""
    if meter.role == "generation" and meter.counter == "total":
        needs = {"common": ["serial"], "inverter": ["total_energy"], "inverter_float": ["total_energy"]}
    else:
        needs = {"common": ["serial"], "meter": energy_points(meter)}
    if controls and meter.role == "generation":
        for model in profile.models:
            if model.kind in CONTROL_KINDS:
                needs[model.kind] = list(model.points)
    models: dict[str, Any] = {}
    for model in profile.models:
        if model.kind not in needs:
            continue
        # The gateway also reads "power" with the energies, and checks its scale factor.
        wanted = [*needs[model.kind], *(["power"] if model.kind != "common" and "power" in model.points else [])]
        wanted += [scale for scale in (model.points[n].scale for n in wanted) if scale is not None]
        models[model.kind] = {
            "ids": list(model.ids),
            "points": {n: _sunspec_point(meter, model.points[n]) for n in dict.fromkeys(wanted)},
        }
    return {"bases": list(profile.bases), "models": models}


def compact_meter(meter: MeterConfig, profile: Profile, controls: bool = False) -> dict[str, Any]:
    """The meter as config.json holds it; ``controls``: add the SunSpec control models (site control)."""
    if profile.kind == "sunspec":
        compact: dict[str, Any] = {
            "name": meter.name,
            "unit": meter.unit,
            "role": meter.role,
            "source": dgcc.SOURCE_NAMES[meter.source],
            "counter": meter.counter,
            "sunspec": _compact_sunspec(meter, profile, controls),
        }
        if meter.meter_id:
            compact["meter_id"] = meter.meter_id
        return compact
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
    compact = {
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
