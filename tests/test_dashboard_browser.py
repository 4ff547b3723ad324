"""The dashboard in headless Chromium, against a live ingest receiving readings.

Real mosquitto, a real `crev ingest run` with its dashboard, two publishing
"gateways" (processes with a retained status and a last will, like the
gateway), and Debian's Chromium driven by playwright-core
(tests/browser/dashboard_check.mjs). The screenshots are kept in
test-artifacts/dashboard-site.png and dashboard-site-one-slot.png (a site
whose only device has energy in a single 30-minute slot).
"""

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from browser_support import ARTIFACTS, browser_check, require_chromium
from harness import Mosquitto, Service, free_port, port_open, run_crev, wait_for, write_toml
from paho.mqtt.enums import CallbackAPIVersion
from support import ROOT

from crev.keys import SigningKey

TOKEN = "browser-test-token-0123456789"
CHECK = ROOT / "tests" / "browser" / "dashboard_check.mjs"
DEVICES = {"dgc-web-0001": ("tokyo", 91), "dgc-web-0002": ("osaka", 92), "dgc-web-0003": ("nagoya", 93)}
# Sends two readings and then stays online, silent: the registers' first
# reading is only a baseline, so its site has energy for one slot alone.
ONE_SLOT = {"dgc-web-0003"}

# A stand-in gateway: online (retained), a last will of offline, a signed
# reading every second whose interval ends 10 minutes after the last one
# (or only as many readings as its optional fourth argument says).
PUBLISHER = r"""
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from crev.keys import SigningKey
from crev.reading import ChainHead
port, dev, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
count = int(sys.argv[4]) if len(sys.argv) > 4 else None
key = SigningKey(bytes([seed]) * 32)
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev)
client.will_set("crev/v1/%s/status" % dev, b"offline", qos=1, retain=True)
client.connect("127.0.0.1", port, keepalive=3)
client.loop_start()
client.publish("crev/v1/%s/status" % dev, b"online", qos=1, retain=True).wait_for_publish(5)
head = ChainHead()
t1 = (int(time.time()) - 20 * 3600) // 600 * 600
g, i, e = 1000000, 500000, 200000
while True:
    if count is not None and count <= 0:
        time.sleep(1)
        continue
    count = None if count is None else count - 1
    g, i, e = g + 400000, i + 50000, e + 150000
    channels = [(0, "PV-" + dev, 1, g), (1, "G-" + dev, 0, i), (2, "G-" + dev, 0, e)]
    reading = head.next_reading(dev, t1, 1, channels, "stand-in/1", t0=t1 - 600)
    cose = reading.sign(key)
    client.publish("crev/v1/%s/reading" % dev, cose, qos=1).wait_for_publish(5)
    head = head.advance(reading, cose)
    t1 += 600
    time.sleep(1)
"""


@pytest.fixture
def live(tmp_path: Path) -> Iterator[dict[str, object]]:
    require_chromium()
    broker = Mosquitto(tmp_path)
    broker.start()
    dashboard_port = free_port()
    metrics_port = free_port()
    write_toml(
        tmp_path / "ingest.toml",
        '[mqtt]\nurl = "%s"\n[storage]\npath = "crev.sqlite"\n[ledger]\nkey = "ledger.key"\n'
        'origin = "crev.test/ledger"\nblock_interval_s = 1\n[dashboard]\nlisten = "127.0.0.1:%d"\n'
        'token_file = "dashboard.token"\n[metrics]\nlisten = "127.0.0.1:%d"\n'
        '[sites]\n"dgc-web-0001" = "tokyo"\n"dgc-web-0002" = "osaka"\n"dgc-web-0003" = "nagoya"\n'
        % (broker.url, dashboard_port, metrics_port),
    )
    (tmp_path / "dashboard.token").write_text(TOKEN)
    assert run_crev(tmp_path, "ingest", "init", "--config", "ingest.toml").returncode == 0
    for dev, (_site, seed) in DEVICES.items():
        pubkey = SigningKey(bytes([seed]) * 32).public_key.hex()
        enrol = run_crev(tmp_path, "ingest", "enroll", "--config", "ingest.toml", "--device", dev, "--pubkey", pubkey)
        assert enrol.returncode == 0, enrol.stderr
    ingest = Service("ingest", ["ingest", "run", "--config", "ingest.toml"], tmp_path).start()
    wait_for(lambda: "subscribed" in ingest.log(), 20, "ingest to subscribe")
    wait_for(lambda: port_open(dashboard_port), 20, "the dashboard to listen")
    publishers = {
        dev: subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(broker.port), dev, str(seed), *(["2"] if dev in ONE_SLOT else [])]
        )
        for dev, (_site, seed) in DEVICES.items()
    }
    # Two forged messages, for the quarantine counts.
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
    intruder.connect("127.0.0.1", broker.port)
    intruder.loop_start()
    for payload in (b"\x00forged", b"\xa0"):
        intruder.publish("crev/v1/dgc-web-0001/reading", payload, qos=1).wait_for_publish(5)
    intruder.loop_stop()
    intruder.disconnect()
    time.sleep(4)  # a few readings in, and a sealed block
    yield {
        "url": "http://127.0.0.1:%d" % dashboard_port,
        "metrics": "http://127.0.0.1:%d/metrics" % metrics_port,
        "publishers": publishers,
        "ingest": ingest,
    }
    for process in publishers.values():
        process.kill()
        process.wait()
    ingest.stop()
    broker.stop()


