"""The gateway's main loop: read, apply DGC-C, sign, commit, publish.

Per interval, aligned so that t1 % interval_s == 0:
1. read every meter (buses in parallel, meters on one bus in turn);
2. if any read failed: no reading; the next one spans the gap and carries
   METER_ERROR (SPEC §2), so no energy is lost or counted twice;
3. otherwise build the next reading of the chain with the core, sign it,
   and commit it to the outbox (durable) before anything is sent;
4. hand committed readings to MQTT in seq order, a bounded window at a time;
   a PUBACK removes a reading from the outbox;
5. with ``[market] sell = true``, close the 30-minute slots this reading
   ended and commit the controller's sells for them (orders.py), which go
   to MQTT the same way, in the order they were committed;
6. with ``[smartmeter]``, each reading carries the smart meter's latest
   30-minute fixed-time values as key 12 (SPEC §13; smartmeter.py reads them
   in its own thread, so the radio never delays a reading);
7. with ``[[operator]]`` entries, check the operators' commands, drive the
   inverters and commit signed acks, which go to MQTT the same way
   (control.py); a reading whose interval had a limit in force carries
   CURTAILED.

If the outbox reaches its bound, new readings are paused, never dropped:
the meters' counters keep accumulating, so the first reading after the
pause spans it.
"""

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from crev import dgcc
from crev.keys import SigningKey
from crev_gateway import ConfigError, MeterError, __version__
from crev_gateway._backends.modbus import ModbusBus
from crev_gateway._backends.mqtt import ReadingPublisher
from crev_gateway.clock import ClockWatch
from crev_gateway.config import GatewayConfig
from crev_gateway.control import SiteControl
from crev_gateway.keyfile import load_signing_key
from crev_gateway.meters import MeterReader, MeterSample
from crev_gateway.metrics import GatewayMetrics
from crev_gateway.orders import SlotSeller, self_by_source
from crev_gateway.outbox import Outbox
from crev_gateway.profiles import load_profile
from crev_gateway.smartmeter import SmartMeterSource

log = logging.getLogger("crev.gateway")
FIRMWARE = "crev-gateway/" + __version__
ORDERS_PER_PASS = 100  # bounds one loop pass after a long outage; the rest follow on the next passes
COMMAND_QUEUE = 64  # commands waiting to be checked; a flood beyond it is dropped by the MQTT thread


def _fields(**values: object) -> dict[str, object]:
    return {"fields": values}


