"""The dashboard API's response time for the fleet view, at fleet scale.

A store with 10,000 devices and 1,000,000 readings (100 per device in the
time series, and the per-device and per-day summaries that ingest keeps).
The fleet view is requested through the whole stack (FastAPI, token check,
SQLite) in-process; the baseline, in the same run, is the smallest API
request, the quarantine counts, through the same stack.
"""

import random
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from crev_ingest.config import parse
from crev_ingest.dashboard.app import create_app
from crev_ingest.store import Store

TOKEN = "benchmark-token-0123456789"


def populate(path: Path, devices: int, per_device: int, day: str) -> None:
    store = Store(path)
    rng = random.Random(5)
    now = int(time.time())
    with store.transaction():
        for d in range(devices):
            dev = "dgc-bench-%05d" % d
            site = "site-%04d" % (d // 4)
            store.note_reading(dev, site, now - rng.randrange(60, 7200), now * 1000)
            store.note_status(dev, site, rng.choice(["online", "online", "online", "offline"]), now * 1000)
            store.note_daily(dev, day, rng.randrange(0, 10**7), rng.randrange(0, 2 * 10**7), rng.random() * 4000, 0)
            store.db.executemany(
                "INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (dev, seq, now - 60 * (per_device - seq), site, 5000, 1000, 2000, 3000, 4000, 1.2)
                    for seq in range(per_device)
                ],
            )
    store.close()


def timings(client: TestClient, path: str, rounds: int) -> list[float]:
    headers = {"Authorization": "Bearer " + TOKEN}
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get(path, headers=headers)
        out.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit("%s answered %d" % (path, response.status_code))
    return out


def report(devices: int, per_device: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crev-dash-bench-") as tmp:
        directory = Path(tmp)
        config = parse({"storage": {"path": "crev.sqlite"}}, directory / "ingest.toml")
        day = config.local_day(int(time.time()))
        started = time.perf_counter()
        populate(config.storage_path, devices, per_device, day)
        built = time.perf_counter() - started
        client = TestClient(create_app(config, TOKEN))
        timings(client, "/api/v1/fleet", 3)  # warm the page cache
        baseline = timings(client, "/api/v1/quarantine", rounds)
        cases = [
            ("fleet, page 1 by device", "/api/v1/fleet?page_size=50"),
            ("fleet, page 100 by device", "/api/v1/fleet?page=100&page_size=50"),
            ("fleet, by today's self-consumption", "/api/v1/fleet?sort=today_self&order=desc"),
            ("fleet, offline only", "/api/v1/fleet?status=offline"),
            ("fleet, filtered by site", "/api/v1/fleet?q=site-0123"),
            ("one site's 24 h, 30-min slots", "/api/v1/sites/site-0123/series"),
        ]
        site = "site-%04d" % (devices // 8)  # one in the middle of the fleet
        cases = [(label, path.replace("site-0123", site)) for label, path in cases]
        results = [(label, timings(client, path, rounds)) for label, path in cases]

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    base50 = statistics.median(baseline) * 1000
    print(
        "== dashboard API: %d devices, %d readings (store built in %.0f s) ==" % (devices, devices * per_device, built)
    )
    print("%-40s %10s %10s %12s" % ("request", "p50 ms", "p95 ms", "p50 ratio"))
    print("%-40s %10.2f %10.2f %11.1fx" % ("quarantine counts (baseline)", base50, p(baseline, 0.95), 1.0))
    for label, values in results:
        print("%-40s %10.2f %10.2f %11.1fx" % (label, p(values, 0.5), p(values, 0.95), p(values, 0.5) / base50))
