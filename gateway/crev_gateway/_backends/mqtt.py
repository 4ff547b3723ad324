"""The only place that touches paho-mqtt: QoS 1 readings, orders and acks, a retained status, commands in.

paho keeps every QoS 1 message it was given until the PUBACK and re-sends
it (in order, with DUP) after a reconnect, so within one process each
reading is handed to paho exactly once; after a restart the outbox hands
over whatever was never acknowledged. PUBACKs are passed to the service
through queues, so only the service thread touches the outbox: a reading's
PUBACK goes to ``acks`` as its seq, an order's to ``order_acks`` as its
outbox id, a command acknowledgement's to ``ack_acks`` as its outbox id.
Each mid remembers which queue it belongs to, so the id spaces never mix.

Commands (SPEC §12) arrive on the device's ``cmd`` topic, subscribed to at
every connect (the session is clean), and go to ``commands`` as raw bytes
for the service thread to check; a flood beyond the queue's bound is
dropped with a log line, never buffered without end.
"""

import logging
import queue
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from crev_gateway import ConfigError
from crev_gateway.config import MqttConfig

log = logging.getLogger("crev.gateway.mqtt")


def reading_topic(device_id: str) -> str:
    return "crev/v1/%s/reading" % device_id


def status_topic(device_id: str) -> str:
    return "crev/v1/%s/status" % device_id


def order_topic(device_id: str) -> str:
    return "crev/v1/%s/order" % device_id


def cmd_topic(device_id: str) -> str:
    return "crev/v1/%s/cmd" % device_id


def ack_topic(device_id: str) -> str:
    return "crev/v1/%s/ack" % device_id


MAX_COMMAND_BYTES = 8192  # a command is a few hundred bytes; anything far larger is not one


class ReadingPublisher:
    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        acks: "queue.Queue[int]",
        order_acks: "queue.Queue[int] | None" = None,
        commands: "queue.Queue[bytes] | None" = None,
        ack_acks: "queue.Queue[int] | None" = None,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.acks = acks
        self.order_acks = order_acks
        self.commands = commands
        self.ack_acks = ack_acks
        self.connected = threading.Event()
        self.on_state_change: Callable[[bool], None] | None = None
        # mid -> (the queue its PUBACK goes to, the id put there). paho calls
        # on_publish while holding its own lock, so ours is never held across
        # a paho call, and a PUBACK may arrive before publish() has recorded its mid.
        self._by_mid: dict[int, tuple[queue.Queue[int] | None, int]] = {}
        self._acked_early: set[int] = set()
        self._lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="crev-gw-" + device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.max_inflight_messages_set(50)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.will_set(status_topic(device_id), b"offline", qos=1, retain=True)
        if config.username is not None:
            password = None
            if config.password_file is not None:
                password = _read_secret(config.password_file)
            client.username_pw_set(config.username, password)
        if config.tls:
            context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client

    def start(self) -> None:
        # connect_async: an unreachable broker at start-up is an outage like any other.
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def _track(self, mid: int, target: "queue.Queue[int] | None", ident: int) -> None:
        """Remember where a message's PUBACK goes; None for status messages, whose PUBACK nobody waits for."""
        with self._lock:
            if mid in self._acked_early:
                self._acked_early.discard(mid)
                acked = True
            else:
                self._by_mid[mid] = (target, ident)
                acked = False
        if acked and target is not None:
            target.put(ident)

    def _publish_status(self, client: mqtt.Client, status: bytes) -> mqtt.MQTTMessageInfo:
        info = client.publish(status_topic(self.device_id), status, qos=1, retain=True)
        self._track(info.mid, None, 0)
        return info

    def stop(self) -> None:
        if self.connected.is_set():
            self._publish_status(self.client, b"offline").wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, seq: int, cose: bytes) -> None:
        info = self.client.publish(reading_topic(self.device_id), cose, qos=1)
        self._track(info.mid, self.acks, seq)

    def publish_order(self, order_id: int, cose: bytes) -> None:
        """A controller's sell (SPEC §9); its PUBACK comes back on ``order_acks`` as ``order_id``."""
        if self.order_acks is None:
            raise RuntimeError("this publisher was made without a queue for order PUBACKs")
        info = self.client.publish(order_topic(self.device_id), cose, qos=1)
        self._track(info.mid, self.order_acks, order_id)

    def publish_ack(self, ack_id: int, cose: bytes) -> None:
        """A signed acknowledgement of a command (SPEC §12); its PUBACK comes back on ``ack_acks``."""
        if self.ack_acks is None:
            raise RuntimeError("this publisher was made without a queue for ack PUBACKs")
        info = self.client.publish(ack_topic(self.device_id), cose, qos=1)
        self._track(info.mid, self.ack_acks, ack_id)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self.commands is None or message.topic != cmd_topic(self.device_id):
            return
        payload = bytes(message.payload)
        if len(payload) > MAX_COMMAND_BYTES:
            log.warning("ignored a %d-byte message on %s: too large to be a command", len(payload), message.topic)
            return
        try:
            self.commands.put_nowait(payload)
        except queue.Full:
            log.warning("dropped a command: %d are already waiting to be checked", self.commands.qsize())

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._publish_status(client, b"online")
        if self.commands is not None:
            client.subscribe(cmd_topic(self.device_id), qos=1)
        self.connected.set()
        log.info("connected to %s:%d", self.config.host, self.config.port)
        if self.on_state_change:
            self.on_state_change(True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker: %s; readings wait in the outbox", reason)
        self.connected.clear()
        if self.on_state_change:
            self.on_state_change(False)

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: object
    ) -> None:
        with self._lock:
            tracked = self._by_mid.pop(mid, None)
            if tracked is None:
                self._acked_early.add(mid)
        if tracked is not None and tracked[0] is not None:
            tracked[0].put(tracked[1])


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError("cannot read the MQTT password file %s: %s" % (path, err.strerror)) from err
