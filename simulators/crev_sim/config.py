"""The simulator's TOML configuration (``crev sim meters --config sim.toml``)."""

import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from crev_sim.controls import MODEL_LENGTHS, InverterControls
from crev_sim.meters import FAULT_KINDS, ONE_SHOT, Fault, SimMeter
from crev_sim.registers import SUNSPEC_BASES
from crev_sim.site import SiteParams


class SimConfigError(Exception):
    """The simulator configuration is wrong; the message says what to fix."""


@dataclass
class SimConfig:
    site: SiteParams
    speed: float
    sim_start: float
    host: str
    meters: list[SimMeter]
    truth_path: Path | None = None
    timeout_sleep_s: float = 30.0
    update_s: float = 0.0
    update_phase_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _number(table: dict[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SimConfigError("%s.%s must be a number" % (where, key))
    return float(value)


def _controls(entry: dict[str, Any], profile: str, measures: list[str], where: str) -> InverterControls | None:
    """``controls = [123, 704]``: the SunSpec control models a PV inverter serves, and its ramp."""
    models = entry.get("controls", [])
    if not isinstance(models, list) or any(m not in MODEL_LENGTHS for m in models) or len(set(models)) != len(models):
        raise SimConfigError("%s.controls must list SunSpec models 123 and/or 704, e.g. controls = [123]" % where)
    if not models:
        return None
    if profile != "sunspec" or "pv" not in measures:
        raise SimConfigError("%s: only a SunSpec meter that measures pv (an inverter) takes controls" % where)
    ramp = _number(entry, "ramp_pct_per_s", 10, where)
    if ramp < 0:
        raise SimConfigError("%s.ramp_pct_per_s must be 0 (at once) or more" % where)
    return InverterControls(tuple(sorted(models)), ramp, time.monotonic())


def load(path: Path) -> SimConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as err:
        raise SimConfigError("cannot read %s: %s" % (path, err.strerror)) from err
    except tomllib.TOMLDecodeError as err:
        raise SimConfigError("%s is not valid TOML: %s" % (path, err)) from err
    return parse(raw, path.parent)


def parse(raw: dict[str, Any], base_dir: Path) -> SimConfig:
    site = raw.get("site", {})
    start_text = site.get("start", "2026-06-21T00:00:00+09:00")
    try:
        sim_start = datetime.fromisoformat(start_text).timestamp()
    except ValueError as err:
        raise SimConfigError("site.start must be an ISO 8601 time, got %r" % start_text) from err
    params = SiteParams(
        seed=int(site.get("seed", 1)),
        tick_s=int(_number(site, "tick_s", 60, "site")),
        pv_peak_w=_number(site, "pv_peak_w", 5000, "site"),
        wind_peak_w=_number(site, "wind_peak_w", 0, "site"),
        load_avg_w=_number(site, "load_avg_w", 600, "site"),
    )
    speed = _number(site, "speed", 60, "site")
    if speed <= 0:
        raise SimConfigError("site.speed must be positive")
    meters = []
    for i, entry in enumerate(raw.get("meter", [])):
        where = "meter[%d]" % i
        profile = entry.get("profile")
        if profile not in ("sdm630", "sdm120", "sunspec"):
            raise SimConfigError("%s.profile must be sdm630, sdm120 or sunspec, got %r" % (where, profile))
        measures = entry.get("measures", ["pv"])
        measures = [measures] if isinstance(measures, str) else list(measures)
        if not measures or any(m not in ("pv", "wind", "grid") for m in measures):
            raise SimConfigError("%s.measures must be pv, wind or grid" % where)
        if profile != "sunspec" and len(measures) != 1:
            raise SimConfigError("%s: an SDM meter measures one thing" % where)
        base = int(entry.get("base", 40000))
        if profile == "sunspec" and base not in SUNSPEC_BASES:
            raise SimConfigError("%s.base must be one of %s" % (where, SUNSPEC_BASES))
        faults = []
        for fault in entry.get("fault", []):
            kind = fault.get("kind")
            if kind not in FAULT_KINDS:
                raise SimConfigError("%s.fault.kind must be one of %s, got %r" % (where, ", ".join(FAULT_KINDS), kind))
            start = _number(fault, "from_h", 0, where + ".fault")
            end = start if kind in ONE_SHOT else _number(fault, "to_h", start + 1, where + ".fault")
            faults.append(Fault(kind, start, end))
        controls = _controls(entry, profile, measures, where)
        meters.append(
            SimMeter(
                name=str(entry.get("name", "meter%d" % i)),
                profile=profile,
                port=int(entry.get("port", 5020 + i)),
                unit=int(entry.get("unit", 1)),
                measures=measures,
                generation_register=str(entry.get("register", "export")),
                serial=int(entry.get("serial", 100001 + i)),
                base=base,
                faults=faults,
                controls=controls,
                rating_w=_number(entry, "rating_w", _number(site, "pv_peak_w", 5000, "site"), where),
            )
        )
    if not meters:
        raise SimConfigError("the configuration has no [[meter]]")
    truth = raw.get("truth")
    return SimConfig(
        site=params,
        speed=speed,
        sim_start=sim_start,
        host=str(raw.get("host", "127.0.0.1")),
        meters=meters,
        truth_path=(base_dir / truth) if truth else None,
        timeout_sleep_s=_number(raw, "timeout_sleep_s", 30, "top level"),
        update_s=_number(raw, "update_s", 0, "top level"),
        update_phase_s=_number(raw, "update_phase_s", 0, "top level"),
    )
