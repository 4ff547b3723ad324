"""The gateway puts the smart meter's latest fixed-time values in key 12 (SPEC §13).

The simulated site serves its PV and grid meters over real Modbus TCP and its
smart meter through an emulated Wi-SUN module on a real pty (crev_sim); the
gateway reads both, and each reading it signs carries the newest 30-minute
EA/EB values as ``[meter_id, t, import_mWh, export_mWh]``."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, wait_for

from crev.keys import SigningKey
from crev.reading import Reading
from crev_gateway import ConfigError
from crev_gateway.config import parse
from crev_gateway.service import Gateway
from crev_sim import config as sim_config
from crev_sim import smartmeter as simsm

RBID = "00112233445566778899AABBCCDDEEFF"
PASSWORD = "0123456789AB"
KEY = SigningKey(bytes(range(32)))


def site(pv_port: int, grid_port: int) -> simsm.SmartMeterSimulation:
    raw = {
        "site": {"seed": 5, "speed": 3600, "tick_s": 60, "start": "2026-06-21T06:00:00+09:00", "pv_peak_w": 6000},
        "meter": [
            {"name": "pv", "profile": "sdm630", "measures": "pv", "register": "export", "port": pv_port},
            {"name": "grid", "profile": "sdm630", "measures": "grid", "port": grid_port},
        ],
        "smartmeter": {
            "port": 0,
            "unit": 0x03,
            "digits": 8,
            "serial": "SM0000000042",
            "skstack": {"model": "bp35c0", "rbid": RBID, "password": PASSWORD},
        },
    }
    return simsm.SmartMeterSimulation(sim_config.parse(raw, Path(".")), simsm.parse(raw, Path(".")))


def gateway_raw(tmp_path: Path, pv_port: int, grid_port: int, smartmeter: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "device": {"id": "dgc-smart-0001", "key": "device.key", "interval_s": 60, "clock": "synchronised"},
        "mqtt": {"url": "mqtt://127.0.0.1:%d" % free_port()},
        "outbox": {"path": "outbox.sqlite"},
        "modbus": {"timeout_s": 0.5, "retries": 1, "backoff_s": 0.05, "pause_s": 0},
        "meter": [
            {
                "name": "pv",
                "profile": "sdm630",
                "url": "tcp://127.0.0.1:%d" % pv_port,
                "role": "generation",
                "source": "solar",
                "counter": "export",
                "max_power_w": 1e8,
            },
            {"name": "grid", "profile": "sdm630", "url": "tcp://127.0.0.1:%d" % grid_port, "role": "grid"},
        ],
    }
    if smartmeter is not None:
        (tmp_path / "broute.pass").write_text(PASSWORD + "\n")
        raw["smartmeter"] = {"meter_id": "SM-0042", "model": "bp35c0", "rbid": RBID, "password_file": "broute.pass"}
        raw["smartmeter"].update(smartmeter)
    return raw


def readings_of(gateway: Gateway) -> list[Reading]:
    return [Reading.from_cose(cose) for _seq, cose in gateway.outbox.pending_after(-1, 100)]


def test_readings_carry_the_latest_fixed_time_values(tmp_path: Path) -> None:
    pv_port, grid_port = free_port(), free_port()
    sim = site(pv_port, grid_port)
    with simsm.in_background(sim):
        raw = gateway_raw(tmp_path, pv_port, grid_port, {"port": sim.pty_path, "refresh_s": 0.3})
        gateway = Gateway(parse(raw, tmp_path / "gw.toml"), KEY)
        source = gateway.smart_meter
        assert source is not None
        source.start()
        try:
            wait_for(lambda: len(source.values) >= 3, 15, "three fixed-time values over the pty")
            marks = sorted(source.values)
            with ThreadPoolExecutor(max_workers=2) as pool:
                # A reading ending just after the second mark: the value at that mark, not a newer one.
                gateway.run_interval(marks[1] + 60, pool)
                # The next one still carries it: the next mark is 30 minutes on.
                gateway.run_interval(marks[1] + 120, pool)
        finally:
            source.stop()
            gateway.outbox.close()
    first, second = readings_of(Gateway(parse(raw, tmp_path / "gw.toml"), KEY))
    scale = sim.model.scale
    imp, exp = sim.model.history[marks[1]]
    assert first.smart_meter == ["SM-0042", marks[1], scale.to_mwh(imp), scale.to_mwh(exp)]
    assert second.smart_meter is not None and second.smart_meter[1] == marks[1]
    assert first.describe()["smart_meter"] == {
        "meter_id": "SM-0042",
        "t": marks[1],
        "import_mwh": scale.to_mwh(imp),
        "export_mwh": scale.to_mwh(exp),
    }
    assert scale.mwh_per_step == 1000 and scale.to_mwh(imp) > 0
    assert source.values_for(marks[0] - 1) is None, "no value from after the reading's end"


def test_a_smart_meter_that_cannot_be_reached_never_holds_a_reading(tmp_path: Path) -> None:
    pv_port, grid_port = free_port(), free_port()
    sim = site(pv_port, grid_port)
    with simsm.in_background(sim):
        raw = gateway_raw(tmp_path, pv_port, grid_port, {"port": str(tmp_path / "no-such-pty")})
        gateway = Gateway(parse(raw, tmp_path / "gw.toml"), KEY)
        assert gateway.smart_meter is not None
        gateway.smart_meter.start()
        try:
            wait_for(lambda: gateway.smart_meter is not None and gateway.smart_meter.failures > 0, 5, "a failure")
            with ThreadPoolExecutor(max_workers=2) as pool:
                gateway.run_interval(1_790_001_060, pool)
            (reading,) = readings_of(gateway)
        finally:
            gateway.smart_meter.stop()
            gateway.outbox.close()
    assert reading.smart_meter is None
    assert 12 not in reading.to_map()


def test_without_a_smart_meter_there_is_no_key_12(tmp_path: Path) -> None:
    config = parse(gateway_raw(tmp_path, free_port(), free_port(), None), tmp_path / "gw.toml")
    assert config.smart_meter is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rbid": "0011"}, "32-character B-route ID"),
        ({"model": "bp35x9"}, "must be one of bp35a1, bp35c0"),
        ({"password_file": "missing.pass"}, "cannot be read"),
        ({"meter_id": ""}, "1 to 64 characters"),
        ({"colour": "blue"}, "is not a setting"),
        ({"port": None}, "port is missing"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    raw = gateway_raw(tmp_path, free_port(), free_port(), {"port": "/dev/ttyUSB0"})
    for key, value in change.items():
        if value is None:
            del raw["smartmeter"][key]
        else:
            raw["smartmeter"][key] = value
    with pytest.raises(ConfigError) as caught:
        parse(raw, tmp_path / "gw.toml")
    assert message in str(caught.value)
    assert "[smartmeter]" in str(caught.value)


def test_a_short_password_is_refused(tmp_path: Path) -> None:
    raw = gateway_raw(tmp_path, free_port(), free_port(), {"port": "/dev/ttyUSB0"})
    (tmp_path / "broute.pass").write_text("short\n")
    with pytest.raises(ConfigError, match="12-character B-route password"):
        parse(raw, tmp_path / "gw.toml")
