"""The simulated smart meter (crev_sim.smartmeter): real ECHONET Lite over UDP
on loopback, consistency with the grid meter on the same site, and its faults.

The site runs at 3600x: one simulated hour is one wall second, a 30-minute
slot half a second."""

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Service, free_port, wait_for, write_toml

from crev import echonet
from crev import smartmeter as sm
from crev_sim import config as sim_config
from crev_sim import smartmeter as simsm
from crev_sim.config import SimConfigError
from crev_sim.meters import SimMeter
from crev_sim.site import Counters

START = "2026-06-21T06:00:00+09:00"  # morning: the PV exports as well
SPEED = 3600


def site_config(meter: dict[str, Any], speed: float = SPEED) -> dict[str, Any]:
    return {
        "site": {"seed": 5, "speed": speed, "tick_s": 60, "start": START, "pv_peak_w": 6000, "load_avg_w": 900},
        "meter": [{"name": "grid", "profile": "sdm630", "measures": "grid", "port": free_port()}],
        "smartmeter": {"port": 0, **meter},
    }


def simulation(raw: dict[str, Any]) -> simsm.SmartMeterSimulation:
    return simsm.SmartMeterSimulation(sim_config.parse(raw, Path(".")), simsm.parse(raw, Path(".")))


class Client:
    """A HEMS controller on loopback UDP."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.tracker = echonet.Tracker()
        self.pushes: list[echonet.Frame] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> echonet.Frame | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(2048)
        except TimeoutError:
            return None
        return echonet.decode(data)

    def request(self, esv: int, props: list[tuple[int, bytes]], timeout: float = 1.0) -> echonet.Frame | None:
        frame = self.tracker.request(esv, sm.CLASS_EOJ, props, deadline=0)
        self.sock.sendto(frame.encode(), ("127.0.0.1", self.port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            answer = self._receive(left)
            if answer is None:
                break
            if self.tracker.match(answer) is None:
                self.pushes.append(answer)
                continue
            return answer
        self.tracker.expire(1)
        return None

    def get(self, *epcs: int) -> echonet.Frame | None:
        return self.request(echonet.GET, [(epc, b"") for epc in epcs])

    def listen(self, seconds: float) -> list[echonet.Frame]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            frame = self._receive(left)
            if frame is not None:
                self.pushes.append(frame)
        pushes, self.pushes = self.pushes, []
        return pushes


def _slot_t(frame: echonet.Frame) -> int:
    return sm.decode_fixed(frame.edt(sm.EPC_FIXED_NORMAL)).t


def test_get_and_setc_over_udp() -> None:
    sim = simulation(site_config({"serve_coefficient": False, "unit": 0x02, "digits": 7}))
    with simsm.in_background(sim):
        client = Client(sim.udp_port)
        try:
            answer = client.get(sm.EPC_COEFFICIENT, sm.EPC_UNIT, sm.EPC_DIGITS)
            assert answer is not None and answer.esv == echonet.GET_SNA
            assert answer.props == [(0xD3, b""), (0xE1, b"\x02"), (0xD7, b"\x07")]
            scale = sm.scale_from(answer.get(0xD3), answer.edt(0xE1), answer.edt(0xD7))
            assert scale.mwh_per_step == 10_000
            answer = client.get(sm.EPC_FIXED_NORMAL, sm.EPC_FIXED_REVERSE, sm.EPC_CUMULATIVE_NORMAL)
            assert answer is not None and answer.esv == echonet.GET_RES
            fixed = sm.decode_fixed(answer.edt(0xEA))
            assert fixed.t % 1800 == 0 and fixed.t <= sim.sim_time()
            assert sm.decode_cumulative(answer.edt(0xE0)) >= fixed.raw
            # ED selects history 2; a bad ED is refused with SetC_SNA, which echoes it.
            good = sm.encode_history2_time(fixed.t, 3)
            answer = client.request(echonet.SETC, [(sm.EPC_HISTORY2_TIME, good)])
            assert answer is not None and answer.esv == echonet.SET_RES and answer.props == [(0xED, b"")]
            bad = good[:5] + b"\x0f" + good[6:]
            answer = client.request(echonet.SETC, [(sm.EPC_HISTORY2_TIME, bad)])
            assert answer is not None and answer.esv == echonet.SETC_SNA and answer.props == [(0xED, bad)]
            answer = client.get(sm.EPC_HISTORY2)
            assert answer is not None
            points = sm.decode_history2(answer.edt(sm.EPC_HISTORY2))
            assert [p[0] for p in points] == [fixed.t, fixed.t - 1800, fixed.t - 3600]
            assert points[0][1] == fixed.raw
            # A malformed frame gets no answer, as from a real device.
            client.sock.sendto(b"\x10\x81\x00\x01", ("127.0.0.1", sim.udp_port))
            assert all(frame.esv == echonet.INF for frame in client.listen(0.3))
        finally:
            client.close()


def test_slot_deltas_match_the_grid_meter() -> None:
    # 1 Wh steps (unit 0x03): the site's counters are whole Wh, so the smart
    # meter's slot deltas must equal the grid meter's to within one step.
    sim = simulation(site_config({"unit": 0x03, "digits": 8}))
    grid: SimMeter = sim.config.meters[0]
    at_slot: dict[int, dict[str, int]] = {}
    listener = sim.site.listener  # type: ignore[attr-defined]

    def both(end: float, counters: Counters, power: tuple[float, float, float]) -> None:
        listener(end, counters, power)
        if int(end) % 1800 == 0:
            at_slot[int(end)] = grid.image(counters, power, 0.0).certified

    sim.site.listener = both  # type: ignore[attr-defined]
    with simsm.in_background(sim):
        wait_for(lambda: len(at_slot) >= 7, 10, "seven slots")
    scale = sim.model.scale
    slots = sorted(at_slot)
    compared = 0
    for before, after in itertools.pairwise(slots):
        smart_import = scale.delta_mwh(sim.model.history[before][0], sim.model.history[after][0])
        smart_export = scale.delta_mwh(sim.model.history[before][1], sim.model.history[after][1])
        grid_import = at_slot[after]["import"] - at_slot[before]["import"]
        grid_export = at_slot[after]["export"] - at_slot[before]["export"]
        assert abs(smart_import - grid_import) < scale.mwh_per_step, (before, smart_import, grid_import)
        assert abs(smart_export - grid_export) < scale.mwh_per_step, (before, smart_export, grid_export)
        compared += 1
    assert compared >= 6


def test_the_30_minute_push_and_a_missed_one() -> None:
    # from_h 1.2 to 1.7 covers the slot ending at 07:30 (1.5 h after 06:00).
    sim = simulation(site_config({"fault": [{"kind": "missed_push", "from_h": 1.2, "to_h": 1.7}]}))
    with simsm.in_background(sim):
        client = Client(sim.udp_port)
        try:
            assert client.get(sm.EPC_FIXED_NORMAL) is not None  # now the meter knows where to push
            pushes = client.listen(2.6)
        finally:
            client.close()
    times = [_slot_t(p) for p in pushes]
    start = sim.config.sim_start
    assert all(p.esv == echonet.INF and p.epcs() == [0xEA, 0xEB] for p in pushes)
    assert start + 5400 not in times, "the slot in the missed_push window was pushed"
    assert start + 3600 in times and start + 7200 in times
    assert times == sorted(times)
    assert start + 5400 in sim.model.history, "the missed slot is still in the meter's history"


def test_drift_between_the_two_meters() -> None:
    sim = simulation(
        site_config({"unit": 0x03, "digits": 8, "fault": [{"kind": "drift", "pct": 5, "from_h": 0, "to_h": 99}]})
    )
    with simsm.in_background(sim):
        wait_for(lambda: sim.site.counters.import_wh + sim.site.counters.export_wh > 2000, 10, "energy to flow")
    # Stopped: the site and the meter now hold still. The meter counted 5 % more
    # of every tick, exactly, and shows whole 1 Wh steps of it.
    imp, exp = sim.model.raw()
    true = sim.site.counters
    assert true.import_wh > 0 and true.export_wh > 0
    assert imp == true.import_wh * 105 // 100
    assert exp == true.export_wh * 105 // 100


def test_reboot_resets_counters_and_tids_after_an_outage() -> None:
    sim = simulation(site_config({"push": "INFC", "fault": [{"kind": "reboot", "from_h": 1.1, "to_h": 1.6}]}))
    with simsm.in_background(sim):
        client = Client(sim.udp_port)
        try:
            assert client.get(sm.EPC_CUMULATIVE_NORMAL) is not None
            wait_for(lambda: sim.sim_hours() > 1.2, 5, "the reboot")
            assert client.get(sm.EPC_CUMULATIVE_NORMAL) is None, "a rebooting meter answers nothing"
            wait_for(lambda: sim.sim_hours() > 1.65, 5, "the end of the outage")
            after = client.get(sm.EPC_CUMULATIVE_NORMAL, sm.EPC_FIXED_NORMAL)
            assert after is not None
            total = sim.model.scale.raw_from_mwh(sim.site.counters.import_wh * 1000)
            pushes = client.listen(1.2)
            for push in pushes:
                client.sock.sendto(echonet.infc_response(push).encode(), ("127.0.0.1", sim.udp_port))
            time.sleep(0.2)
        finally:
            client.close()
    # The meter counts only what came after the reboot: with what it had counted
    # in the first hour, it stays within the site's total (to a step).
    before_reboot = sim.model.history[int(sim.config.sim_start) + 3600][0]
    assert before_reboot >= 2
    assert sm.decode_cumulative(after.edt(0xE0)) + before_reboot <= total + 1
    assert pushes and all(p.esv == echonet.INFC for p in pushes)
    assert pushes[0].tid == 1, "the TIDs of pushes restart after a reboot"
    assert sim.model.acks[: len(pushes)] == [p.tid for p in pushes], "the INFC_Res reached the meter"


def test_get_sna_for_some_epcs() -> None:
    sim = simulation(site_config({"fault": [{"kind": "sna", "epcs": [0xEB, 0xEC], "from_h": 0, "to_h": 99}]}))
    with simsm.in_background(sim):
        client = Client(sim.udp_port)
        try:
            answer = client.get(sm.EPC_FIXED_NORMAL, sm.EPC_FIXED_REVERSE)
            refused = client.request(echonet.SETC, [(sm.EPC_HISTORY1_DAY, b"\x01")])
        finally:
            client.close()
    assert answer is not None and answer.esv == echonet.GET_SNA
    assert len(answer.edt(0xEA)) == 11 and answer.get(0xEB) == b""
    assert refused is not None and refused.esv == echonet.SET_RES


def test_config_errors_are_one_line() -> None:
    for table, fragment in (
        ({"unit": 5}, "unit"),
        ({"digits": 9}, "digits"),
        ({"push": "sometimes"}, "push"),
        ({"fault": [{"kind": "meteor"}]}, "fault.kind"),
        ({"skstack": {"model": "bp35a1", "output": "binary"}}, "hex only"),
        ({"skstack": {"model": "xbee"}}, "model"),
    ):
        with pytest.raises(SimConfigError) as err:
            simsm.parse({"smartmeter": table}, Path("."))
        assert fragment in str(err.value) and "\n" not in str(err.value)
    raw = site_config({})
    raw["site"]["tick_s"] = 7
    with pytest.raises(SimConfigError, match="30-minute"):
        simulation(raw)


def test_crev_sim_smartmeter_runs_as_a_process(tmp_path: Path) -> None:
    udp = free_port()
    write_toml(
        tmp_path / "sim.toml",
        '[site]\nspeed = 3600\nstart = "%s"\n\n[[meter]]\nname = "grid"\nprofile = "sdm630"\nmeasures = "grid"\n'
        'port = %d\n\n[smartmeter]\nport = %d\n\n[smartmeter.skstack]\nmodel = "bp35a1"\nlink = "sk.pty"\n'
        % (START, free_port(), udp),
    )
    service = Service("smartmeter", ["sim", "smartmeter", "--config", "sim.toml"], tmp_path).start()
    try:
        wait_for(lambda: "BP35A1 on pty" in service.log(), 20, "the simulator to start")
        assert (tmp_path / "sk.pty").is_symlink()
        client = Client(udp)
        try:
            answer = client.get(sm.EPC_UNIT, sm.EPC_DIGITS)
        finally:
            client.close()
        assert answer is not None and answer.props == [(0xE1, b"\x01"), (0xD7, b"\x06")]
        # The installer's pairing check, a process of its own, through the pty.
        env = {**os.environ, "CREV_BROUTE_ID": "0" * 32, "CREV_BROUTE_PASSWORD": "0123456789AB"}
        check = [sys.executable, "-m", "crev_gateway._backends.broute", "--port", str(tmp_path / "sk.pty")]
        done = subprocess.run([*check, "--model", "bp35a1"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "one step is 100000 mWh" in done.stdout and "30-minute values at" in done.stdout
        env["CREV_BROUTE_PASSWORD"] = "WRONGPASSWRD"
        done = subprocess.run([*check, "--model", "bp35a1"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "password" in done.stderr and "Traceback" not in done.stderr
    finally:
        assert service.stop() == 0, service.log()
    bad = write_toml(tmp_path / "bad.toml", '[[meter]]\nprofile = "sdm630"\nport = %d\n' % free_port())
    refused = Service("bad", ["sim", "smartmeter", "--config", str(bad)], tmp_path).start()
    assert refused.process is not None
    assert refused.process.wait(timeout=30) == 2
    assert "[smartmeter]" in refused.log() and "Traceback" not in refused.log()
