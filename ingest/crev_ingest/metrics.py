"""Prometheus metrics for ingest, served on ``[metrics] listen``."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("crev_ingest_readings_accepted_total", "Readings verified and stored", registry=r)
        self.duplicates = Counter("crev_ingest_readings_duplicate_total", "Replayed readings, counted once", registry=r)
        self.quarantined = Counter(
            "crev_ingest_readings_quarantined_total", "Messages kept in quarantine", ["reason"], registry=r
        )
        self.lag = Histogram(
            "crev_ingest_lag_seconds",
            "From a reading's t1 to its commit in the ledger",
            buckets=(1, 5, 15, 60, 300, 900, 3600, 21600, 86400),
            registry=r,
        )
        self.commit = Histogram(
            "crev_ingest_batch_commit_seconds",
            "Time to store and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.orders = Counter(
            "crev_ingest_orders_total",
            "Controllers' sell orders received: accepted, duplicate or quarantined",
            ["outcome"],
            registry=r,
        )
        self.floods = Counter(
            "crev_ingest_flood_alarms_total",
            "Devices alarmed for sending far more than a controller should",
            registry=r,
        )
        self.broker_connected = Gauge("crev_ingest_broker_connected", "1 while connected to the broker", registry=r)
        self.store_ok = Gauge(
            "crev_ingest_store_ok", "0 while the store refuses writes (locked, full, failing)", registry=r
        )
        self.witness_size = Gauge(
            "crev_ingest_witness_cosigned_size", "The tree size each witness last cosigned", ["witness"], registry=r
        )
        self.witness_up = Gauge(
            "crev_ingest_witness_up", "1 while the witness answers and cosigns, 0 while it is retried", ["witness"],
            registry=r,
        )  # fmt: skip
        self.height = Gauge("crev_ingest_block_height", "Height of the last sealed block", registry=r)
        self.open_gaps = Gauge("crev_ingest_open_gaps", "Seq ranges still missing, over all devices", registry=r)
        self.integrating = Gauge(
            "crev_ingest_integrating", "1 while this worker is the integrator (PostgreSQL)", registry=r
        )
        self.pending = Gauge(
            "crev_ingest_pending", "Readings acknowledged and waiting for the integrator (PostgreSQL)", registry=r
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
