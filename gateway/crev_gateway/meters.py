"""Reading certified energy counters from one meter, and checking them.

The energy always comes from the meter's cumulative kWh/Wh registers, never
from integrated power. Power is read only to make alarms more telling.

Plausibility (a value that fails is treated as a failed read: no reading,
never a substitute):
1. decodable: not NaN, infinite or negative; a float32 counter that is
   not zero but below 1 Wh is rejected, since no counter is that small;
2. bounded: below 10^9 kWh;
3. consistent: where the map has a total register (SDM), total equals
   import + export to within 10 Wh;
4. physical: since the last accepted value of the same meter, the counter
   grew no faster than the meter's rating (``max_power_w``, from the
   profile or the config) allows, with 50 % headroom;
5. a new serial number (a replaced meter) is accepted only after it was read
   on SERIAL_CONFIRMATIONS consecutive reads whose counters pass check 4
   among themselves: a garbled read can change the serial too, and would
   otherwise escape check 4.
Reading a register pair in the wrong word order almost always breaks one
of these: the swapped halves give a tiny, negative or absurdly large number,
and never one that keeps total = import + export.
"""

import time
from dataclasses import dataclass, field

from crev.errors import RegisterError
from crev_gateway import MeterError
from crev_gateway._backends.modbus import ModbusBus
from crev_gateway.config import MeterConfig
from crev_gateway.profiles import Point, Profile, decode_energy_mwh, decode_quantity, decode_text, raw_value

MAX_COUNTER_MWH = 10**15  # 10^9 kWh
SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
SUNSPEC_END = 0xFFFF
MAX_MODELS = 64
SERIAL_CONFIRMATIONS = 3
MAX_REQUEST_REGISTERS = 125  # the Modbus limit for one read
SUM_TOLERANCE_MWH = 10_000  # 10 Wh, plus one part per million of the total


@dataclass
class MeterSample:
    """One read of a meter: its serial number and counters in mWh."""

    meter: str
    serial: str
    energies_mwh: dict[str, int]
    power_w: float | None
    read_at: float


@dataclass
class SunSpecLayout:
    base: int
    models: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # kind -> (id, data address, length)


