"""The interval loop of a DGC controller.

Every ``interval_s``, aligned to the wall clock (xx:00, xx:01, ...):
1. read every meter over RTU; if any read fails there is no reading this
   interval (never a guessed value), and the next reading spans the gap and
   carries METER_ERROR;
2. apply the DGC-C rules and sign (the core: the same bytes as the gateway
   for the same counters);
3. append to the flash outbox, and only then publish;
4. publish what the broker has not acknowledged, oldest first.

With site control (SPEC §12, dgc/control.py; ``control`` is None on a board
without operators, which then never imports it) every pass also handles
the operators' commands, and a reading whose interval had a limit in force
carries CURTAILED.

A full outbox pauses readings instead of dropping any. The watchdog is fed
once per pass, so a hung UART or socket resets the device, which then
carries on from the outbox (the next reading is flagged RESTARTED).

Each pass publishes at most REPLAY_BATCH readings. After an outage the
backlog (up to the whole ring, 1,024 readings) goes out over many passes:
each PUBACK costs a round trip, so sending it all in one pass could outlast
the watchdog, and the memory a pass needs stays that of one batch whatever
the length of the outage. At 200 ms a pass that is still up to 40 readings
a second.
"""

from crev import dgcc
from dgc import FIRMWARE
from dgc.meters import MeterError, channels, read_meter

REPLAY_BATCH = 8


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
        control: object = None,
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
        self.control = control  # dgc.control.Control, or None
        self.pending_flags = dgcc.RESTARTED  # the first reading after a boot
        self.paused = False
        self.due = None  # type: int | None  # the next interval boundary, kept between run() calls

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
        if self.control is not None:
            # The interval starts where the last reading ended (or one interval back, first).
            t0 = head.last_t1 if head.last_t1 is not None else t1 - self.interval_s
            if self.control.curtailed_since(t0):  # type: ignore[attr-defined]
                flags |= dgcc.CURTAILED
        clk = 1 if self.clock.synchronised() else 0  # type: ignore[attr-defined]
        reading = head.next_reading(
            self.device, t1, clk, channels(self.meters, samples), FIRMWARE, flags, t1 - self.interval_s
        )
        cose = reading.sign(self.key)
        outbox.append(reading.seq, cose)  # type: ignore[attr-defined]
        self.pending_flags = 0

    def publish(self, batch: int = REPLAY_BATCH) -> int:
        """Send up to ``batch`` unacknowledged readings, oldest first; how many went."""
        outbox = self.outbox
        # Flash is read only when there is something to send and a connection to send it on.
        if not outbox.pending() or not self.uplink.connected():  # type: ignore[attr-defined]
            return 0
        records = outbox.unacknowledged(batch)  # type: ignore[attr-defined]
        try:
            return self.uplink.send(records, outbox.acknowledge)  # type: ignore[attr-defined]
        finally:
            records.close()  # the segment file it reads, at once

    def run(self, sleep_ms: object, passes: int = -1) -> None:
        """The main loop; ``passes`` bounds it for tests (-1: forever)."""
        clock = self.clock
        due = self.due
        now = clock.now()  # type: ignore[attr-defined]
        # The boundary kept from the last call may have passed while it returned: it is
        # still due. One more than an interval away means the clock jumped (a first NTP
        # synchronisation, say): start again from the next boundary, so the next reading
        # spans the jump instead of taking a t1 from before it.
        if due is None or abs(due - now) > self.interval_s:
            due = self.next_boundary(now)
        while passes != 0:
            if self.watchdog is not None:
                self.watchdog.feed()  # type: ignore[attr-defined]
            now = clock.now()  # type: ignore[attr-defined]
            if self.control is not None:
                self.control.poll(now)  # type: ignore[attr-defined]
            if now >= due:
                self.run_interval(due)
                due = self.next_boundary(now)
            self.due = due
            self.publish()
            passes -= 1
            sleep_ms(200)  # type: ignore[operator]
