"""Meter reading over real Modbus TCP on loopback: addresses, SunSpec discovery,
word order, and the plausibility checks."""

from pathlib import Path
from typing import Any

import pytest
from harness import free_port
from sim_thread import simulation

from crev_gateway import MeterError
from crev_gateway._backends.modbus import ModbusBus
from crev_gateway.config import MeterConfig, parse
from crev_gateway.meters import SERIAL_CONFIRMATIONS, MeterReader, MeterSample
from crev_gateway.profiles import load_profile


def reader_for(port: int, profile: str, role: str = "generation", **extra: Any) -> MeterReader:
    meter: dict[str, Any] = {"name": "m", "profile": profile, "url": "tcp://127.0.0.1:%d" % port, "role": role}
    if role == "generation":
        meter["source"] = "solar"
    meter.update(extra)
    # A configuration needs a generation meter; a grid meter under test gets a companion.
    companion = {"name": "g", "profile": profile, "url": meter["url"], "role": "generation", "source": "solar"}
    meters = [meter] if role == "generation" else [meter, companion]
    config = parse({"device": {"id": "dgc-meter-test"}, "meter": meters}, Path("/tmp/gw.toml"))
    m = config.meters[0]
    return MeterReader(m, load_profile(profile), ModbusBus(m.url, 0.5, 0, 0, 0))


def site(meters: list[dict[str, Any]]) -> dict[str, Any]:
    # Start at 12:00 simulated, so counters are well above zero.
    return {"site": {"speed": 1, "seed": 3, "start": "2026-06-21T12:00:00+09:00"}, "meter": meters}


def warm(sim: Any, hours: float) -> None:
    sim.wall_start -= hours * 3600 / sim.config.speed
    sim.step()


@pytest.mark.parametrize("base", [0, 40000, 50000])
def test_sunspec_discovery_at_each_base(base: int) -> None:
    port = free_port()
    meters = [
        {"name": "s", "profile": "sunspec", "port": port, "measures": ["pv", "grid"], "base": base, "serial": 777}
    ]
    with simulation(site(meters)) as sim:
        warm(sim, 2)
        pv = reader_for(port, "sunspec")
        layout = pv.discover()
        assert layout.base == base
        assert set(layout.models) == {"common", "inverter", "meter"}
        assert layout.models["inverter"][0] == 103 and layout.models["meter"][0] == 203
        sample = pv.read()
        grid = reader_for(port, "sunspec", role="grid").read()
        image = sim.config.meters[0].image(sim.site.counters, sim.site.power_w, 2)
    assert sample.serial == "777"
    assert sample.energies_mwh["total"] == image.certified["generation"] > 0
    assert grid.energies_mwh == {"import": image.certified["import"], "export": image.certified["export"]}


def test_sdm_addresses_match_the_vendor_map() -> None:
    pv_port, grid_port = free_port(), free_port()
    meters = [
        {"name": "pv", "profile": "sdm630", "port": pv_port, "measures": "pv", "serial": 630099},
        {"name": "grid", "profile": "sdm120", "port": grid_port, "measures": "grid", "serial": 120099},
    ]
    with simulation(site(meters)) as sim:
        warm(sim, 3)
        pv = reader_for(pv_port, "sdm630").read()
        grid = reader_for(grid_port, "sdm120", role="grid").read()
        pv_image = sim.config.meters[0].image(sim.site.counters, sim.site.power_w, 3)
        grid_image = sim.config.meters[1].image(sim.site.counters, sim.site.power_w, 3)
    assert pv.serial == "630099" and grid.serial == "120099"
    assert pv.energies_mwh["export"] == pv_image.certified["generation"] > 0
    assert grid.energies_mwh["import"] == grid_image.certified["import"]
    assert grid.energies_mwh["export"] == grid_image.certified["export"]
    assert pv.power_w is not None and pv.power_w < 0  # generation flows out through the meter


