"""Prometheus metrics and structured (JSON lines) logging for the gateway."""

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.last_good_read = Gauge(
            "crev_gateway_meter_last_good_read_timestamp_seconds",
            "Last plausible read of a meter",
            ["meter"],
            registry=r,
        )
        self.read_errors = Counter(
            "crev_gateway_meter_read_errors_total", "Failed meter reads", ["meter", "reason"], registry=r
        )
        self.readings = Counter("crev_gateway_readings_committed_total", "Readings signed and committed", registry=r)
        self.skipped = Counter(
            "crev_gateway_intervals_without_reading_total", "Intervals with no reading", ["reason"], registry=r
        )
        self.outbox_depth = Gauge(
            "crev_gateway_outbox_depth", "Readings not yet acknowledged by the broker", registry=r
        )
        self.oldest_unacked = Gauge(
            "crev_gateway_outbox_oldest_unacked_age_seconds", "Age of the oldest unacknowledged reading", registry=r
        )
        self.outbox_alarm = Gauge("crev_gateway_outbox_alarm", "1 when the outbox nears its bound", registry=r)
        self.last_puback = Gauge(
            "crev_gateway_last_puback_timestamp_seconds", "Last PUBACK from the broker", registry=r
        )
        self.connected = Gauge("crev_gateway_mqtt_connected", "1 while connected to the broker", registry=r)
        self.orders_signed = Counter(
            "crev_gateway_orders_signed_total", "Controller's sell orders signed and committed (SPEC §9)", registry=r
        )
        self.orders_pending = Gauge(
            "crev_gateway_orders_pending", "Signed orders not yet acknowledged by the broker", registry=r
        )
        self.commands = Counter(
            "crev_gateway_commands_total",
            "Operator commands received (SPEC §12), by outcome: applied or the reason for the refusal",
            ["outcome"],
            registry=r,
        )
        self.output_limit = Gauge(
            "crev_gateway_output_limit_percent",
            "The output limit in force on the inverters: 100 without one, 0 while disconnected",
            registry=r,
        )
        self.acks_pending = Gauge(
            "crev_gateway_acks_pending", "Signed acknowledgements not yet acknowledged by the broker", registry=r
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
