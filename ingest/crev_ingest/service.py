"""``crev ingest run``: MQTT in, verified readings and ledger blocks out.

paho-mqtt with MQTT v5, a shared subscription (``$share/crev-ingest/...``)
so several workers split the load, and manual acknowledgement: a PUBACK
leaves only after the batch holding the message is committed (SQLite WAL,
synchronous=FULL, or PostgreSQL). A crash before the commit means the broker
redelivers; a store that cannot be written is retried, and meanwhile nothing
is acknowledged, so the broker keeps the messages.
The session persists (clean_start off, one day expiry) under a stable
client id, so a restarted worker gets back what it had not acknowledged.
"""

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from crev.reading import Reading, valid_device_id
from crev_ingest import StoreUnavailable
from crev_ingest.config import IngestConfig
from crev_ingest.database import first_line
from crev_ingest.influx import InfluxWriter, reading_point
from crev_ingest.integrate import integrate
from crev_ingest.integrator import Integrator
from crev_ingest.keyfile import load_key
from crev_ingest.ledger import Ledger
from crev_ingest.metrics import IngestMetrics
from crev_ingest.orders import is_order_topic, store_order
from crev_ingest.store import Store
from crev_ingest.validate import Ingestor, Rejected, topic_device
from crev_ingest.watch import FloodWatch
from crev_ingest.witnessing import Witnessing

log = logging.getLogger("crev.ingest")
# A database that went away is retried at least this often, so ingest resumes soon after it is back.
STORE_RETRY_MAX_S = 10.0
SHARED_TOPIC = "$share/crev-ingest/crev/v1/+/reading"
PLAIN_TOPIC = "crev/v1/+/reading"
# Controllers' sell orders (SPEC §9), shared like the readings: whichever worker gets one keeps it.
SHARED_ORDER_TOPIC = "$share/crev-ingest/crev/v1/+/order"
PLAIN_ORDER_TOPIC = "crev/v1/+/order"
# Retained online/offline (the gateways' last will): every worker keeps it, for the dashboard.
STATUS_TOPIC = "crev/v1/+/status"


