"""MQTT through umqtt.simple: QoS 1, a retained status with a last will, backoff, TLS.

umqtt.simple's ``publish(qos=1)`` returns only when the broker's PUBACK for
that packet has arrived; only then does the outbox forget the reading. Any
socket error drops the connection, and the next attempt waits twice as long
(up to ``max_backoff_ms``).

With ``mqtts://`` the broker's certificate must chain to the CA that
``crev provision`` wrote to the board (the board has no CA store of its own)
and must name the broker's host: ``CERT_REQUIRED`` and ``server_hostname``.
A certificate that fails either check fails the connection like a refused
one, and the reason goes to the log.

Site control (SPEC §12, dgc/control.py) adds a subscription: ``listen``
names the topic (the device's ``cmd``, QoS 1) and a callback, which is set
before every connection (a persistent session may deliver queued commands
right after CONNACK) and subscribed again after it. umqtt.simple calls the
callback from inside any ``publish`` or ``check_msg``, so the callback only
queues the bytes. ``poll`` takes one waiting message per call and keeps the
connection alive with a PINGREQ every half keepalive. A board without
site control never calls either, and its uplink is what it was.
"""

import sys
import time

CA_FILE = "/mqtt_ca.der"


def der_certificates(data: bytes) -> list:
    """Split concatenated DER certificates (each an ASN.1 SEQUENCE) into a list."""
    out = []
    at = 0
    while at < len(data):
        if data[at] != 0x30 or at + 2 > len(data):
            raise ValueError("the CA file is not DER certificates")
        length = data[at + 1]
        header = 2
        if length & 0x80:
            size = length & 0x7F
            if not 1 <= size <= 3 or at + 2 + size > len(data):
                raise ValueError("the CA file is not DER certificates")
            length = int.from_bytes(data[at + 2 : at + 2 + size], "big")
            header += size
        end = at + header + length
        if end > len(data):
            raise ValueError("the CA file ends inside a certificate")
        out.append(data[at:end])
        at = end
    if not out:
        raise ValueError("the CA file holds no certificate")
    return out


class Tls:
    """The ``ssl`` argument of umqtt.simple: an SSLContext that trusts only the provisioned CA.

    Newer umqtt.simple calls ``ssl.wrap_socket(sock, server_hostname=...)``;
    1.3.4 (the one on PyPI, in firmware/lib) imports ``ussl``, which
    MicroPython 1.22 and later no longer have, and calls its
    ``wrap_socket(sock, **ssl_params)``. ``use_for_umqtt`` makes this object
    that ``ussl``, so both end here, with the provisioned host name.
    """

    def __init__(self, ssl_module: object, ca_der: bytes, hostname: str) -> None:
        context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)  # type: ignore[attr-defined]
        context.verify_mode = ssl_module.CERT_REQUIRED  # type: ignore[attr-defined]
        for certificate in der_certificates(ca_der):
            # mbedTLS takes one DER certificate per call and adds it to the trusted ones.
            context.load_verify_locations(cadata=certificate)
        self.context = context
        self.hostname = hostname

    def wrap_socket(self, sock: object, server_hostname: object = None, **_ignored: object) -> object:
        return self.context.wrap_socket(sock, server_hostname=self.hostname)

    def use_for_umqtt(self) -> None:
        sys.modules["ussl"] = self  # type: ignore[assignment]


def client_factory(client_class: object, device: str, mqtt: dict, tls: object = None) -> object:
    """A function that makes a new umqtt.simple client with the provisioned settings."""

    def make() -> object:
        return client_class(  # type: ignore[operator]
            device,
            mqtt["host"],
            mqtt.get("port", 8883 if tls else 1883),
            mqtt.get("username"),
            mqtt.get("password"),
            keepalive=mqtt.get("keepalive", 60),
            ssl=tls,
        )

    return make


