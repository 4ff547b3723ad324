"""The firmware's application loop on real MicroPython, against the gateway's decoding.

tests/micropython/app_main.py runs firmware/dgc with a fake UART and a fake
MQTT socket, the only stand-ins (there is no RS-485 hardware or network in
the WebAssembly port). This side computes, with the gateway's own profile
decoding and the core on CPython, the readings the same register values must
give, and compares the published bytes.
"""

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, run_micropython

from crev import dgcc
from crev.keys import SigningKey
from crev.reading import ChainHead, Reading
from crev_gateway.config import BusURL, MeterConfig
from crev_gateway.firmware_config import compact_meter
from crev_gateway.profiles import decode_energy_mwh, load_profile, raw_value

DEV = "dgc-mcu-0042"
SEED = bytes(range(100, 132))
FIRMWARE = "crev-fw/0.1.0"
START = 1_790_000_040  # the first reading ends on a minute boundary
PROFILE = load_profile("sdm630")
METERS = [
    MeterConfig("pv", "sdm630", BusURL("rtu", device="/dev/ttyS1"), 1, "generation", dgcc.SOURCE_SOLAR, "export"),
    MeterConfig("grid", "sdm630", BusURL("rtu", device="/dev/ttyS1"), 2, "grid", dgcc.SOURCE_GRID, "import"),
]
SERIALS = {1: 11112222, 2: 33334444}


def _image(unit: int, imported_kwh: float, exported_kwh: float) -> dict[str, int]:
    """The meter's registers: serial and float32 energy counters, as an SDM630 holds them."""
    image = {"3:%d" % 0xFC00: SERIALS[unit] >> 16, "3:%d" % 0xFC01: SERIALS[unit] & 0xFFFF}
    for name, value in (("import", imported_kwh), ("export", exported_kwh), ("total", imported_kwh + exported_kwh)):
        point = PROFILE.points[name + "_energy"]
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        image["4:%d" % point.address] = high
        image["4:%d" % (point.address + 1)] = low
    return image


def _steps() -> list[dict[str, Any]]:
    steps = []
    pv_export, grid_import, grid_export = 1500.25, 820.5, 310.0
    for i in range(10):
        pv_export += 0.05 + 0.01 * i
        grid_import += 0.02
        grid_export += 0.01 * (i % 3)
        if i == 7:
            grid_import = 3.5  # the grid meter's counter was reset
        step: dict[str, Any] = {
            "t1": START + 60 * (i + 1),
            "images": {"1": _image(1, 0.0, pv_export), "2": _image(2, grid_import, grid_export)},
        }
        if i == 2:
            step["silent"] = [1]  # the PV meter does not answer: no reading this interval
        if i in (4, 5):
            step["broker_down"] = True
        steps.append(step)
    return steps


def _channels(step: dict[str, Any]) -> list[tuple[int, str, int, int]]:
    """What the gateway makes of these registers (its profile code, not the firmware's)."""
    out = []
    for meter in METERS:
        image = step["images"][str(meter.unit)]

        def words(point_name: str, image: dict[str, int] = image) -> list[int]:
            point = PROFILE.points[point_name]
            code = 3 if point.function == "holding" else 4
            return [image["%d:%d" % (code, point.address + k)] for k in range(2)]

        serial = str(raw_value(PROFILE.points["serial"], words("serial")))
        energy = {
            n: decode_energy_mwh(
                PROFILE.points[n + "_energy"], raw_value(PROFILE.points[n + "_energy"], words(n + "_energy"))
            )
            for n in ("import", "export")
        }
        if meter.role == "generation":
            out.append((dgcc.ROLE_GENERATION, serial, meter.source, energy[meter.counter]))
        else:
            out.append((dgcc.ROLE_IMPORT, serial, dgcc.SOURCE_GRID, energy["import"]))
            out.append((dgcc.ROLE_EXPORT, serial, dgcc.SOURCE_GRID, energy["export"]))
    return out


def _expected(steps: list[dict[str, Any]]) -> list[bytes]:
    key = SigningKey(SEED)
    head = ChainHead()
    flags = dgcc.RESTARTED  # the first reading after a boot, as the gateway does
    out = []
    for step in steps:
        if step.get("silent"):
            flags |= dgcc.METER_ERROR
            continue
        reading = head.next_reading(DEV, step["t1"], 1, _channels(step), FIRMWARE, flags, t0=step["t1"] - 60)
        cose = reading.sign(key)
        head = head.advance(reading, cose)
        out.append(cose)
        flags = 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = {
        "device": {"id": DEV, "interval_s": 60},
        "seed": SEED.hex(),
        "meters": [compact_meter(m, PROFILE) for m in METERS],
        "steps": _steps(),
    }
    path: Path = tmp_path_factory.mktemp("fw") / "script.json"
    path.write_text(json.dumps(script))
    fakes = ROOT / "tests" / "micropython" / "fakes.py"
    out = run_micropython(
        ROOT / "tests" / "micropython" / "app_main.py", {"/test/script.json": path, "/test/fakes.py": fakes}
    )
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"key": lines[0], "steps": lines[1:-1], "final": lines[-1], "script": script}


def test_published_readings_are_byte_identical_to_the_cpython_core(run: dict[str, Any]) -> None:
    readings = [bytes.fromhex(p[1]) for p in run["final"]["published"] if p[0] == "crev/v1/%s/reading" % DEV]
    expected = _expected(run["script"]["steps"])
    assert len(expected) == 9
    assert readings == expected
    flags = [Reading.from_cose(c).flags for c in readings]
    assert flags[0] & dgcc.RESTARTED and flags[2] & dgcc.METER_ERROR, "the reading after the silent meter spans it"
    assert any(f & dgcc.COUNTER_RESET for f in flags)
    assert all(p[2] == 1 for p in run["final"]["published"]), "everything is published with QoS 1"


def test_an_outage_holds_readings_on_flash_and_sends_them_in_order(run: dict[str, Any]) -> None:
    by_t1 = {s["t1"]: s for s in run["steps"]}
    steps = run["script"]["steps"]
    assert by_t1[steps[4]["t1"]]["sent"] == 0 and by_t1[steps[5]["t1"]]["pending"] == 2
    assert by_t1[steps[6]["t1"]]["sent"] == 3 and by_t1[steps[6]["t1"]]["pending"] == 0
    seqs = [Reading.from_cose(bytes.fromhex(p[1])).seq for p in run["final"]["published"] if p[0].endswith("/reading")]
    assert seqs == list(range(9))


def test_the_connection_carries_a_retained_last_will_and_announces_online(run: dict[str, Any]) -> None:
    connect = bytes.fromhex(run["final"]["connects"][0])
    flags = connect[connect.index(b"MQTT") + 5]
    assert flags & 0x04 and flags & 0x20 and (flags >> 3) & 3 == 1, "will, will retain, will QoS 1"
    assert not flags & 0x02, "a persistent session"
    assert b"crev/v1/%s/status" % DEV.encode() in connect and b"offline" in connect
    statuses = [p for p in run["final"]["published"] if p[0].endswith("/status")]
    assert statuses and all(p[1] == b"online".hex() and p[3] == 1 for p in statuses)
    assert len(run["final"]["connects"]) == 2, "one reconnect after the outage"


def test_the_device_key_is_made_once_and_only_its_public_key_is_shown(run: dict[str, Any]) -> None:
    key = run["key"]
    assert key["created"] is True and key["kept"] is True
    assert key["announce"] == "crev-device %s pubkey %s" % (DEV, SigningKey(SEED).public_key.hex())
    assert SEED.hex() not in json.dumps(run["final"])
