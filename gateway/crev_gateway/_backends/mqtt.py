"""The only place that touches paho-mqtt: QoS 1 readings and a retained status.

paho keeps every QoS 1 message it was given until the PUBACK and re-sends
it (in order, with DUP) after a reconnect, so within one process each
reading is handed to paho exactly once; after a restart the outbox hands
over whatever was never acknowledged. PUBACKs are passed to the service
through a queue, so only the service thread touches the outbox.
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
STATUS_MID = -1


def reading_topic(device_id: str) -> str:
    return "crev/v1/%s/reading" % device_id


def status_topic(device_id: str) -> str:
    return "crev/v1/%s/status" % device_id


class ReadingPublisher:
    def __init__(self, config: MqttConfig, device_id: str, acks: "queue.Queue[int]") -> None:
        self.config = config
        self.device_id = device_id
        self.acks = acks
        self.connected = threading.Event()
        self.on_state_change: Callable[[bool], None] | None = None
        # mid -> seq (STATUS_MID for status messages). paho calls on_publish
        # while holding its own lock, so ours is never held across a paho
        # call, and a PUBACK may arrive before publish() has recorded its mid.
        self._seq_by_mid: dict[int, int] = {}
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
        self.client = client

    def start(self) -> None:
        # connect_async: an unreachable broker at start-up is an outage like any other.
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def _track(self, mid: int, seq: int) -> None:
        with self._lock:
            if mid in self._acked_early:
                self._acked_early.discard(mid)
                acked = True
            else:
                self._seq_by_mid[mid] = seq
                acked = False
        if acked and seq != STATUS_MID:
            self.acks.put(seq)

    def _publish_status(self, client: mqtt.Client, status: bytes) -> mqtt.MQTTMessageInfo:
        info = client.publish(status_topic(self.device_id), status, qos=1, retain=True)
        self._track(info.mid, STATUS_MID)
        return info

    def stop(self) -> None:
        if self.connected.is_set():
            self._publish_status(self.client, b"offline").wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, seq: int, cose: bytes) -> None:
        info = self.client.publish(reading_topic(self.device_id), cose, qos=1)
        self._track(info.mid, seq)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._publish_status(client, b"online")
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
            seq = self._seq_by_mid.pop(mid, None)
            if seq is None:
                self._acked_early.add(mid)
        if seq is not None and seq != STATUS_MID:
            self.acks.put(seq)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise ConfigError("cannot read the MQTT password file %s: %s" % (path, err.strerror)) from err
