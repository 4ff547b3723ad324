"""``crev sim meters`` and ``crev sim smartmeter``: run the simulated meters until interrupted."""

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from crev_sim import config as sim_config
from crev_sim.server import Simulation


async def _run(simulation: Simulation) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    task = asyncio.create_task(simulation.run(ready))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_meters(config_path: Path) -> None:
    """Raises SimConfigError for a bad configuration, OSError if a port is taken."""
    config = sim_config.load(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_run(Simulation(config)))


def run_smartmeter(config_path: Path) -> None:
    """The meters of ``run_meters`` and a smart meter on the same site (crev_sim.smartmeter)."""
    from crev_sim import smartmeter

    config, meter = smartmeter.load(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(_run(smartmeter.SmartMeterSimulation(config, meter)))
