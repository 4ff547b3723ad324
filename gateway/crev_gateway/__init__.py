"""The Raspberry Pi DGC controller: meters in, signed readings out.

Reads certified energy counters over Modbus, applies the DGC-C rules and
signs each reading with the portable core, commits it to a durable outbox
and publishes it over MQTT. Everything protocol-level lives in ``crev``;
this package only does I/O.

Errors::

    GatewayError
     +-- ConfigError   the configuration is wrong: one line, exit 2
     +-- MeterError    a meter misbehaved (code: TIMEOUT, EXCEPTION,
     |                 CONNECTION, IMPLAUSIBLE, DISCOVERY)
     +-- OutboxError   the outbox cannot be used as it is
"""

__version__ = "0.1.0"


class GatewayError(Exception):
    """Base class of the gateway's errors."""


class ConfigError(GatewayError):
    """A configuration mistake; the message says what to fix."""


class MeterError(GatewayError):
    """A meter did not give a usable value; ``code`` says why."""

    def __init__(self, meter: str, code: str, detail: str) -> None:
        super().__init__("meter %r: %s: %s" % (meter, code, detail))
        self.meter = meter
        self.code = code
        self.detail = detail
        self.retryable = code in ("TIMEOUT", "CONNECTION")


class OutboxError(GatewayError):
    """The outbox file cannot be used (wrong device or key, corrupt)."""
