"""MQTT through umqtt.simple: QoS 1, a retained status with a last will, backoff.

umqtt.simple's ``publish(qos=1)`` returns only when the broker's PUBACK for
that packet has arrived; only then does the outbox forget the reading. Any
socket error drops the connection, and the next attempt waits twice as long
(up to ``max_backoff_ms``).
"""

import time


class Uplink:
    def __init__(
        self,
        client_factory: object,
        device: str,
        clock: object = time,
        keepalive_s: int = 60,
        max_backoff_ms: int = 60000,
    ) -> None:
        self.factory = client_factory  # umqtt.simple.MQTTClient with our settings bound
        self.device = device
        self.clock = clock
        self.keepalive_s = keepalive_s
        self.max_backoff_ms = max_backoff_ms
        self.client = None  # type: object
        self.backoff_ms = 1000
        self.next_try = None  # type: int | None
        self.status_topic = "crev/v1/%s/status" % device
        self.reading_topic = "crev/v1/%s/reading" % device

    def connected(self) -> bool:
        if self.client is not None:
            return True
        now = self.clock.ticks_ms()  # type: ignore[attr-defined]
        if self.next_try is not None and self.clock.ticks_diff(self.next_try, now) > 0:  # type: ignore[attr-defined]
            return False
        try:
            client = self.factory()  # type: ignore[operator]
            client.set_last_will(self.status_topic, b"offline", retain=True, qos=1)
            client.connect(clean_session=False)
            client.publish(self.status_topic, b"online", retain=True, qos=1)
        except Exception:
            self._failed()
            return False
        self.client = client
        self.backoff_ms = 1000
        self.next_try = None
        return True

    def _failed(self) -> None:
        self.client = None
        self.next_try = self.clock.ticks_add(self.clock.ticks_ms(), self.backoff_ms)  # type: ignore[attr-defined]
        self.backoff_ms = min(self.backoff_ms * 2, self.max_backoff_ms)

    def send(self, readings: list, acknowledge: object) -> int:
        """Publish ``[(seq, cose)]`` in order; ``acknowledge(seq)`` after each PUBACK. Returns how many."""
        sent = 0
        for seq, cose in readings:
            if not self.connected():
                break
            try:
                self.client.publish(self.reading_topic, cose, qos=1)  # type: ignore[attr-defined]
            except Exception:
                self.drop()
                break
            acknowledge(seq)  # type: ignore[operator]
            sent += 1
        return sent

    def ping(self) -> None:
        if self.client is not None:
            try:
                self.client.ping()  # type: ignore[attr-defined]
            except Exception:
                self.drop()

    def drop(self) -> None:
        if self.client is not None:
            try:
                self.client.sock.close()  # type: ignore[attr-defined]
            except Exception:
                pass
        self._failed()
