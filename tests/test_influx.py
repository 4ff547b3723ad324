"""InfluxDB output: the real influxdb-client writes to a local HTTP endpoint.

No InfluxDB 2 server can run here, so a small HTTP server records what the
client sends and the test checks the exact line protocol. With
CREV_INFLUXDB_URL (and CREV_INFLUXDB_TOKEN, _ORG, _BUCKET) set, the last test
writes to that real server and reads the point back.
"""

import gzip
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from ingest_support import Device

from crev.keys import SigningKey
from crev.reading import Reading
from crev_ingest.influx import InfluxWriter, reading_point


class Recorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        Recorder.bodies.append((self.path, body.decode()))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    Recorder.bodies = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()


def two_readings() -> list[Reading]:
    device = Device("dgc-influx-0001", SigningKey(bytes([7]) * 32), t1=1_790_000_000)
    device.next()
    return [Reading.from_cose(device.next(gen=500_000, imp=0, exp=200_000)), Reading.from_cose(device.next())]


def test_points_reach_the_write_api_as_exact_line_protocol(endpoint: str, tmp_path: Path) -> None:
    token = tmp_path / "influx.token"
    token.write_text("test-token\n")
    writer = InfluxWriter(endpoint, token, "crev", "readings", batch_size=10, flush_ms=100)
    first, second = two_readings()
    points = [reading_point(r, "tokyo-1", 423) for r in (first, second)]
    writer.write([p for p in points if p is not None])
    writer.close()
    deadline = time.monotonic() + 10
    while not Recorder.bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    path, body = Recorder.bodies[0]
    assert (
        path.startswith("/api/v2/write?") and "bucket=readings" in path and "org=crev" in path and "precision=s" in path
    )
    assert body.splitlines() == [
        "crev_reading,dev=dgc-influx-0001,site=tokyo-1,source=solar "
        "co2_g=126.9,demand_mwh=300000i,export_mwh=200000i,gen_mwh=500000i,import_mwh=0i,self_mwh=300000i 1790000120",
        "crev_reading,dev=dgc-influx-0001,site=tokyo-1,source=solar "
        "co2_g=12.69,demand_mwh=40000i,export_mwh=20000i,gen_mwh=50000i,import_mwh=10000i,self_mwh=30000i 1790000180",
    ]


def test_a_reading_without_energies_gives_no_point() -> None:
    device = Device("dgc-influx-0001", SigningKey(bytes([7]) * 32), t1=1_790_000_000)
    assert reading_point(Reading.from_cose(device.next()), "s", 423) is None


@pytest.mark.skipif(not os.environ.get("CREV_INFLUXDB_URL"), reason="needs a real InfluxDB 2: set CREV_INFLUXDB_URL")
def test_against_a_real_influxdb(tmp_path: Path) -> None:
    from influxdb_client import InfluxDBClient

    url, org, bucket = (
        os.environ["CREV_INFLUXDB_URL"],
        os.environ.get("CREV_INFLUXDB_ORG", "crev"),
        os.environ.get("CREV_INFLUXDB_BUCKET", "readings"),
    )
    token = tmp_path / "token"
    token.write_text(os.environ["CREV_INFLUXDB_TOKEN"])
    writer = InfluxWriter(url, token, org, bucket)
    first, _ = two_readings()
    point = reading_point(first, "it-test", 423)
    assert point is not None
    writer.write([point])
    writer.close()
    with InfluxDBClient(url=url, token=token.read_text(), org=org) as client:
        tables = client.query_api().query(
            'from(bucket: "%s") |> range(start: 0) '
            '|> filter(fn: (r) => r._measurement == "crev_reading" and r.site == "it-test")' % bucket
        )
    assert any(
        record.get_field() == "self_mwh" and record.get_value() == 300000 for t in tables for record in t.records
    )
