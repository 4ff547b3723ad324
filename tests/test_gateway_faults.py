"""Every simulator fault gives the flags and gaps of SPEC §2, never a substitute.

One simulated day (30 s) over real Modbus TCP and a real mosquitto, with
these faults (simulated hours):
  pv    timeout        04:00-06:00   no reading; the next spans the gap (METER_ERROR)
  grid  exception      07:00-09:00   same
  pv    freeze         10:30-13:30   the counter stands still: G = 0 while export goes on
  pv    swap_words     15:00-16:30   implausible values are refused like failed reads
  grid  counter reset  18:00         COUNTER_RESET, energies absent
  pv    replaced       20:00         new serial number: COUNTER_RESET
"""

import time
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
)
from test_gateway_pipeline import DAY_SPEED, DEVICE, counters_of, sdm_site, start_sim, truth_index

from crev import dgcc

PV_FAULTS = """
[[meter.fault]]
kind = "timeout"
from_h = 4
to_h = 6

[[meter.fault]]
kind = "freeze"
from_h = 10.5
to_h = 13.5

[[meter.fault]]
kind = "swap_words"
from_h = 15
to_h = 16.5

[[meter.fault]]
kind = "replace"
from_h = 20
"""

GRID_FAULTS = """
[[meter.fault]]
kind = "exception"
from_h = 7
to_h = 9

[[meter.fault]]
kind = "reset"
from_h = 18
"""


@pytest.mark.slow
def test_faults_are_flagged_never_substituted(tmp_path: Path, broker: Mosquitto, collector: ReadingCollector) -> None:
    pv_port, grid_port = free_port(), free_port()
    sim_meters, gw_meters = sdm_site(pv_port, grid_port, PV_FAULTS)
    sim_meters += GRID_FAULTS
    sim = start_sim(tmp_path, sim_meters, [pv_port, grid_port], DAY_SPEED)
    config = gateway_config(tmp_path, DEVICE, broker.url, gw_meters)
    init_gateway(tmp_path, config)
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    time.sleep(30)
    assert gateway.stop() == 0, gateway.log()
    sim.stop()
    time.sleep(1)

    readings = check_chain(collector.payloads(DEVICE))
    truth = load_truth(tmp_path / "truth.jsonl")
    # Meters are read one after another, so each meter is checked on its own.
    served_pv = {rec["meters"]["pv"]["certified"]["generation"] for rec in truth}
    served_grid = truth_index(truth, [("grid", "import"), ("grid", "export")])
    start = truth[0]["sim_end"]  # tick 0: the simulation start

    def hour(reading_index: int) -> float:
        position = served_grid[counters_of(readings[reading_index])[1:]]
        return float(truth[position]["sim_end"] - start) / 3600

    for reading in readings:
        # Never a substitute: every counter in every reading is one the meters served.
        assert reading.channels[0][3] in served_pv, "seq %d: a PV counter the meter never served" % reading.seq
        assert counters_of(reading)[1:] in served_grid, "seq %d: grid counters the meter never served" % reading.seq
        if reading.flags & (dgcc.COUNTER_RESET | dgcc.NO_BASELINE):
            assert reading.energies is None
        else:
            assert reading.energies is not None

    log = gateway.log()
    for reason in ("TIMEOUT", "EXCEPTION", "IMPLAUSIBLE"):
        assert '"reason": "%s"' % reason in log, "no %s read failure was logged" % reason

    spanning = [i for i, r in enumerate(readings) if r.flags & dgcc.METER_ERROR]
    assert spanning, "failed reads must mark the next reading METER_ERROR"
    for i in spanning:
        assert readings[i].t1 - readings[i].t0 >= 2, "a METER_ERROR reading spans the missed interval"
    hours = [hour(i) for i in spanning]
    for low, high, what in ((4, 7, "timeout"), (7, 10, "exception"), (15, 17.5, "swap_words")):
        assert any(low <= h <= high for h in hours), "no gap-spanning reading after the %s fault: %s" % (what, hours)

    resets = [r for r in readings if r.flags & dgcc.COUNTER_RESET]
    assert len(resets) == 2, [dgcc.flag_names(r.flags) for r in resets]
    grid_reset, pv_replaced = resets
    assert grid_reset.channels[1][3] < 10**9, "the grid counter restarted near zero"
    assert pv_replaced.channels[0][1] == "631001", "the replacement meter's serial is reported"
    assert all(r.channels[0][1] == "631001" for r in readings if r.seq > pv_replaced.seq)

    frozen = [
        r
        for i, r in enumerate(readings)
        if 11 <= hour(i) <= 13.5 and r.energies is not None and r.energies[0] == 0 and r.energies[2] > 0
    ]
    assert frozen, "a frozen PV counter shows no generation while export continues"
    assert all(r.flags & dgcc.EXPORT_EXCEEDS_GEN for r in frozen)