class Gateway:
    def __init__(self, config: GatewayConfig, key: SigningKey | None = None) -> None:
        self._started = time.monotonic()
        self.config = config
        self.key = key or load_signing_key(config.key_path)
        self.metrics = GatewayMetrics()
        self.outbox = Outbox(config.outbox_path, config.device_id, self.key.kid)
        buses: dict[str, ModbusBus] = {}
        self.readers: list[MeterReader] = []
        for meter in config.meters:
            bus = buses.get(meter.url.key)
            if bus is None:
                bus = ModbusBus(
                    meter.url,
                    config.modbus_timeout_s,
                    config.modbus_retries,
                    config.modbus_backoff_s,
                    config.modbus_pause_s,
                )
                buses[meter.url.key] = bus
            self.readers.append(MeterReader(meter, load_profile(meter.profile), bus))
        self.buses = list(buses.values())
        self.acks: queue.Queue[int] = queue.Queue()
        self.order_acks: queue.Queue[int] = queue.Queue()
        self.commands: queue.Queue[bytes] = queue.Queue(maxsize=COMMAND_QUEUE)
        self.ack_acks: queue.Queue[int] = queue.Queue()
        self.publisher = ReadingPublisher(
            config.mqtt,
            config.device_id,
            self.acks,
            self.order_acks,
            self.commands if config.operators else None,
            self.ack_acks,
        )
        self.publisher.on_state_change = lambda up: self.metrics.connected.set(1 if up else 0)
        self.clock = ClockWatch(config.clock)
        self.stop_event = threading.Event()
        self.pending_flags = 0
        self.head = self.outbox.head()
        self.restarted = self.head.last_t1 is not None
        self.handed_up_to = -1  # highest seq handed to MQTT in this process
        self.in_flight = 0
        self.outbox_paused = False
        self.orders_handed_up_to = 0  # highest order id handed to MQTT in this process (ids start at 1)
        self.seller: SlotSeller | None = None
        if config.market is not None:
            self.seller = SlotSeller(config.market, self.key, self.outbox, self.now, self.metrics, config.device_id)
        else:
            self.outbox.forget_slot_sums()
        self.metrics.orders_pending.set(self.outbox.order_depth())
        self.acks_handed_up_to = 0  # highest command-ack id handed to MQTT in this process
        self.smart_meter: SmartMeterSource | None = None
        if config.smart_meter is not None:
            self.smart_meter = SmartMeterSource(config.smart_meter)
        self.control: SiteControl | None = None
        if config.operators:
            self.control = SiteControl(
                config.device_id, config.operators, self.key, self.outbox, self.readers, self.metrics, self.now
            )

    # ------------------------------------------------------------ meters

    def check_meters(self) -> list[MeterSample]:
        """Read every meter once; raises MeterError for the first that fails."""
        return [reader.read() for reader in self.readers]

    def _read_bus(self, bus: ModbusBus) -> list[tuple[MeterReader, MeterSample | MeterError]]:
        results: list[tuple[MeterReader, MeterSample | MeterError]] = []
        for reader in self.readers:
            if reader.bus is bus:
                try:
                    results.append((reader, reader.read()))
                except MeterError as err:
                    results.append((reader, err))
        return results

    def read_all(self, pool: ThreadPoolExecutor) -> list[MeterSample] | None:
        by_reader: dict[int, MeterSample] = {}
        failed = False
        for results in pool.map(self._read_bus, self.buses):
            for reader, outcome in results:
                if isinstance(outcome, MeterError):
                    failed = True
                    self.metrics.read_errors.labels(reader.config.name, outcome.code).inc()
                    log.warning(
                        "meter read failed: %s",
                        outcome,
                        extra=_fields(event="meter_error", meter=reader.config.name, reason=outcome.code),
                    )
                else:
                    by_reader[id(reader)] = outcome
                    self.metrics.last_good_read.labels(reader.config.name).set(outcome.read_at)
        if failed:
            return None
        return [by_reader[id(reader)] for reader in self.readers]

    def channels(self, samples: list[MeterSample]) -> list[tuple[int, str, int, int]]:
        channels = []
        for reader, sample in zip(self.readers, samples, strict=True):
            cfg = reader.config
            if cfg.role == "generation":
                channels.append((dgcc.ROLE_GENERATION, sample.serial, cfg.source, sample.energies_mwh[cfg.counter]))
            else:
                channels.append((dgcc.ROLE_IMPORT, sample.serial, dgcc.SOURCE_GRID, sample.energies_mwh["import"]))
                channels.append((dgcc.ROLE_EXPORT, sample.serial, dgcc.SOURCE_GRID, sample.energies_mwh["export"]))
        return channels

    # ------------------------------------------------------------ intervals

    def outbox_full(self) -> bool:
        depth = self.outbox.depth()
        oldest = self.outbox.oldest_committed_at()
        age = 0.0 if oldest is None else time.time() - oldest
        self.metrics.outbox_depth.set(depth)
        self.metrics.oldest_unacked.set(age)
        fill = max(depth / self.config.outbox_max_readings, age / self.config.outbox_max_age_s)
        alarm = fill >= self.config.outbox_alarm_fraction
        self.metrics.outbox_alarm.set(1 if alarm else 0)
        if alarm:
            log.warning(
                "outbox at %.0f%% of its bound (%d readings, oldest %.0f s): is the broker reachable?",
                100 * fill,
                depth,
                age,
                extra=_fields(event="outbox_alarm", depth=depth, oldest_age_s=round(age)),
            )
        return fill >= 1.0

    def run_interval(self, t1: int, pool: ThreadPoolExecutor) -> None:
        samples = self.read_all(pool)
        if samples is None:
            self.pending_flags |= dgcc.METER_ERROR
            self.metrics.skipped.labels("meter_error").inc()
            return
        if self.outbox_full():
            self.metrics.skipped.labels("outbox_full").inc()
            if not self.outbox_paused:
                log.error(
                    "outbox is full: readings are paused, not dropped; the next reading will span the pause",
                    extra=_fields(event="outbox_full"),
                )
            self.outbox_paused = True
            return
        self.outbox_paused = False
        if self.head.last_t1 is not None and t1 <= self.head.last_t1:
            log.warning("clock is behind the last reading (t1 %d <= %d); waiting", t1, self.head.last_t1)
            return
        flags = self.pending_flags
        if self.clock.take_step():
            flags |= dgcc.CLOCK_STEP
        if self.restarted:
            flags |= dgcc.RESTARTED
        t0 = self.head.last_t1 if self.head.last_t1 is not None else t1 - self.config.interval_s
        if self.control is not None and self.control.curtailed_since(t0):
            flags |= dgcc.CURTAILED
        clk = 1 if self.clock.synchronised() else 0
        reading = self.head.next_reading(
            self.config.device_id,
            t1,
            clk,
            self.channels(samples),
            FIRMWARE,
            flags,
            t0=t1 - self.config.interval_s,
            smart_meter=None if self.smart_meter is None else self.smart_meter.values_for(t1),
        )
        cose = reading.sign(self.key)
        self.outbox.commit(reading.seq, t1, cose, None if self.seller is None else self_by_source(reading))
        self.head = self.head.advance(reading, cose)
        self.pending_flags = 0
        self.restarted = False
        self.metrics.readings.inc()
        log.info(
            "reading %d committed",
            reading.seq,
            extra=_fields(
                event="reading",
                seq=reading.seq,
                t1=t1,
                flags=dgcc.flag_names(reading.flags),
                self_mwh=reading.energies[3] if reading.energies else None,
            ),
        )
        if self.seller is not None:
            self.seller.close_through(t1)

    # ------------------------------------------------------------ MQTT

    def process_acks(self, wait_s: float) -> None:
        acked = []
        try:
            acked.append(self.acks.get(timeout=max(0.0, wait_s)))
            while True:
                acked.append(self.acks.get_nowait())
        except queue.Empty:
            pass
        if acked:
            self.outbox.acknowledge(acked)
            self.in_flight -= len(acked)
            self.metrics.last_puback.set(time.time())
        # Order PUBACKs are few: picking them up once per loop is soon enough.
        orders = []
        try:
            while True:
                orders.append(self.order_acks.get_nowait())
        except queue.Empty:
            pass
        if orders:
            self.outbox.acknowledge_orders(orders)
            self.metrics.orders_pending.set(self.outbox.order_depth())
            self.metrics.last_puback.set(time.time())
        command_acks = []
        try:
            while True:
                command_acks.append(self.ack_acks.get_nowait())
        except queue.Empty:
            pass
        if command_acks:
            self.outbox.acknowledge_acks(command_acks)
            self.metrics.acks_pending.set(self.outbox.ack_depth())

    def feed_publisher(self) -> None:
        room = self.config.publish_window - self.in_flight
        if room <= 0:
            return
        for seq, cose in self.outbox.pending_after(self.handed_up_to, room):
            self.publisher.publish(seq, cose)
            self.handed_up_to = seq
            self.in_flight += 1

    def feed_orders(self) -> None:
        """Hand committed orders to MQTT once each, oldest first; paho keeps them until their PUBACK."""
        for order_id, cose in self.outbox.orders_after(self.orders_handed_up_to, ORDERS_PER_PASS):
            self.publisher.publish_order(order_id, cose)
            self.orders_handed_up_to = order_id

    def feed_acks(self) -> None:
        """Hand committed command acks to MQTT once each, oldest first, like orders."""
        for ack_id, cose in self.outbox.acks_after(self.acks_handed_up_to, ORDERS_PER_PASS):
            self.publisher.publish_ack(ack_id, cose)
            self.acks_handed_up_to = ack_id

    def run_control(self) -> None:
        """Check the commands that arrived, then expiries and refreshes (SPEC §12)."""
        control = self.control
        if control is None:
            return
        for _ in range(COMMAND_QUEUE):
            try:
                raw = self.commands.get_nowait()
            except queue.Empty:
                break
            try:
                control.handle(raw)
            except Exception:
                # Whatever a command holds, the readings go on.
                log.exception("a command could not be handled", extra=_fields(event="command_error"))
        try:
            control.tick()
        except Exception:
            log.exception("the site control failed; trying again", extra=_fields(event="control_error"))

    # ------------------------------------------------------------ loop

    def now(self) -> float:
        """The time readings are signed with: the system clock, or the demo's simulated one."""
        if self.config.sim_epoch is None:
            return time.time()
        return self.config.sim_epoch + (time.monotonic() - self._started) * self.config.sim_speed

    def next_boundary(self, now: float) -> int:
        interval = self.config.interval_s
        return (int(now) // interval + 1) * interval

    def run(self) -> None:
        if self.config.metrics_listen:
            host, port = self.config.metrics_listen
            self.metrics.serve(host, port)
        self.publisher.start()
        if self.smart_meter is not None:
            self.smart_meter.start()
        log.info(
            "gateway %s running: %d meters, interval %d s, next seq %d",
            self.config.device_id,
            len(self.readers),
            self.config.interval_s,
            self.head.next_seq,
            extra=_fields(event="start", device=self.config.device_id, next_seq=self.head.next_seq),
        )
        self._started = time.monotonic()
        if self.seller is not None and self.head.last_t1 is not None:
            # A crash between a reading's commit and its slot's closure left that slot open: close it
            # now, not at the next reading, which is long in coming while the meters are down.
            self.seller.close_through(self.head.last_t1)
        if self.control is not None:
            try:
                self.control.start()
            except Exception:
                log.exception("cannot resume the site control; commands are checked from now on")
        boundary = self.next_boundary(self.now())
        with ThreadPoolExecutor(max_workers=max(1, len(self.buses)), thread_name_prefix="bus") as pool:
            try:
                while not self.stop_event.is_set():
                    self.clock.observe()
                    now = self.now()
                    if now >= boundary:
                        self.run_interval(boundary, pool)
                        boundary = self.next_boundary(self.now())
                    self.feed_publisher()
                    self.feed_orders()
                    self.run_control()
                    self.feed_acks()
                    self.process_acks(min(0.2, (boundary - self.now()) / self.config.sim_speed))
            finally:
                if self.smart_meter is not None:
                    self.smart_meter.stop()
                self.publisher.stop()
                for bus in self.buses:
                    bus.close()
                self.outbox.close()

    def stop(self) -> None:
        self.stop_event.set()


def check_startup(gateway: Gateway) -> None:
    """Read every meter once before running, so wiring mistakes show at once."""
    try:
        gateway.check_meters()
    except MeterError as err:
        reader = next(r for r in gateway.readers if r.config.name == err.meter)
        raise ConfigError(
            "meter %r at %s unit %d: %s; check the wiring, URL, unit id and profile"
            % (err.meter, reader.config.url.key, reader.config.unit, err.detail)
        ) from err