@pytest.mark.parametrize("profile", ["sdm630", "sunspec"])
def test_wrong_word_order_is_refused_not_accepted(profile: str) -> None:
    port = free_port()
    measures = "pv" if profile == "sdm630" else ["pv"]
    with simulation(site([{"name": "m", "profile": profile, "port": port, "measures": measures}])) as sim:
        warm(sim, 3)
        good = reader_for(port, profile)
        good.read()
        swapped = reader_for(port, profile, word_order="little")
        swapped.last_accepted = good.last_accepted  # a gateway already running, then re-configured
        failures = 0
        for _ in range(3):
            try:
                swapped.read()
            except MeterError as err:
                assert err.code == "IMPLAUSIBLE"
                failures += 1
    assert failures == 3


def test_no_answer_and_exception_replies_are_meter_errors() -> None:
    port = free_port()
    meters = [
        {
            "name": "m",
            "profile": "sdm630",
            "port": port,
            "measures": "pv",
            "fault": [{"kind": "exception", "from_h": 0, "to_h": 9}],
        }
    ]
    with simulation(site(meters)):
        with pytest.raises(MeterError) as caught:
            reader_for(port, "sdm630").read()
        assert caught.value.code == "EXCEPTION"
    with pytest.raises(MeterError) as caught:
        reader_for(free_port(), "sdm630").read()  # nothing listens there
    assert caught.value.code == "CONNECTION"


def _sample(serial: str, export: int, at: float) -> MeterSample:
    return MeterSample("m", serial, {"export": export}, None, at)


def test_counter_growing_faster_than_the_rating_is_implausible() -> None:
    reader = reader_for(free_port(), "sdm120")  # 25 kW rating: ~10.4 Wh/s at 1.5x
    reader.last_accepted = _sample("1", 5_000_000, 1000.0)
    reader.check_plausible(_sample("1", 5_000_000 + 600_000, 1060.0))  # 36 kW-s/s: fine over 60 s
    with pytest.raises(MeterError):
        reader.check_plausible(_sample("1", 5_000_000 + 700_000, 1001.0))


def test_a_new_serial_is_confirmed_before_it_is_accepted() -> None:
    reader = reader_for(free_port(), "sdm120")
    reader.last_accepted = _sample("1", 5_000_000, 1000.0)
    for i in range(SERIAL_CONFIRMATIONS - 1):
        with pytest.raises(MeterError, match="serial changed"):
            reader.check_plausible(_sample("2", 7 + i, 1001.0 + i))
    reader.check_plausible(_sample("2", 7 + SERIAL_CONFIRMATIONS, 1001.0 + SERIAL_CONFIRMATIONS))


def test_rtu_urls_are_parsed_and_a_missing_port_is_a_connection_error() -> None:
    # No serial hardware here: this covers everything up to opening the port.
    config = parse(
        {
            "device": {"id": "dgc-rtu-0001"},
            "meter": [
                {
                    "name": "pv",
                    "profile": "sdm120",
                    "url": "rtu:///dev/ttyCREV-NONE?baudrate=19200&parity=E&stopbits=1",
                    "role": "generation",
                    "source": "solar",
                }
            ],
        },
        Path("/tmp/gw.toml"),
    )
    meter: MeterConfig = config.meters[0]
    assert (meter.url.scheme, meter.url.device, meter.url.baudrate, meter.url.parity) == (
        "rtu",
        "/dev/ttyCREV-NONE",
        19200,
        "E",
    )
    with pytest.raises(MeterError) as caught:
        MeterReader(meter, load_profile("sdm120"), ModbusBus(meter.url, 0.2, 0, 0, 0)).read()
    assert caught.value.code == "CONNECTION"


def test_word_and_byte_order_per_point() -> None:
    from crev_gateway.profiles import Point, raw_value

    big = Point("p", "uint32", 0)
    little_words = Point("p", "uint32", 0, word_order="little")
    swapped_bytes = Point("p", "uint32", 0, byte_order="little")
    words = [0x1234, 0x5678]
    assert raw_value(big, words) == 0x12345678
    assert raw_value(little_words, words) == 0x56781234
    assert raw_value(swapped_bytes, words) == 0x34127856
    assert raw_value(big, words, word_order="little") == 0x56781234  # the meter's config overrides
