"""Readings signed like a gateway's with a smart meter beside the grid meter (SPEC §13), and ingest's path for them."""

from typing import Any

from ingest_support import NOW, LocalIngest

from crev.keys import SigningKey
from crev.reading import ChainHead
from crev_ingest.integrate import Item, integrate

S0 = (NOW - 4 * 3600) // 1800 * 1800  # the first slot's start, well in the past


def signed_readings(
    key: SigningKey,
    dev: str,
    drift_permille: int,
    minutes: int = 95,
    lag_min: int = 1,
    import_per_min: int = 20_000,
    start: int = S0,
) -> list[bytes]:
    """``dev``'s readings from ``start`` (a 30-minute mark; S0 unless given), one a minute, each carrying
    key 12: the fixed-time values of a smart meter with 1 Wh steps that counts ``drift_permille`` / 1000
    more than the grid meter. Its value at each mark is first carried by the reading that starts
    ``lag_min`` - 1 minutes after the mark (1: the reading that starts at the mark)."""
    head = ChainHead()
    grid_import = grid_export = 0
    sm_exact = [50_000_000 * 1000, 3_000_000 * 1000]  # micro-mWh, so a drift is exact
    marks: dict[int, list[Any]] = {}
    out = []
    for minute in range(1, minutes + 1):
        t1 = start + 60 * minute
        t0 = t1 - 60
        if t0 % 1800 == 0:
            marks[t0] = ["SM-0042", t0, sm_exact[0] // 1_000_000 * 1000, sm_exact[1] // 1_000_000 * 1000]
        available = [t for t in marks if t + 60 * (lag_min - 1) <= t0]
        latest = marks[max(available)] if available else None
        channels = [(0, "PV-1", 1, 30_000 * minute), (1, "G-1", 0, grid_import), (2, "G-1", 0, grid_export)]
        reading = head.next_reading(dev, t1, 1, channels, "crev-test/1", t0=t0, smart_meter=latest)
        cose = reading.sign(key)
        out.append(cose)
        head = head.advance(reading, cose)
        export = 5_000 if minute % 2 else 0
        grid_import += import_per_min
        grid_export += export
        sm_exact[0] += import_per_min * (1000 + drift_permille)
        sm_exact[1] += export * (1000 + drift_permille)
    return out


def feed(ingest: LocalIngest, dev: str, readings: list[bytes], batch: int = 7) -> None:
    """Through ingest's real path: check_message, then integrate (and reconcile) in batches."""
    ingest.ingestor.refresh_keys()
    topic = "crev/v1/%s/reading" % dev
    for at in range(0, len(readings), batch):
        items: list[Item] = [
            (NOW * 1000, topic, raw, ingest.ingestor.check_message(topic, raw)) for raw in readings[at : at + batch]
        ]
        outcomes = integrate(ingest.store, ingest.ledger, ingest.ingestor, items)
        assert all(o.status == "accepted" for o in outcomes), outcomes
