"""Simulated meters: what each device serves, including its faults."""

import time
from dataclasses import dataclass, field

from crev_sim import registers
from crev_sim.controls import MODEL_LENGTHS, InverterControls
from crev_sim.site import Counters

# ignore_writes: the inverter acknowledges control writes and keeps its old values.
FAULT_KINDS = ("timeout", "exception", "reset", "replace", "freeze", "swap_words", "ignore_writes")
ONE_SHOT = ("reset", "replace")


@dataclass
class Fault:
    """A fault window in simulated hours since the start (one-shot kinds use ``from_h``)."""

    kind: str
    from_h: float
    to_h: float
    fired: bool = False

    def active(self, sim_hours: float) -> bool:
        return self.from_h <= sim_hours < self.to_h


@dataclass
class MeterImage:
    """Registers a device serves now, and the counters they certify (mWh)."""

    input_registers: list[int] | None
    holding_registers: list[int]
    holding_base: int
    certified: dict[str, int]
    serial: str


@dataclass
class SimMeter:
    name: str
    profile: str  # sdm630 | sdm120 | sunspec
    port: int
    unit: int
    measures: list[str]  # any of pv, wind, grid
    generation_register: str = "export"  # SDM register that counts generation
    serial: int = 100001
    base: int = 40000  # SunSpec base address
    faults: list[Fault] = field(default_factory=list)
    offsets_wh: dict[str, int] = field(default_factory=dict)
    frozen: MeterImage | None = None
    controls: InverterControls | None = None  # SunSpec models 123 and/or 704 (SPEC §12)
    rating_w: float = 0.0  # WMax: what 100 % of a limit means
    control_addresses: dict[int, int] = field(default_factory=dict)  # model -> address of its first data register

    def control_at(self, address: int, count: int) -> tuple[int, int] | None:
        """``(model, offset)`` when registers ``address`` .. ``address + count`` lie in one control model."""
        for model, start in self.control_addresses.items():
            if start <= address and address + count <= start + MODEL_LENGTHS[model]:
                return model, address - start
        return None

    def _true_wh(self, counters: Counters) -> dict[str, int]:
        values = {}
        for what in self.measures:
            if what == "pv":
                values["generation"] = counters.pv_wh
            elif what == "wind":
                values["generation"] = counters.wind_wh
            else:
                values["import"] = counters.import_wh
                values["export"] = counters.export_wh
        return values

    def counters_wh(self, counters: Counters) -> dict[str, int]:
        """Counter values after resets and replacements (never negative)."""
        return {k: v - self.offsets_wh.get(k, 0) for k, v in self._true_wh(counters).items()}

    def apply_events(self, sim_hours: float, counters: Counters) -> list[str]:
        """Fire one-shot faults whose time has come; return what happened."""
        events = []
        for fault in self.faults:
            if fault.kind in ONE_SHOT and not fault.fired and sim_hours >= fault.from_h:
                fault.fired = True
                true = self._true_wh(counters)
                if fault.kind == "reset":
                    self.offsets_wh = dict(true)  # counters restart at 0
                else:
                    # A new meter with a new serial, which arrives showing 7 Wh.
                    self.offsets_wh = {k: v - 7 for k, v in true.items()}
                    self.serial += 1000
                events.append("%s %s at %.3f h" % (self.name, fault.kind, sim_hours))
        return events

    def active_fault(self, sim_hours: float, kind: str) -> bool:
        return any(f.kind == kind and f.active(sim_hours) for f in self.faults)

    def image(self, counters: Counters, power_w: tuple[float, float, float], sim_hours: float) -> MeterImage:
        if self.active_fault(sim_hours, "freeze"):
            if self.frozen is None:
                self.frozen = self._image(counters, power_w, sim_hours)
            return self.frozen
        self.frozen = None
        return self._image(counters, power_w, sim_hours)

    def _image(self, counters: Counters, power_w: tuple[float, float, float], sim_hours: float) -> MeterImage:
        swap = self.active_fault(sim_hours, "swap_words")
        values = self.counters_wh(counters)
        pv_w, wind_w, load_w = power_w
        gen_w = pv_w if "pv" in self.measures else wind_w
        serial = str(self.serial)
        if self.profile in ("sdm630", "sdm120"):
            if "grid" in self.measures:
                import_mwh, export_mwh = values["import"] * 1000, values["export"] * 1000
                power = load_w - pv_w - wind_w
            else:
                gen_mwh = values["generation"] * 1000
                import_mwh, export_mwh = (0, gen_mwh) if self.generation_register == "export" else (gen_mwh, 0)
                power = -gen_w if self.generation_register == "export" else gen_w
            inputs, certified = registers.sdm_input_registers(
                import_mwh, export_mwh, power, swap, sdm120=self.profile == "sdm120"
            )
            holding = registers.u32_words(self.serial, swap)
            if "grid" not in self.measures:
                certified = {"generation": certified[self.generation_register]}
            return MeterImage(inputs, holding, registers.SDM_SERIAL_HOLDING, certified, serial)
        models = [registers.sunspec_common(serial, "crev-sim-sunspec")]
        certified = {}
        if "generation" in values:
            models.append(registers.sunspec_inverter(values["generation"], gen_w, swap))
            certified["generation"] = values["generation"] * 1000
            if self.controls is not None:
                now = time.monotonic()
                for model in self.controls.models:
                    # The data starts after the marker, the models before it, and this one's ID and L.
                    self.control_addresses[model] = self.base + 2 + sum(len(m) for m in models) + 2
                    models.append(self.controls.block(model, now))
        if "grid" in self.measures:
            models.append(registers.sunspec_meter(values["import"], values["export"], load_w - pv_w - wind_w, swap))
            certified["import"] = values["import"] * 1000
            certified["export"] = values["export"] * 1000
        return MeterImage(None, registers.sunspec_image(models), self.base, certified, serial)