@pytest.mark.slow
def test_the_dashboard_lists_sites_updates_live_and_shows_a_gateway_going_offline(live: dict[str, object]) -> None:
    url = str(live["url"])
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard-site.png"
    one_slot = ARTIFACTS / "dashboard-site-one-slot.png"
    seen = browser_check(CHECK, url, TOKEN, "live", str(screenshot), "nagoya", str(one_slot))
    assert seen["redirected_to_login"] is True
    assert sorted(seen["sites"]) == ["nagoya", "osaka", "tokyo"]
    assert sorted(seen["devices"]) == sorted(DEVICES)
    assert seen["slots_after"] > seen["slots_before"], "the site's chart grew without a reload"
    assert "再生可能エネルギー" in str(seen["consumer_ja"])
    assert seen["quarantine"] == {"MALFORMED": 2}
    assert screenshot.stat().st_size > 10_000
    assert not [w for w in seen["warnings"] if "uPlot" in w], seen["warnings"]

    # The charts are uPlot's: a drawn canvas, a time axis, units, a legend.
    power, energy = seen["power"], seen["energy"]
    for chart, unit in ((power, "kW"), (energy, "kWh"), (seen["power_ja"], "kW")):
        assert chart["renderer"] == "uplot", chart
        width, height = chart["canvas"]
        assert width > 300 and height > 200, chart
        assert chart["drawn_pixels"] > 5000, chart
        assert chart["y_label"] == unit
        assert chart["data_length"] == chart["slots"] >= 2
        assert ":" in chart["x_ticks"], "local clock times on the time axis: %r" % chart["x_ticks"]
        assert 86400 <= chart["x_span_s"] < 86400 + 3600, "the last 24 hours: %r" % chart
    assert power["legend"] == ["Time", "Generation", "Self-consumption", "Demand"]
    assert energy["legend"] == ["Time", "Generation", "Self-consumption", "Import", "Export", "Demand"]

    # One slot of data: no line can be drawn, but each series' point is.
    for chart in (seen["one_slot_power"], seen["one_slot_energy"]):
        assert chart["renderer"] == "uplot" and chart["slots"] == chart["data_length"] == 1, chart
        assert all(p["points_shown"] for p in chart["points"]), chart
        assert 86400 <= chart["x_span_s"] < 86400 + 3600, "one point still sits on a 24-hour axis: %r" % chart
        visible = [p["label"] for p in chart["points"] if p["hits"] >= 3]
        assert visible, "no series' point is visible for the single slot: %r" % chart["points"]
    assert one_slot.stat().st_size > 10_000

    # Freeze one "gateway" (SIGSTOP: its socket stays open and silent, as when
    # a site loses power or its line). The broker waits 1.5 keepalives (4.5 s)
    # before it publishes the last will. A killed process would not show
    # this: the kernel closes its socket and the will goes out at once.
    assert seen["statuses"]["dgc-web-0002"] == "online"
    publishers = live["publishers"]
    assert isinstance(publishers, dict)
    publishers["dgc-web-0002"].send_signal(signal.SIGSTOP)
    killed_at = time.time()
    gone = browser_check(CHECK, url, TOKEN, "offline", "dgc-web-0002", "20")
    assert gone["status_after"] == "offline", gone
    elapsed = gone["seen_at_ms"] / 1000 - killed_at
    print("offline on the page %.1f s after the gateway fell silent" % elapsed)
    # 4.5 s for the will (mosquitto checks keepalives about once a second), then ingest and the page.
    assert 4 <= elapsed < 15


@pytest.mark.slow
def test_ingest_exports_prometheus_metrics(live: dict[str, object]) -> None:
    with urllib.request.urlopen(str(live["metrics"]), timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["crev_ingest_readings_accepted_total"] >= 4
    assert values['crev_ingest_readings_quarantined_total{reason="MALFORMED"}'] == 2
    assert values["crev_ingest_block_height"] >= 2, "enrolments and at least one block of readings"
    assert values["crev_ingest_batch_commit_seconds_count"] >= 1
    # The stand-ins backdate their readings by many hours: the lag shows it.
    assert values['crev_ingest_lag_seconds_bucket{le="3600.0"}'] < values["crev_ingest_lag_seconds_count"]
    assert "crev_ingest_open_gaps" in values