class IngestService:
    def __init__(self, config: IngestConfig, client_id: str | None = None) -> None:
        self.config = config
        key = load_key(config.ledger_key_path)
        self.stop_event = threading.Event()
        self.store = self._open_store()
        self.ledger = Ledger(self.store, key, config.origin, config.block_interval_s, config.block_max_leaves)
        self.ingestor = Ingestor(self.store, self.ledger, config)
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.counts = {"accepted": 0, "duplicate": 0, "quarantined": 0}
        self.metrics = IngestMetrics()
        self.client_id = client_id or config.client_id or "crev-ingest-%s" % socket.gethostname()
        self.topic = SHARED_TOPIC if config.mqtt_v5 else PLAIN_TOPIC
        self.order_topic = SHARED_ORDER_TOPIC if config.mqtt_v5 else PLAIN_ORDER_TOPIC
        if config.mqtt_v5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if config.mqtt_username:
            password = config.mqtt_password_file.read_text().strip() if config.mqtt_password_file else None
            client.username_pw_set(config.mqtt_username, password)
        if config.mqtt_tls:
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.flood = FloodWatch(config.max_per_minute)
        self.witnessing = Witnessing(config.store_location, config.witnesses, self.metrics)
        self._acked: set[int] = set()  # message ids of the current batch already acknowledged
        self.client = client
        self.influx: InfluxWriter | None = None
        if config.influx_url and config.influx_token_file:
            self.influx = InfluxWriter(
                config.influx_url, config.influx_token_file, config.influx_org, config.influx_bucket
            )
        # On PostgreSQL, workers only sequence; whichever worker holds the lock integrates.
        self.integrator: Integrator | None = None
        if self.store.db.dialect == "postgresql":
            self.integrator = Integrator(config, key, self.metrics, self.stop_event, self.client_id, self.influx)

    def _open_store(self) -> Store:
        """The store, waiting for a database server that is not up yet, and saying so while it waits."""
        delay = 1.0
        while True:
            try:
                return Store(self.config.store_location)
            except StoreUnavailable as err:
                log.error("%s; retrying in %.0f s", err, delay)
                if self.stop_event.wait(delay):
                    raise
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            log.error(
                "the broker at %s:%d refused the connection: %s; retrying",
                self.config.mqtt_host,
                self.config.mqtt_port,
                reason,
            )
            return
        self.metrics.broker_connected.set(1)
        client.subscribe([(self.topic, 1), (self.order_topic, 1), (STATUS_TOPIC, 1)])
        log.info("connected; subscribed to %s, %s and %s", self.topic, self.order_topic, STATUS_TOPIC)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho retries on its own, with a backoff up to 30 s; say so at every attempt.
        self.metrics.broker_connected.set(0)
        log.error(
            "cannot reach the broker at %s:%d; retrying (readings wait in the gateways' outboxes)",
            self.config.mqtt_host,
            self.config.mqtt_port,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self.metrics.broker_connected.set(0)
        if not self.stop_event.is_set():
            log.warning(
                "lost the broker at %s:%d (%s); reconnecting", self.config.mqtt_host, self.config.mqtt_port, reason
            )

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.inbox.put(message)

    def _take_batch(self) -> list[mqtt.MQTTMessage]:
        batch = []
        try:
            batch.append(self.inbox.get(timeout=0.2))
            deadline = time.monotonic() + self.config.batch_wait_s
            while len(batch) < self.config.batch_max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                batch.append(self.inbox.get(timeout=remaining))
        except queue.Empty:
            pass
        return batch

    def _note_statuses(self, statuses: list[mqtt.MQTTMessage]) -> None:
        now_ms = int(time.time() * 1000)
        for message in statuses:
            dev = message.topic.split("/")[2]
            status = bytes(message.payload).decode("ascii", "replace").strip()
            if valid_device_id(dev) and status in ("online", "offline"):
                self.store.note_status(dev, self.config.site_of(dev), status, now_ms)

    def process_batch(self, batch: list[mqtt.MQTTMessage]) -> None:
        statuses = [m for m in batch if m.topic.endswith("/status")]
        if statuses:
            with self.store.transaction(lock=False):
                self._note_statuses(statuses)
            for message in statuses:
                self._ack(message)
            batch = [m for m in batch if not m.topic.endswith("/status")]
            if not batch:
                return
        orders = [m for m in batch if is_order_topic(m.topic)]
        if orders:
            self._store_orders(orders)
            batch = [m for m in batch if not is_order_topic(m.topic)]
            if not batch:
                return
        started = time.monotonic()
        accepted: list[Reading] = []
        # Signatures and schemas first, without the write lock, so that
        # several workers verify in parallel.
        checked: list[tuple[int, Reading | Rejected]] = []
        self.store.db.ensure_connected()  # the key lookups below run outside a transaction
        self.ingestor.refresh_keys()
        for message in batch:
            received_ms = int(time.time() * 1000)
            try:
                result: Reading | Rejected = self.ingestor.check_message(message.topic, bytes(message.payload))
            except Rejected as rejected:
                result = rejected
            except self.store.db.errors:
                raise  # the store, not the message: the whole batch waits and is retried
            except Exception as err:  # a bug: kept for inspection like any other rejection
                result = Rejected("INTERNAL_ERROR", "%s: %s" % (type(err).__name__, err))
            checked.append((received_ms, result))
            self._watch(message.topic, result, received_ms / 1000)
        if self.integrator is not None:
            self._sequence(batch, checked)
            return
        items = [
            (received_ms, message.topic, bytes(message.payload), result)
            for message, (received_ms, result) in zip(batch, checked, strict=True)
        ]
        for message, outcome in zip(batch, integrate(self.store, self.ledger, self.ingestor, items), strict=True):
            self.counts[outcome.status] += 1
            self._count(outcome.status, outcome.reason)
            if outcome.reading is not None:
                accepted.append(outcome.reading)
            if outcome.status == "quarantined":
                log.warning(
                    "quarantined %s from %s: %s",
                    outcome.reason,
                    message.topic,
                    outcome.detail,
                    extra={"fields": {"event": "quarantine", "reason": outcome.reason, "topic": message.topic}},
                )
        self.metrics.commit.observe(time.monotonic() - started)
        now = time.time()
        for reading in accepted:
            self.metrics.lag.observe(max(0.0, now - reading.t1))
        self.metrics.height.set(self.ledger.height)
        self.metrics.open_gaps.set(len(self.store.open_gaps()))
        for message in batch:  # only now, after the durable commit
            self._ack(message)
        if self.influx is not None:
            points = [reading_point(r, self.config.site_of(r.dev), self.config.factor_for(r.dev)) for r in accepted]
            self.influx.write([p for p in points if p is not None])

    def _sequence(self, batch: list[mqtt.MQTTMessage], checked: list[tuple[int, "Reading | Rejected"]]) -> None:
        """PostgreSQL: commit the verified readings to pending (the rejected to quarantine), then acknowledge.

        No writer lock: workers sequence side by side, and the integrator
        gives leaf indices later (crev_ingest.integrator).
        """
        started = time.monotonic()
        with self.store.transaction(lock=False):
            verified: list[tuple[str, int, int, str, bytes]] = []
            for message, (received_ms, result) in zip(batch, checked, strict=True):
                raw = bytes(message.payload)
                if isinstance(result, Rejected):
                    outcome = self.ingestor.quarantine(message.topic, raw, received_ms, result)
                    self.counts["quarantined"] += 1
                    self._count("quarantined", outcome.reason)
                    log.warning("quarantined %s from %s: %s", outcome.reason, message.topic, outcome.detail)
                else:
                    verified.append((result.dev, result.seq, received_ms, message.topic, raw))
            for added in self.store.add_pending_many(verified):
                self.counts["accepted" if added else "duplicate"] += 1
        self.metrics.commit.observe(time.monotonic() - started)
        for message in batch:  # only now, after the durable commit
            self._ack(message)

    def _watch(self, topic: str, result: "Reading | Rejected", now_s: float) -> None:
        dev = topic_device(topic)
        if dev is None or (isinstance(result, Reading) and not FloodWatch.is_live(result.t1, now_s)):
            return
        count = self.flood.note(dev, now_s)
        if count is None:
            return
        detail = "%d live messages in the last minute, more than [validation] max_per_minute = %d" % (
            count,
            self.config.max_per_minute,
        )
        log.warning("%s floods the broker: %s", dev, detail, extra={"fields": {"event": "flood", "dev": dev}})
        self.metrics.floods.inc()
        with self.store.transaction(lock=False):
            self.store.alarm(int(now_s * 1000), "FLOOD", dev, detail)

    def _store_orders(self, orders: list[mqtt.MQTTMessage]) -> None:
        with self.store.transaction(lock=False):  # the inbox gives no leaf index: the market places them
            for message in orders:
                outcome = store_order(self.store, message.topic, bytes(message.payload), int(time.time() * 1000))
                self.metrics.orders.labels(outcome).inc()
                if outcome == "quarantined":
                    log.warning(
                        "quarantined an order from %s",
                        message.topic,
                        extra={"fields": {"event": "quarantine", "topic": message.topic}},
                    )
        for message in orders:  # only now, after the durable commit
            self._ack(message)

    def _count(self, status: str, reason: str | None) -> None:
        if status == "accepted":
            self.metrics.accepted.inc()
        elif status == "duplicate":
            self.metrics.duplicates.inc()
        else:
            self.metrics.quarantined.labels(reason or "UNKNOWN").inc()

    def seal_if_due(self) -> None:
        if self.integrator is None and self.ledger.due():  # on PostgreSQL the integrator seals
            with self.store.transaction():
                self.ledger.sync()
                if self.ledger.due():
                    self.ledger.seal(int(time.time() * 1000))

    def seal_pending(self) -> None:
        """On the way out, seal whatever is pending, so every stored reading is provable."""
        if self.integrator is not None:
            return  # the integrator seals on its way out, and the next one after a crash
        with self.store.transaction():
            self.ledger.sync()
            if self.ledger.size > self.ledger.sealed_size:
                self.ledger.seal(int(time.time() * 1000))

    def run(self) -> None:
        if self.config.mqtt_v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 86400
            self.client.connect_async(
                self.config.mqtt_host, self.config.mqtt_port, keepalive=30, clean_start=False, properties=properties
            )
        else:
            self.client.connect_async(self.config.mqtt_host, self.config.mqtt_port, keepalive=30)
        self.client.loop_start()
        if self.config.metrics_listen:
            self.metrics.serve(*self.config.metrics_listen)
        self.metrics.height.set(self.ledger.height)
        log.info("ingest running: ledger size %d, height %d", self.ledger.size, self.ledger.height)
        self.witnessing.start()
        if self.integrator is not None:
            self.integrator.start()
        try:
            while not self.stop_event.is_set():
                batch = self._take_batch()
                self._acked.clear()
                if batch:
                    self._with_store(lambda batch=batch: self.process_batch(batch))  # type: ignore[misc]
                else:
                    self._with_store(self.seal_if_due)
        finally:
            self.stop_event.set()
            if self.integrator is not None:
                self.integrator.join(60)
            self.witnessing.stop()
            self.client.disconnect()
            self.client.loop_stop()
            self.seal_pending()
            self.store.close()
            if self.influx is not None:
                self.influx.close()

    def _ack(self, message: mqtt.MQTTMessage) -> None:
        """Acknowledge once, even when a batch is retried after its first part committed."""
        if message.mid not in self._acked:
            self._acked.add(message.mid)
            self.client.ack(message.mid, message.qos)

    def _with_store(self, work: "Callable[[], None]") -> None:
        """Run ``work`` until the store takes it: a locked, full or failing disk is retried, never dropped.

        Nothing is acknowledged before the commit, so the broker keeps every
        message of a batch that waits here.
        """
        retryable: tuple[type[BaseException], ...] = (*self.store.db.errors, StoreUnavailable)
        delay = 1.0
        while True:
            try:
                work()
                self.metrics.store_ok.set(1)
                return
            except retryable as err:
                self.metrics.store_ok.set(0)
                log.error(
                    "cannot write the store %s: %s; retrying in %.0f s", self.store.db.label, first_line(err), delay
                )
                if self.stop_event.wait(delay):
                    raise
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    def stop(self) -> None:
        self.stop_event.set()
