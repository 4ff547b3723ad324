"""Optional InfluxDB 2 output through ``influxdb-client`` (SPEC §5 time series).

Measurement ``crev_reading``; tags ``dev``, ``site``, ``source``; integer
fields ``gen_mwh``, ``import_mwh``, ``export_mwh``, ``self_mwh``,
``demand_mwh`` and the float ``co2_g``; timestamp t1 in seconds. The client
batches and retries with exponential backoff. SQLite stays the record:
points are written after the commit, and a long InfluxDB outage loses only
this copy, which can be rebuilt from the ``series`` table.
"""

from pathlib import Path

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import WriteOptions

from crev import dgcc
from crev.reading import Reading
from crev_ingest import ConfigError

MEASUREMENT = "crev_reading"


def reading_point(reading: Reading, site: str, g_per_kwh: float) -> Point | None:
    if reading.energies is None:
        return None
    generated, imported, exported, self_mwh, demand = reading.energies
    sources = sorted({dgcc.SOURCE_NAMES[c[2]] for c in reading.channels if c[0] == dgcc.ROLE_GENERATION})
    point: Point = (
        Point(MEASUREMENT)
        .tag("dev", reading.dev)
        .tag("site", site)
        .tag("source", "+".join(sources))
        .field("gen_mwh", generated)
        .field("import_mwh", imported)
        .field("export_mwh", exported)
        .field("self_mwh", self_mwh)
        .field("demand_mwh", demand)
        .field("co2_g", self_mwh * g_per_kwh / 1e6)
        .time(reading.t1, WritePrecision.S)
    )
    return point


class InfluxWriter:
    def __init__(
        self, url: str, token_file: Path, org: str, bucket: str, batch_size: int = 500, flush_ms: int = 1000
    ) -> None:
        try:
            token = token_file.read_text().strip()
        except OSError as err:
            raise ConfigError("cannot read the InfluxDB token file %s: %s" % (token_file, err.strerror)) from err
        self.bucket = bucket
        self.client = InfluxDBClient(url=url, token=token, org=org)
        self.api = self.client.write_api(
            write_options=WriteOptions(
                batch_size=batch_size, flush_interval=flush_ms, retry_interval=1000, max_retries=5
            )
        )

    def write(self, points: list[Point]) -> None:
        if points:
            self.api.write(bucket=self.bucket, record=points)

    def close(self) -> None:
        self.api.close()  # flushes what is batched
        self.client.close()
