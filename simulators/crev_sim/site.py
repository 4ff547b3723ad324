"""A site's physics on an accelerated clock: PV, wind and household load.

Energy moves in ticks of ``tick_s`` simulated seconds. In every tick the
renewable generation first feeds the load; the surplus is exported and the
shortfall imported, so the meters' counters are physically consistent:

    self = min(generation, load), export = generation - self, import = load - self

Energies are whole Wh per tick, so SunSpec acc32 Wh counters hold them
exactly and the ground truth is exact to the mWh.
"""

import math
import random
from dataclasses import dataclass, field


@dataclass
class SiteParams:
    seed: int = 1
    tick_s: int = 60
    pv_peak_w: float = 5000.0
    wind_peak_w: float = 0.0
    load_avg_w: float = 600.0


@dataclass
class Counters:
    """Cumulative true energies in Wh since the simulation started."""

    pv_wh: int = 0
    wind_wh: int = 0
    import_wh: int = 0
    export_wh: int = 0
    self_wh: int = 0
    load_wh: int = 0


@dataclass
class Tick:
    """One tick's energies in Wh, and its end in simulated Unix seconds."""

    index: int
    sim_end: float
    pv_wh: int
    wind_wh: int
    load_wh: int
    self_wh: int
    import_wh: int
    export_wh: int


@dataclass
class Site:
    params: SiteParams
    sim_start: float
    counters: Counters = field(default_factory=Counters)
    ticks_done: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.params.seed)
        self._cloud = 1.0
        self._wind = 0.5
        self.power_w = (0.0, 0.0, 0.0)
        # What a curtailed inverter lets through (SPEC §12), in W; None: all the sun gives.
        self.pv_cap_w: float | None = None

    def _hour_of_day(self, sim_time: float) -> float:
        # Local solar time of a Japanese site (UTC+9) is close enough.
        return ((sim_time + 9 * 3600) % 86400) / 3600.0

    def _powers(self, sim_time: float) -> tuple[float, float, float]:
        hour = self._hour_of_day(sim_time)
        rng = self._rng
        # Passing clouds: a persistent random factor that drifts tick by tick.
        self._cloud = min(1.0, max(0.15, self._cloud + rng.gauss(0, 0.08) + (0.9 - self._cloud) * 0.05))
        sun = math.sin(math.pi * (hour - 6.0) / 12.0) if 6.0 < hour < 18.0 else 0.0
        pv = self.params.pv_peak_w * (sun**1.3) * self._cloud
        self._wind = min(1.0, max(0.0, self._wind + rng.gauss(0, 0.05)))
        wind = self.params.wind_peak_w * self._wind**3
        # Household: base load, a morning and an evening peak, and noise.
        morning = math.exp(-(((hour - 7.5) / 1.2) ** 2))
        evening = math.exp(-(((hour - 19.5) / 2.0) ** 2))
        shape = 0.45 + 0.9 * morning + 1.4 * evening
        load = self.params.load_avg_w * shape * (1.0 + rng.gauss(0, 0.1))
        return max(0.0, pv), max(0.0, wind), max(50.0, load)

    def advance_to(self, sim_time: float) -> list[Tick]:
        """Run every whole tick that ends at or before ``sim_time``."""
        done = []
        tick_s = self.params.tick_s
        while self.sim_start + (self.ticks_done + 1) * tick_s <= sim_time:
            end = self.sim_start + (self.ticks_done + 1) * tick_s
            pv_w, wind_w, load_w = self._powers(end - tick_s / 2)
            if self.pv_cap_w is not None:
                pv_w = min(pv_w, max(0.0, self.pv_cap_w))
            self.power_w = (pv_w, wind_w, load_w)
            pv = round(pv_w * tick_s / 3600)
            wind = round(wind_w * tick_s / 3600)
            load = round(load_w * tick_s / 3600)
            own = min(pv + wind, load)
            c = self.counters
            c.pv_wh += pv
            c.wind_wh += wind
            c.load_wh += load
            c.self_wh += own
            c.import_wh += load - own
            c.export_wh += pv + wind - own
            self.ticks_done += 1
            done.append(Tick(self.ticks_done, end, pv, wind, load, own, load - own, pv + wind - own))
        return done
