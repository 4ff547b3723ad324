"""The interval loop of a DGC controller.

Every ``interval_s``, aligned to the wall clock (xx:00, xx:01, ...):
1. read every meter over RTU; if any read fails there is no reading this
   interval (never a guessed value), and the next reading spans the gap and
   carries METER_ERROR;
2. apply the DGC-C rules and sign (the core: the same bytes as the gateway
   for the same counters);
3. append to the flash outbox, and only then publish;
4. publish what the broker has not acknowledged, oldest first.

A full outbox pauses readings instead of dropping any. The watchdog is fed
once per pass, so a hung UART or socket resets the device, which then
carries on from the outbox (the next reading is flagged RESTARTED).
"""

from crev import dgcc
from dgc import FIRMWARE
from dgc.meters import MeterError, channels, read_meter


class App:
    def __init__(
        self,
        config: dict,
        bus: object,
        outbox: object,
        key: object,
        uplink: object,
        clock: object,
        watchdog: object = None,
        log: object = print,
    ) -> None:
        self.device = config["device"]["id"]
        self.interval_s = config["device"]["interval_s"]
        self.meters = config["meters"]
        self.bus = bus
        self.outbox = outbox
        self.key = key
        self.uplink = uplink
        self.clock = clock
        self.watchdog = watchdog
        self.log = log
        self.pending_flags = dgcc.RESTARTED  # the first reading after a boot
        self.paused = False

    def next_boundary(self, now: int) -> int:
        return (now // self.interval_s + 1) * self.interval_s

    def run_interval(self, t1: int) -> None:
        """Read, sign and commit the reading that ends at ``t1``."""
        try:
            samples = [read_meter(self.bus, meter) for meter in self.meters]
        except MeterError as err:
            self.pending_flags |= dgcc.METER_ERROR
            self.log("no reading at %d: %s" % (t1, err))  # type: ignore[operator]
            return
        outbox = self.outbox
        if outbox.full():  # type: ignore[attr-defined]
            if not self.paused:
                self.log("outbox full: readings paused, not dropped")  # type: ignore[operator]
            self.paused = True
            return
        self.paused = False
        head = outbox.head  # type: ignore[attr-defined]
        if head.last_t1 is not None and t1 <= head.last_t1:
            self.log("clock is behind the last reading; waiting")  # type: ignore[operator]
            return
        flags = self.pending_flags
        if self.clock.take_step():  # type: ignore[attr-defined]
            flags |= dgcc.CLOCK_STEP
        clk = 1 if self.clock.synchronised() else 0  # type: ignore[attr-defined]
        reading = head.next_reading(
            self.device, t1, clk, channels(self.meters, samples), FIRMWARE, flags, t1 - self.interval_s
        )
        cose = reading.sign(self.key)
        outbox.append(reading.seq, cose)  # type: ignore[attr-defined]
        self.pending_flags = 0

    def publish(self) -> int:
        outbox = self.outbox
        return self.uplink.send(outbox.unacknowledged(), outbox.acknowledge)  # type: ignore[attr-defined]

    def run(self, sleep_ms: object, passes: int = -1) -> None:
        """The main loop; ``passes`` bounds it for tests (-1: forever)."""
        clock = self.clock
        due = self.next_boundary(clock.now())  # type: ignore[attr-defined]
        while passes != 0:
            if self.watchdog is not None:
                self.watchdog.feed()  # type: ignore[attr-defined]
            now = clock.now()  # type: ignore[attr-defined]
            if now >= due:
                self.run_interval(due)
                due = self.next_boundary(now)
            self.publish()
            passes -= 1
            sleep_ms(200)  # type: ignore[operator]
