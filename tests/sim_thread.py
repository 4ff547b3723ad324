"""Run the simulator in a background thread of the test process (real Modbus TCP)."""

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness import port_open, wait_for

from crev_sim import config as sim_config
from crev_sim.server import Simulation


@contextmanager
def simulation(raw: dict[str, Any]) -> Iterator[Simulation]:
    sim = Simulation(sim_config.parse(raw, Path(".")))
    loop = asyncio.new_event_loop()
    task: list[asyncio.Task[None]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(sim.run()))
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: all(port_open(m.port) for m in sim.config.meters), 10, "simulated meters")
    try:
        yield sim
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(timeout=10)
