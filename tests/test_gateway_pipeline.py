"""Gateway + simulators + a real mosquitto: a simulated day, an outage, crashes.

Every test here runs real processes: `crev sim meters` serving Modbus TCP on
loopback, `crev gateway run`, and mosquitto started by the fixture.
"""

import random
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from harness import (
    Mosquitto,
    ReadingCollector,
    Service,
    check_chain,
    free_port,
    gateway_config,
    init_gateway,
    load_truth,
    port_open,
    sim_config,
    wait_for,
)

from crev import dgcc
from crev.reading import Reading, verify_reading

DEVICE = "dgc-test-0001"
DAY_SPEED = 2880  # a simulated day in 30 s
# The clock runs up to 2880 times faster, so a 5 kW site looks like 14 MW: the
# meters' rating for the plausibility check is scaled to match: max_power_w = 1e8.


def sunspec_site(port: int) -> tuple[str, str]:
    sim = (
        '[[meter]]\nname = "site"\nprofile = "sunspec"\nport = %d\nmeasures = ["pv", "grid"]\nserial = 203001\n' % port
    )
    gateway = (
        '[[meter]]\nname = "pv"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "solar"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\nmax_power_w = 1e8\n'
        % (port, port)
    )
    return sim, gateway


def sdm_site(pv_port: int, grid_port: int, faults: str = "") -> tuple[str, str]:
    sim = (
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\nregister = "export"\n'
        "serial = 630001\n%s\n"
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\nserial = 630002\n'
        % (pv_port, faults, grid_port)
    )
    gateway = (
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "solar"\ncounter = "export"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\nmax_power_w = 1e8\n'
        % (pv_port, grid_port)
    )
    return sim, gateway


def start_sim(tmp_path: Path, meters: str, ports: list[int], speed: float) -> Service:
    sim = Service("sim", ["sim", "meters", "--config", str(sim_config(tmp_path, meters, speed))], tmp_path).start()
    wait_for(lambda: all(port_open(p) for p in ports), 20, "the simulator ports")
    return sim


def sunspec_site_with_gateway(
    tmp_path: Path, broker: Mosquitto, speed: float, extra: str = "", outbox: str = ""
) -> tuple[Service, Path]:
    """A running SunSpec site simulator, and an initialised gateway configuration for it."""
    port = free_port()
    sim_meters, gw_meters = sunspec_site(port)
    sim = start_sim(tmp_path, sim_meters, [port], speed)
    config = gateway_config(tmp_path, DEVICE, broker.url, gw_meters, extra=extra, outbox=outbox)
    init_gateway(tmp_path, config)
    return sim, config


def counters_of(reading: Reading) -> tuple[int, ...]:
    return tuple(c[3] for c in reading.channels)


def truth_index(truth: list[dict[str, object]], meters: list[tuple[str, str]]) -> dict[tuple[int, ...], int]:
    """Map the counters a reading would carry to the tick that served them."""
    index = {}
    for position, record in enumerate(truth):
        certified = record["meters"]
        assert isinstance(certified, dict)
        index[tuple(certified[m]["certified"][k] for m, k in meters)] = position
    return index


@pytest.mark.slow
def test_simulated_day_is_exact_to_the_mwh(tmp_path: Path, broker: Mosquitto, collector: ReadingCollector) -> None:
    port = free_port()
    sim_meters, gw_meters = sunspec_site(port)
    sim = start_sim(tmp_path, sim_meters, [port], DAY_SPEED)
    config = gateway_config(tmp_path, DEVICE, broker.url, gw_meters)
    public_key = init_gateway(tmp_path, config)
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    time.sleep(31)  # a whole simulated day
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    wait_for(lambda: len(collector.payloads(DEVICE)) >= 29, 10, "the last readings")

    payloads = collector.payloads(DEVICE)
    for raw in payloads:
        verify_reading(raw, public_key)
    readings = check_chain(payloads)
    assert len(readings) >= 29
    assert readings[0].flags == dgcc.NO_BASELINE
    assert all(r.flags == 0 for r in readings[1:]), [dgcc.flag_names(r.flags) for r in readings]

    truth = load_truth(tmp_path / "truth.jsonl")
    index = truth_index(truth, [("site", "generation"), ("site", "import"), ("site", "export")])
    positions = [index[counters_of(r)] for r in readings]  # KeyError = a value the meter never served
    total_self = sum(r.energies[3] for r in readings[1:] if r.energies)
    true_self = sum(int(rec["self_wh"]) * 1000 for rec in truth[positions[0] + 1 : positions[-1] + 1])
    assert total_self == true_self
    assert total_self > 0
    for before, reading, after in zip(positions, readings[1:], positions[1:], strict=False):
        assert reading.energies is not None
        assert reading.energies[3] == sum(int(rec["self_wh"]) * 1000 for rec in truth[before + 1 : after + 1])


@pytest.mark.slow
def test_sdm630_float_registers_match_what_the_meters_certify(
    tmp_path: Path, broker: Mosquitto, collector: ReadingCollector
) -> None:
    pv_port, grid_port = free_port(), free_port()
    sim_meters, gw_meters = sdm_site(pv_port, grid_port)
    sim = start_sim(tmp_path, sim_meters, [pv_port, grid_port], DAY_SPEED)
    config = gateway_config(tmp_path, DEVICE, broker.url, gw_meters)
    init_gateway(tmp_path, config)
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    time.sleep(8)
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    wait_for(lambda: len(collector.payloads(DEVICE)) >= 6, 10, "readings")
    readings = check_chain(collector.payloads(DEVICE))
    truth = load_truth(tmp_path / "truth.jsonl")
    index = truth_index(truth, [("pv", "generation"), ("grid", "import"), ("grid", "export")])
    for reading in readings:
        assert counters_of(reading) in index, "seq %d carries counters no meter served" % reading.seq
        assert reading.channels[0][1] == "630001" and reading.channels[1][1] == "630002"