class MeterReader:
    def __init__(self, config: MeterConfig, profile: Profile, bus: ModbusBus) -> None:
        self.config = config
        self.profile = profile
        self.bus = bus
        self.layout: SunSpecLayout | None = None
        self.last_accepted: MeterSample | None = None
        self.new_serial_reads: list[MeterSample] = []

    # ------------------------------------------------------------ helpers

    def _read(self, function: str, address: int, count: int) -> list[int]:
        return self.bus.read(self.config.name, function, address, count, self.config.unit)

    def _value(self, point: Point, words: list[int]) -> int:
        return raw_value(point, words, self.config.word_order, self.config.byte_order)

    def _energy(self, point: Point, words: list[int], scale: int = 0) -> int:
        try:
            return decode_energy_mwh(point, self._value(point, words), scale)
        except RegisterError as err:
            raise MeterError(
                self.config.name, "IMPLAUSIBLE", "%s: %s (check word_order)" % (point.name, err.detail)
            ) from err

    # ------------------------------------------------------------ fixed maps

    def _read_fixed(self) -> MeterSample:
        try:
            return self._read_fixed_once()
        except MeterError as err:
            if err.code != "IMPLAUSIBLE" or not err.detail.startswith("total "):
                raise
            # The meter may have refreshed its registers between our requests:
            # read again at once. A wrong word order fails both times.
            return self._read_fixed_once()

    def _read_fixed_once(self) -> MeterSample:
        points = self.profile.points
        wanted = ["serial", "power", *self._energy_points()]
        wanted += [p for p in self.profile.sum_check if p not in wanted]
        energies: dict[str, int] = {}
        serial = ""
        power = None
        for name, words in self._read_points([points[n] for n in wanted]).items():
            point = points[name]
            if name == "serial":
                serial = str(self._value(point, words))
            elif name == "power":
                power = decode_quantity(point, self._value(point, words))
            else:
                energies[name.removesuffix("_energy")] = self._energy(point, words)
        if self.profile.sum_check:
            a, b, total = (energies[p.removesuffix("_energy")] for p in self.profile.sum_check)
            if abs(total - (a + b)) > SUM_TOLERANCE_MWH + total // 1_000_000:
                raise MeterError(
                    self.config.name,
                    "IMPLAUSIBLE",
                    "total %d mWh is not import + export %d mWh (check word_order)" % (total, a + b),
                )
        return MeterSample(self.config.name, serial, energies, power, time.time())

    def _read_points(self, wanted: list[Point]) -> dict[str, list[int]]:
        """Read points, merging neighbours of one function into a single request."""
        words: dict[str, list[int]] = {}
        ordered = sorted(wanted, key=lambda p: (p.function, p.address))
        group: list[Point] = []
        for point in [*ordered, None]:
            if group and (
                point is None
                or point.function != group[0].function
                or point.address + point.count - group[0].address > MAX_REQUEST_REGISTERS
                or point.address > group[-1].address + group[-1].count
            ):
                start = group[0].address
                block = self._read(group[0].function, start, group[-1].address + group[-1].count - start)
                for member in group:
                    words[member.name] = block[member.address - start : member.address - start + member.count]
                group = []
            if point is not None:
                group.append(point)
        return words

    def _energy_points(self) -> list[str]:
        if self.config.role == "grid":
            return ["import_energy", "export_energy"]
        return [self.config.counter + "_energy"]

    # ------------------------------------------------------------ SunSpec

    def discover(self) -> SunSpecLayout:
        """Find the 'SunS' marker at a known base, then walk the model chain."""
        problems = []
        for base in self.profile.bases:
            try:
                marker = self._read("holding", base, 2)
            except MeterError as err:
                problems.append("%d: %s" % (base, err.code))
                if err.code in ("CONNECTION", "TIMEOUT"):
                    raise
                continue
            if marker != SUNSPEC_MARKER:
                problems.append("%d: no marker" % base)
                continue
            layout = SunSpecLayout(base)
            address = base + 2
            for _ in range(MAX_MODELS):
                model_id, length = self._read("holding", address, 2)
                if model_id == SUNSPEC_END:
                    self.layout = layout
                    return layout
                kind = self.profile.model_kind(model_id)
                if kind is not None and kind not in layout.models:
                    layout.models[kind] = (model_id, address + 2, length)
                address += 2 + length
                if address > 0xFFFF:
                    break
            raise MeterError(self.config.name, "DISCOVERY", "SunSpec model chain at %d has no end marker" % base)
        raise MeterError(self.config.name, "DISCOVERY", "no SunSpec marker at %s" % ", ".join(problems))

    def _model(self, kind: str) -> tuple[dict[str, Point], list[int]]:
        layout = self.layout if self.layout is not None else self.discover()
        if kind not in layout.models:
            raise MeterError(self.config.name, "DISCOVERY", "the device has no SunSpec %s model" % kind)
        _model_id, address, length = layout.models[kind]
        points = next(m.points for m in self.profile.models if m.kind == kind)
        return points, self._read("holding", address, length)

    def _point(self, points: dict[str, Point], block: list[int], name: str) -> tuple[Point, list[int], int]:
        point = points[name]
        words = block[point.address : point.address + point.count]
        scale = 0
        if point.scale:
            sf_point = points[point.scale]
            scale = int(
                decode_quantity(sf_point, self._value(sf_point, block[sf_point.address : sf_point.address + 1])) or 0
            )
            if not -10 <= scale <= 10:
                raise MeterError(self.config.name, "IMPLAUSIBLE", "scale factor %s = %d" % (point.scale, scale))
        return point, words, scale

    def _read_sunspec(self) -> MeterSample:
        common_points, common = self._model("common")
        serial_point = common_points["serial"]
        serial = decode_text(common[serial_point.address : serial_point.address + serial_point.count])
        energies: dict[str, int] = {}
        power = None
        if self.config.role == "generation" and self.config.counter == "total":
            kind = "inverter" if self.layout and "inverter" in self.layout.models else "inverter_float"
            points, block = self._model(kind)
            point, words, scale = self._point(points, block, "total_energy")
            energies["total"] = self._energy(point, words, scale)
        else:
            points, block = self._model("meter")
            for name in self._energy_points():
                point, words, scale = self._point(points, block, name)
                energies[name.removesuffix("_energy")] = self._energy(point, words, scale)
        point, words, scale = self._point(points, block, "power")
        power = decode_quantity(point, self._value(point, words), scale)
        return MeterSample(self.config.name, serial, energies, power, time.time())

    # ------------------------------------------------------------ public

    def read(self) -> MeterSample:
        """Read the counters; raises MeterError (code says why) on any doubt."""
        try:
            sample = self._read_sunspec() if self.profile.kind == "sunspec" else self._read_fixed()
        except MeterError as err:
            if err.code in ("CONNECTION", "TIMEOUT") and self.profile.kind == "sunspec":
                self.layout = None  # rediscover after the device comes back
            raise
        if self.config.meter_id:
            sample.serial = self.config.meter_id
        if not sample.serial:
            raise MeterError(self.config.name, "IMPLAUSIBLE", "the meter reports no serial number; set meter_id")
        self.check_plausible(sample)
        self.last_accepted = sample
        return sample

    def check_plausible(self, sample: MeterSample) -> None:
        for name, value in sample.energies_mwh.items():
            if value > MAX_COUNTER_MWH:
                raise MeterError(
                    self.config.name, "IMPLAUSIBLE", "%s counter %d mWh is beyond any meter" % (name, value)
                )
        previous = self.last_accepted
        if previous is None or previous.serial == sample.serial:
            self.new_serial_reads = []
            if previous is not None:
                self._check_growth(previous, sample)
            return
        # The serial changed: a replaced meter, or a garbled read.
        candidates = self.new_serial_reads
        if candidates and candidates[-1].serial == sample.serial:
            self._check_growth(candidates[-1], sample)
            candidates.append(sample)
        else:
            self.new_serial_reads = candidates = [sample]
        if len(candidates) < SERIAL_CONFIRMATIONS:
            raise MeterError(
                self.config.name,
                "IMPLAUSIBLE",
                "serial changed from %s to %s; confirming over %d reads before accepting a replaced meter"
                % (previous.serial, sample.serial, SERIAL_CONFIRMATIONS),
            )
        self.new_serial_reads = []

    def _check_growth(self, previous: MeterSample, sample: MeterSample) -> None:
        max_power = self.config.max_power_w or self.profile.max_power_w
        for name, value in sample.energies_mwh.items():
            if name not in previous.energies_mwh:
                continue
            grown = value - previous.energies_mwh[name]
            elapsed = max(1.0, sample.read_at - previous.read_at)
            allowed = max_power * 1.5 * elapsed / 3.6 + 1000  # W x s -> mWh, plus 1 Wh slack
            if grown > allowed:
                raise MeterError(
                    self.config.name,
                    "IMPLAUSIBLE",
                    "%s counter grew %d mWh in %.0f s, more than %.0f W could (check word_order)"
                    % (name, grown, elapsed, max_power),
                )
