"""The smart meter's latest fixed-time values, for key 12 of each reading (SPEC §13).

A thread keeps the B-route session (crev_gateway._backends.broute) and the
newest 30-minute fixed-time import/export: it reads EA/EB every
``refresh_s`` and takes the meter's 30-minute pushes in between. The
reading loop never waits for the radio: ``values_for(t1)`` answers from what
the thread has, the newest value at a mark not after ``t1``, or None
(then the reading has no key 12: the smart meter is not a certified meter,
and a reading is never held back for it).

A failure (no PAN, a timeout, a refused request) is logged; the session is
closed and joined again after a back-off, and the values already known
stay usable, since each carries its own time.
"""

import logging
import threading
import time

from crev import smartmeter as sm
from crev_gateway import MeterError
from crev_gateway._backends.broute import BRouteMeter
from crev_gateway.config import SmartMeterConfig

log = logging.getLogger("crev.gateway.smartmeter")

KEEP = 8  # fixed-time values kept: a few slots' worth
BACKOFF_S = (1.0, 5.0, 30.0, 120.0)


class SmartMeterSource:
    def __init__(self, config: SmartMeterConfig, meter: BRouteMeter | None = None) -> None:
        self.config = config
        self.meter = meter or BRouteMeter(
            "smartmeter",
            config.port,
            config.model,
            config.rbid,
            config.password,
            baudrate=config.baudrate,
            utc_offset_s=config.utc_offset_s,
            request_timeout_s=config.request_timeout_s,
        )
        self.lock = threading.Lock()
        self.values: dict[int, sm.SlotValues] = {}  # mark t -> its values
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.failures = 0
        self.joined = False

    def take(self, values: list[sm.SlotValues]) -> None:
        with self.lock:
            for value in values:
                if value.t % sm.SLOT_S == 0:
                    self.values[value.t] = value
            for t in sorted(self.values)[:-KEEP]:
                del self.values[t]

    def values_for(self, t1: int) -> list[object] | None:
        """Key 12 for a reading ending at ``t1``: ``[meter_id, t, import_mWh, export_mWh]`` or None."""
        with self.lock:
            marks = [t for t in self.values if t <= t1]
            if not marks:
                return None
            value = self.values[max(marks)]
        return [self.config.meter_id, value.t, value.import_mwh, value.export_mwh]

    def refresh(self) -> None:
        """One pass: join if needed, read EA/EB, then listen for pushes for ``refresh_s``."""
        if not self.joined:
            self.meter.open(self.config.join_timeout_s)
            self.meter.read_scale()
            self.joined = True
            log.info("smart meter %s joined: %r", self.config.meter_id, self.meter.scale)
        self.take([self.meter.read_fixed()])
        deadline = time.monotonic() + self.config.refresh_s
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.take(self.meter.poll(min(0.5, max(0.0, deadline - time.monotonic()))))

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.refresh()
                self.failures = 0
            except MeterError as err:
                wait = BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)]
                self.failures += 1
                log.warning("smart meter %s: %s; trying again in %.0f s", self.config.meter_id, err, wait)
                self._close()
                self.stop_event.wait(wait)
            except Exception:
                log.exception("smart meter %s failed; trying again", self.config.meter_id)
                self._close()
                self.stop_event.wait(BACKOFF_S[-1])

    def _close(self) -> None:
        self.joined = False
        try:
            self.meter.close()
        except Exception:
            log.debug("closing the smart meter's port failed", exc_info=True)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="smartmeter", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
        self._close()