@pytest.mark.slow
def test_broker_outage_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, broker: Mosquitto, collector: ReadingCollector
) -> None:
    sim, config = sunspec_site_with_gateway(tmp_path, broker, speed=600)
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    wait_for(lambda: len(collector.payloads(DEVICE)) >= 3, 20, "readings before the outage")
    broker.stop()
    time.sleep(6)  # about six readings are made while the broker is down
    broker.start()
    wait_for(lambda: collector.client.is_connected(), 20, "the collector to reconnect")
    time.sleep(4)
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    wait_for(lambda: _outbox_depth(tmp_path) == 0, 20, "the outbox to drain")
    time.sleep(1)

    payloads = collector.payloads(DEVICE)
    readings = check_chain(payloads)
    assert len(readings) >= 12
    seqs = [Reading.from_cose(p).seq for p in payloads]
    duplicates = {s: n for s, n in Counter(seqs).items() if n > 1}
    assert not duplicates, "delivered more than once: %s" % duplicates
    assert seqs == sorted(seqs), "readings arrived out of seq order"
    assert "disconnected from the broker" in gateway.log()


def _outbox_depth(workdir: Path) -> int:
    with sqlite3.connect(workdir / ("%s-outbox.sqlite" % DEVICE)) as db:
        return int(db.execute("SELECT count(*) FROM pending").fetchone()[0])


@pytest.mark.slow
def test_sigkill_20_times_never_reuses_a_seq_or_loses_a_reading(
    tmp_path: Path, broker: Mosquitto, collector: ReadingCollector
) -> None:
    sim, config = sunspec_site_with_gateway(tmp_path, broker, speed=600)
    rng = random.Random(20)
    args = ["gateway", "run", "--config", str(config)]
    for _ in range(20):
        gateway = Service("gateway", args, tmp_path).start()
        time.sleep(rng.uniform(0.8, 3.0))
        gateway.kill()  # SIGKILL: no clean-up of any kind
    final = Service("gateway", args, tmp_path).start()
    time.sleep(3)
    assert final.stop() == 0, final.log()
    sim.stop()
    wait_for(lambda: _outbox_depth(tmp_path) == 0, 20, "every committed reading to be acknowledged")

    with sqlite3.connect(tmp_path / ("%s-outbox.sqlite" % DEVICE)) as db:
        last_committed = Reading.from_cose(bytes(db.execute("SELECT last_cose FROM chain").fetchone()[0])).seq
    wait_for(
        lambda: len({Reading.from_cose(p).seq for p in collector.payloads(DEVICE)}) > last_committed, 10, "delivery"
    )
    readings = check_chain(collector.payloads(DEVICE))
    assert readings[-1].seq == last_committed
    restarts = [r for r in readings if r.flags & dgcc.RESTARTED]
    assert len(restarts) >= 10, "most runs should have committed at least one reading"
    for reading in restarts:
        assert reading.energies is not None, "a restart keeps the baseline: energies span the downtime"


def broker_port_started(broker: Mosquitto) -> int:
    broker.start()
    return broker.port


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("metric %s not exported" % name)


@pytest.mark.slow
def test_full_outbox_pauses_readings_raises_the_alarm_and_drops_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    # Register the collector's persistent session first, so that the broker
    # queues for it whatever the gateway sends the moment the broker is back
    # (before the collector itself has reconnected). Then the broker is down.
    early = ReadingCollector(broker_port_started(broker), "crev-test-late-collector")
    early.client.publish("crev/v1/dgc-probe-0001/reading", b"probe", qos=1).wait_for_publish(5)
    wait_for(lambda: bool(early.payloads("dgc-probe-0001")), 10, "the collector's subscription")
    early.close()
    broker.stop()
    metrics_port = free_port()
    sim, config = sunspec_site_with_gateway(
        tmp_path,
        broker,
        speed=600,
        extra='[metrics]\nlisten = "127.0.0.1:%d"\n' % metrics_port,
        outbox="max_readings = 4\nalarm_fraction = 0.5\n",
    )
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    try:
        wait_for(lambda: '"event": "outbox_full"' in gateway.log(), 30, "the outbox to fill")
        time.sleep(2)
        assert _outbox_depth(tmp_path) == 4, "the bound holds: no more, and nothing dropped"
        assert _metric(metrics_port, "crev_gateway_outbox_depth") == 4
        assert _metric(metrics_port, "crev_gateway_outbox_alarm") == 1
        assert _metric(metrics_port, "crev_gateway_mqtt_connected") == 0
        assert _metric(metrics_port, "crev_gateway_outbox_oldest_unacked_age_seconds") > 1
        assert '"event": "outbox_alarm"' in gateway.log()

        broker.start()
        collector = ReadingCollector(broker.port, "crev-test-late-collector")
        try:
            wait_for(lambda: len(collector.payloads(DEVICE)) >= 8, 60, "the outbox to drain and readings to resume")
            assert collector.status.get(DEVICE) == b"online"
            assert _metric(metrics_port, "crev_gateway_mqtt_connected") == 1
            assert gateway.stop() == 0, gateway.log()
            wait_for(lambda: collector.status.get(DEVICE) == b"offline", 10, "the retained offline status")
            readings = check_chain(collector.payloads(DEVICE))
        finally:
            collector.close()
    finally:
        gateway.stop()
        sim.stop()
        broker.stop()
    paused = [r for r in readings if r.t1 - r.t0 > 3]
    assert paused, "the first reading after the pause spans it"
    assert paused[0].energies is not None