def from_config(
    config: dict,
    client_class: object,
    read_file: object,
    ssl_module: object = None,
    clock: object = time,
    log: object = None,
) -> "Uplink":
    """The board's uplink from config.json: plain MQTT, or TLS with the provisioned CA."""
    device = config["device"]["id"]
    mqtt = config["mqtt"]
    tls = None
    if mqtt.get("tls"):
        tls = Tls(ssl_module, read_file(mqtt.get("ca_file", CA_FILE)), mqtt["host"])  # type: ignore[operator]
        tls.use_for_umqtt()
    return Uplink(client_factory(client_class, device, mqtt, tls), device, clock, mqtt.get("keepalive", 60), log=log)


class Uplink:
    def __init__(
        self,
        client_factory: object,
        device: str,
        clock: object = time,
        keepalive_s: int = 60,
        max_backoff_ms: int = 60000,
        log: object = None,
    ) -> None:
        self.factory = client_factory  # umqtt.simple.MQTTClient with our settings bound
        self.device = device
        self.clock = clock
        self.keepalive_s = keepalive_s
        self.max_backoff_ms = max_backoff_ms
        self.log = log  # print on a board; None is silent
        self.last_error = None  # type: str | None
        self.client = None  # type: object
        self.backoff_ms = 1000
        self.next_try = None  # type: int | None
        self.status_topic = "crev/v1/%s/status" % device
        self.reading_topic = "crev/v1/%s/reading" % device
        self.topic = None  # type: str | None  # the one subscription (site control), if any
        self.on_message = None  # type: object
        self.pinged_at = 0

    def listen(self, topic: str, callback: object) -> None:
        """Subscribe to ``topic`` (QoS 1) on this and every later connection; ``callback(topic, msg)``."""
        self.topic = topic
        self.on_message = callback
        if self.client is not None:
            self.drop()  # the next connected() subscribes

    def connected(self) -> bool:
        if self.client is not None:
            return True
        now = self.clock.ticks_ms()  # type: ignore[attr-defined]
        if self.next_try is not None and self.clock.ticks_diff(self.next_try, now) > 0:  # type: ignore[attr-defined]
            return False
        try:
            client = self.factory()  # type: ignore[operator]
            client.set_last_will(self.status_topic, b"offline", retain=True, qos=1)
            if self.on_message is not None:
                client.set_callback(self.on_message)
            client.connect(clean_session=False)
            client.publish(self.status_topic, b"online", retain=True, qos=1)
            if self.topic is not None:
                client.subscribe(self.topic, qos=1)
                self.pinged_at = self.clock.ticks_ms()  # type: ignore[attr-defined]
        except Exception as err:
            self._failed()
            # Once per kind of failure, so a broker that stays away does not flood the console.
            error = " ".join(("%s %s" % (type(err).__name__, err)).split())  # mbedTLS's reasons span lines
            if self.log is not None and error != self.last_error:
                self.log("mqtt: cannot connect: %s" % error)  # type: ignore[operator]
            self.last_error = error
            return False
        if self.log is not None and self.last_error is not None:
            self.log("mqtt: connected")  # type: ignore[operator]
        self.last_error = None
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

    def publish(self, topic: str, payload: bytes) -> bool:
        """One QoS 1 message (an acknowledgement of site control); True once the broker's PUBACK came."""
        if not self.connected():
            return False
        try:
            self.client.publish(topic, payload, qos=1)  # type: ignore[attr-defined]
        except Exception:
            self.drop()
            return False
        return True

    def poll(self) -> None:
        """Take one waiting message (to the ``listen`` callback), and ping at half the keepalive."""
        client = self.client
        if client is None:
            return
        try:
            client.check_msg()  # type: ignore[attr-defined]
            clock = self.clock
            now = clock.ticks_ms()  # type: ignore[attr-defined]
            if clock.ticks_diff(now, self.pinged_at) >= self.keepalive_s * 500:  # type: ignore[attr-defined]
                self.pinged_at = now
                client.ping()  # type: ignore[attr-defined]
        except Exception:
            self.drop()

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
