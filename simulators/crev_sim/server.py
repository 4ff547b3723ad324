"""Modbus TCP servers for the simulated meters (pymodbus SimDevice).

Each read runs ``_serve`` through SimDevice's action hook, which writes the
device's current register image into the block. So the site model changes
what the server answers while it runs, and faults can delay or refuse a
reply.

The ground-truth log (JSON lines) records, for every tick, the counters
each meter certifies and the tick's true self-consumption in Wh.
"""

import asyncio
import json
import logging
import math
import time
from collections import defaultdict
from functools import partial
from typing import IO

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from crev_sim.config import SimConfig
from crev_sim.meters import SimMeter
from crev_sim.site import Site, Tick

log = logging.getLogger("crev.sim")

FC_READ_HOLDING = 3
FC_READ_INPUT = 4
FC_WRITE_SINGLE = 6
FC_WRITE_MULTIPLE = 16


class Simulation:
    def __init__(self, config: SimConfig, wall_start: float | None = None) -> None:
        self.config = config
        self.site = Site(config.site, config.sim_start)
        self.wall_start = time.time() if wall_start is None else wall_start
        self.truth: IO[str] | None = None
        if config.truth_path is not None:
            self.truth = config.truth_path.open("a", buffering=1)
            # Tick 0: what the meters serve before the first tick has run.
            self._log_truth(Tick(0, config.sim_start, 0, 0, 0, 0, 0, 0))

    def sim_time(self) -> float:
        """Simulated now. With update_s, registers refresh only every update_s
        wall seconds (at update_phase_s past it), as real meters refresh
        theirs periodically; a reader between refreshes sees one state."""
        wall = time.time()
        period = self.config.update_s
        if period > 0:
            phase = self.config.update_phase_s
            wall = max(self.wall_start, math.floor((wall - phase) / period) * period + phase)
        return self.config.sim_start + (wall - self.wall_start) * self.config.speed

    def sim_hours(self) -> float:
        return (self.sim_time() - self.config.sim_start) / 3600.0

    def _curtail(self) -> None:
        """Run the inverters' controls to now and cap the site's PV at what they let through."""
        now = time.monotonic()
        cap = None
        for meter in self.config.meters:
            if meter.controls is not None:
                meter.controls.advance(now)
                allowed = meter.rating_w * meter.controls.output_pct / 100.0
                cap = allowed if cap is None else min(cap, allowed)
        self.site.pv_cap_w = cap

    def step(self) -> None:
        """Advance the site to now, fire due events and log the ground truth."""
        self._curtail()
        for tick in self.site.advance_to(self.sim_time()):
            hours = (tick.sim_end - self.config.sim_start) / 3600.0
            for meter in self.config.meters:
                for event in meter.apply_events(hours, self.site.counters):
                    log.info("fault: %s", event)
            self._log_truth(tick)

    def _log_truth(self, tick: Tick) -> None:
        if self.truth is None:
            return
        hours = (tick.sim_end - self.config.sim_start) / 3600.0
        images = {m.name: m.image(self.site.counters, self.site.power_w, hours) for m in self.config.meters}
        record = {
            "tick": tick.index,
            "sim_end": tick.sim_end,
            "wall": time.time(),
            "self_wh": tick.self_wh,
            "pv_wh": tick.pv_wh,
            "wind_wh": tick.wind_wh,
            "load_wh": tick.load_wh,
            "import_wh": tick.import_wh,
            "export_wh": tick.export_wh,
            "meters": {n: {"certified": i.certified, "serial": i.serial} for n, i in images.items()},
        }
        inverters = {m.name: m.controls.state() for m in self.config.meters if m.controls is not None}
        if inverters:
            record["inverters"] = inverters
        self.truth.write(json.dumps(record) + "\n")

    async def _serve(
        self,
        meter: SimMeter,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return await self._write(meter, function_code, address, count, set_values)
        self.step()
        hours = self.sim_hours()
        if meter.active_fault(hours, "timeout"):
            await asyncio.sleep(self.config.timeout_sleep_s)
            return ExcCodes.GATEWAY_NO_RESPONSE
        if meter.active_fault(hours, "exception"):
            return ExcCodes.DEVICE_FAILURE
        image = meter.image(self.site.counters, self.site.power_w, hours)
        if function_code == FC_READ_INPUT and image.input_registers is not None:
            registers[: len(image.input_registers)] = image.input_registers
        elif function_code == FC_READ_HOLDING:
            registers[: len(image.holding_registers)] = image.holding_registers
        return None

    async def _write(
        self, meter: SimMeter, function_code: int, address: int, count: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        """Only an inverter's control registers take writes; meters are read-only."""
        if meter.controls is None or function_code not in (FC_WRITE_SINGLE, FC_WRITE_MULTIPLE):
            return ExcCodes.ILLEGAL_FUNCTION
        self.step()
        hours = self.sim_hours()
        if meter.active_fault(hours, "timeout"):
            await asyncio.sleep(self.config.timeout_sleep_s)
            return ExcCodes.GATEWAY_NO_RESPONSE
        if meter.active_fault(hours, "exception"):
            return ExcCodes.DEVICE_FAILURE
        found = meter.control_at(address, count)
        if found is None or not meter.controls.writable(found[0], found[1], count):
            return ExcCodes.ILLEGAL_ADDRESS
        if meter.active_fault(hours, "ignore_writes"):
            # Acknowledged, and forgotten: the next read serves the old values again.
            log.info("fault: %s ignored a write of %d registers at %d", meter.name, count, address)
            return None
        meter.controls.write(found[0], found[1], [int(v) for v in values], time.monotonic())
        return None

    def device(self, meter: SimMeter) -> SimDevice:
        image = meter.image(self.site.counters, self.site.power_w, 0.0)
        bits = [SimData(0, 1, False, DataType.BITS)]
        holding = [
            SimData(image.holding_base, count=len(image.holding_registers), values=0, datatype=DataType.REGISTERS)
        ]
        inputs = (
            [SimData(0, count=len(image.input_registers), values=0, datatype=DataType.REGISTERS)]
            if image.input_registers is not None
            else [SimData(0, 1, 0, DataType.INVALID)]
        )

        # SimDevice calls the action for every read, with the registers to fill in.
        return SimDevice(id=meter.unit, simdata=(bits, bits, holding, inputs), action=partial(self._serve, meter))

    async def run(self, ready: asyncio.Event | None = None) -> None:
        by_port: dict[int, list[SimMeter]] = defaultdict(list)
        for meter in self.config.meters:
            by_port[meter.port].append(meter)
        servers = []
        for port, meters in by_port.items():
            server = ModbusTcpServer([self.device(m) for m in meters], address=(self.config.host, port))
            try:
                await server.serve_forever(background=True)
            except RuntimeError as err:
                raise OSError("cannot listen on %s:%d (is the port in use?)" % (self.config.host, port)) from err
            servers.append(server)
            log.info("serving %s on %s:%d", ", ".join(m.name for m in meters), self.config.host, port)
        if ready is not None:
            ready.set()
        try:
            while True:
                self.step()
                await asyncio.sleep(0.02)
        finally:
            for server in servers:
                await server.shutdown()  # type: ignore[no-untyped-call]
