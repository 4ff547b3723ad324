"""A populated ledger and its dashboard app, for the API and browser tests."""

from pathlib import Path

from fastapi import FastAPI
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

from crev.keys import SigningKey
from crev_ingest.config import parse
from crev_ingest.dashboard.app import create_app

TOKEN = "test-operator-token-0123456789"
AUTH = {"Authorization": "Bearer " + TOKEN}
SITES = {"dgc-dash-0001": "tokyo", "dgc-dash-0002": "tokyo", "dgc-dash-0003": "osaka"}


def ingest_toml(directory: Path, location: str | None = None) -> str:
    storage = 'url = "%s"' % location if location else 'path = "crev.sqlite"'
    return (
        "[storage]\n" + storage + '\n[ledger]\nkey = "ledger.key"\norigin = "crev.test/ledger"\n'
        'block_max_leaves = 8\n[dashboard]\nlisten = "127.0.0.1:18080"\ntoken_file = "dashboard.token"\n'
        "[emission]\ndefault_g_per_kwh = 423\n[emission.sites]\nosaka = 450\n"
        '[sites]\n"dgc-dash-0001" = "tokyo"\n"dgc-dash-0002" = "tokyo"\n"dgc-dash-0003" = "osaka"\n'
    )


def build(
    directory: Path, readings: int = 12, location: str | None = None, now: int | None = None
) -> tuple[LocalIngest, FastAPI]:
    """Three devices on two sites, readings over the last hours, two quarantined messages.

    On ``directory``/crev.sqlite, or on the PostgreSQL database ``location``; ``now``: the minute they end at.
    """
    (directory / "ingest.toml").write_text(ingest_toml(directory, location))
    (directory / "dashboard.token").write_text(TOKEN + "\n")
    key = directory / "ledger.key"
    key.write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    key.chmod(0o600)
    ingest = LocalIngest(directory, location)
    import tomllib

    ingest.config = parse(tomllib.loads(ingest_toml(directory, location)), directory / "ingest.toml")
    ingest.ingestor.config = ingest.config
    # LocalIngest stamps what it receives with NOW, taken when the test session started: readings made
    # against the wall clock would run ahead of it (FUTURE_TIMESTAMP) once the session is long enough.
    now = now or NOW
    devices = [
        Device(dev, SigningKey(bytes([60 + i]) * 32), t1=now - 60 * (readings + 2)) for i, dev in enumerate(SITES)
    ]
    for device in devices:
        ingest.enroll(device)
    for _ in range(readings):
        for device in devices:
            assert ingest.send(device.next()).status == "accepted"
    ingest.send(b"\x00not cose", topic="crev/v1/dgc-dash-0003/reading")
    ingest.send(b"\xa0", topic="crev/v1/dgc-dash-0003/reading")
    with ingest.store.transaction():
        ingest.store.note_status("dgc-dash-0001", "tokyo", "online", now * 1000)
        ingest.store.note_status("dgc-dash-0003", "osaka", "offline", now * 1000)
        if ingest.ledger.size > ingest.ledger.sealed_size:
            ingest.ledger.seal(now * 1000)
    return ingest, create_app(ingest.config, TOKEN)
