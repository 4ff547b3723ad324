"""SunSpec meters read by the firmware on real MicroPython and by the gateway: the same signed bytes.

Two simulated SunSpec devices (crev_sim: its register images, its pymodbus
SimDevices, its site model) serve one register state to two servers on
loopback: Modbus TCP for the gateway, and Modbus RTU framing over TCP for
the firmware. The RS-485 line is the one stand-in: on the firmware's side a
TCP stream carries exactly the RTU frames a UART would (its CRCs are checked
by pymodbus's RTU framer), because this machine has no serial hardware. The
simulated clock is frozen between the two reads of an interval, so both read
the same registers.

The firmware is what `crev provision` writes for the site (its config.json,
with the SunSpec map compacted from the gateway's profile, and the firmware
compiled to .mpy) on MicroPython's unix port (for sockets; the WebAssembly
port has none). The gateway is its real Gateway.run_interval over Modbus
TCP, signing with the firmware's version string, so the bytes must match.

Both discover each device (the "SunS" marker at 40000 and 50000, the model
chain) and read models 1, 103 and 203. Not compared here: the gateway's
plausibility checks (counter growth, a changed serial confirmed over three
reads), which the firmware does not make for any meter.
"""

import asyncio
import json
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, port_open, wait_for
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from support import ROOT
from test_firmware_tls import UNIX_MICROPYTHON, run_unix_micropython

from crev import dgcc
from crev.keys import SigningKey
from crev.reading import Reading
from crev_cli.provision import compile_modules, device_setup, firmware_files
from crev_gateway import config as gateway_config
from crev_gateway import service
from crev_sim import config as sim_config
from crev_sim.server import Simulation

DEV = "dgc-mcu-sunspec-01"
SEED = bytes(range(40, 72))
FIRMWARE = "crev-fw/0.1.0"
SUNSPEC_MAIN = ROOT / "tests" / "micropython" / "sunspec_main.py"
START = "2026-06-21T07:00:00+09:00"
T1 = 1_790_000_040  # the first reading's end, on a minute boundary

# The board's settings around its meters, the same for both sites below.
SITE_HEADER = """
[device]
id = "%(dev)s"
key = "device.key"
interval_s = 60
clock = "synchronised"

[mqtt]
url = "mqtt://127.0.0.1:1"

[outbox]
path = "gateway-outbox.sqlite"

[modbus]
timeout_s = 1.0
retries = 0
backoff_s = 0.05
pause_s = 0

[uart]
id = 1
tx = 17
rx = 16
baudrate = 9600

"""

SITE = (
    SITE_HEADER
    + """\
[[meter]]
name = "pv"
profile = "sunspec"
url = "%(url)s"
unit = 1
role = "generation"
source = "solar"
counter = "total"

[[meter]]
name = "grid"
profile = "sunspec"
url = "%(url)s"
unit = 1
role = "grid"

[[meter]]
name = "wind"
profile = "sunspec"
url = "%(url)s"
unit = 2
role = "generation"
source = "wind"
counter = "total"
"""
)


class FrozenSimulation(Simulation):
    """The simulator with its clock in the test's hands, so two reads see one state."""

    now = 0.0

    def sim_time(self) -> float:
        return self.now


@contextmanager
def two_servers(devices: Callable[[], list[SimDevice]]) -> Iterator[tuple[int, int]]:
    """The same devices served over Modbus TCP and over Modbus RTU framing on TCP."""
    tcp_port, rtu_port = free_port(), free_port()
    loop = asyncio.new_event_loop()
    servers: list[ModbusTcpServer] = []
    stopped = threading.Event()

    async def serve() -> None:
        for port, framer in ((tcp_port, FramerType.SOCKET), (rtu_port, FramerType.RTU)):
            server = ModbusTcpServer(devices(), address=("127.0.0.1", port), framer=framer)
            await server.serve_forever(background=True)
            servers.append(server)
        while not stopped.is_set():
            await asyncio.sleep(0.02)
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    wait_for(lambda: port_open(tcp_port) and port_open(rtu_port), 10, "the simulator's servers")
    try:
        yield tcp_port, rtu_port
    finally:
        stopped.set()
        thread.join(timeout=10)
        with suppress(Exception):
            loop.close()


SIM = {
    "site": {"seed": 11, "tick_s": 60, "start": START, "pv_peak_w": 5000, "wind_peak_w": 1500, "load_avg_w": 1500},
    "meter": [
        {"name": "a", "profile": "sunspec", "unit": 1, "measures": ["pv", "grid"], "base": 40000, "serial": 424242},
        {"name": "b", "profile": "sunspec", "unit": 2, "measures": ["wind"], "base": 50000, "serial": 535353},
    ],
}


def _board(directory: Path, site_text: str) -> Path:
    """What `crev provision` writes to the board for this site, compiled as it flashes it."""
    site = directory / "site.toml"
    site.write_text(site_text % {"dev": DEV, "url": "rtu:///dev/uart1?baudrate=9600"})
    config, extra = device_setup(tomllib.loads(site.read_text()), site, DEV)
    assert all("sunspec" in meter for meter in config["meters"])
    board = directory / "board"
    for path, data in compile_modules(firmware_files(config, extra)):
        target = board / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (board / "test").mkdir()
    (board / "test" / "seed.hex").write_text(SEED.hex())
    return board


def _both_sign(
    directory: Path,
    site_text: str,
    rtu_port: int,
    tcp_port: int,
    monkeypatch: pytest.MonkeyPatch,
    steps: int,
    before: Callable[[int], None],
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Run ``steps`` intervals on the firmware (RTU) and the gateway (TCP); ``before(i)`` sets the registers."""
    board = _board(directory, site_text)
    config_path = directory / "gateway.toml"
    config_path.write_text(site_text % {"dev": DEV, "url": "tcp://127.0.0.1:%d" % tcp_port})
    # The gateway signs as the firmware would: its version string, and RESTARTED on the first reading.
    monkeypatch.setattr(service, "FIRMWARE", FIRMWARE)
    gateway = service.Gateway(gateway_config.load(config_path), SigningKey(SEED))
    gateway.restarted = True
    if not UNIX_MICROPYTHON.exists():
        run_unix_micropython(SUNSPEC_MAIN, path=[])  # fails, saying what is missing
    firmware = subprocess.Popen(
        [str(UNIX_MICROPYTHON), str(SUNSPEC_MAIN), str(board), str(rtu_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"MICROPYPATH": ":".join([str(board / "lib"), str(ROOT / "tests" / "micropython"), ".frozen"])},
    )
    assert firmware.stdin is not None and firmware.stdout is not None and firmware.stderr is not None
    out = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for i in range(steps):
                before(i)
                t1 = T1 + 60 * i
                gateway.run_interval(t1, pool)
                firmware.stdin.write("%d\n" % t1)
                firmware.stdin.flush()
                line = firmware.stdout.readline()
                assert line, "the firmware stopped: %s" % firmware.stderr.read()
                out.append(json.loads(line))
        gateways = [cose for _seq, cose in gateway.outbox.pending_after(-1, 100)]
    finally:
        firmware.stdin.close()
        firmware.wait(timeout=20)
        gateway.outbox.close()
    assert firmware.returncode == 0, firmware.stderr.read()
    return out, gateways


@pytest.mark.slow
def test_sunspec_readings_are_byte_identical_to_the_gateways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = FrozenSimulation(sim_config.parse(SIM, Path(".")))
    sim.now = sim.config.sim_start

    def at(i: int) -> None:
        sim.now = sim.config.sim_start + 3600 + 60 * i  # an hour of morning, then a minute per interval

    with two_servers(lambda: [sim.device(m) for m in sim.config.meters]) as (tcp_port, rtu_port):
        steps, gateways = _both_sign(tmp_path, SITE, rtu_port, tcp_port, monkeypatch, 6, at)
        image = sim.config.meters[0].image(sim.site.counters, sim.site.power_w, 0)

    assert all(step["logs"] == [] for step in steps), steps
    assert [len(step["readings"]) for step in steps] == [1] * 6, "one reading per interval"
    ours = [bytes.fromhex(cose) for step in steps for _seq, cose in step["readings"]]
    assert len(gateways) == 6
    assert ours == gateways

    readings = [Reading.from_cose(c) for c in ours]
    assert readings[0].flags & dgcc.NO_BASELINE and readings[0].flags & dgcc.RESTARTED
    channels = readings[-1].channels
    assert [(c[0], c[1], c[2]) for c in channels] == [
        (dgcc.ROLE_GENERATION, "424242", dgcc.SOURCE_SOLAR),
        (dgcc.ROLE_IMPORT, "424242", dgcc.SOURCE_GRID),
        (dgcc.ROLE_EXPORT, "424242", dgcc.SOURCE_GRID),
        (dgcc.ROLE_GENERATION, "535353", dgcc.SOURCE_WIND),
    ]
    assert channels[0][3] == image.certified["generation"] > 0
    assert channels[1][3] == image.certified["import"] > 0 and channels[2][3] == image.certified["export"] > 0
    assert all(r.energies is not None for r in readings[1:]) and readings[-1].energies[0] > 0  # type: ignore[index]


# ---------------------------------------------------------------- scale factors, float models, base 0


def _text(value: bytes, registers: int) -> list[int]:
    raw = value.ljust(2 * registers, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * registers, 2)]


def _float_words(value: float) -> list[int]:
    import struct

    return list(struct.unpack(">HH", struct.pack(">f", value)))


def _vendor_image(step: int) -> list[int]:
    """A device at base 0 with models 1, 120 (skipped: no reading uses it), 113 (float) and 201.

    Written from the SunSpec model tables, not from the gateway's profile.
    TotWh_SF is -4, so the energies end in fractions of a mWh that round
    half to even; in step 2 it reads 0x8000 ("not implemented").
    """
    common = [0] * 66
    common[48:64] = _text(b"  SN-77\x1f", 16)  # SN, with CPython's whitespace around it
    nameplate = [0] * 26
    inverter = [0] * 60
    inverter[20:22] = _float_words(812.5)  # W
    inverter[30:32] = _float_words(1234567.875 + 100.25 * step)  # WH
    meter = [0] * 105
    meter[16] = 0xFFF6  # W = -10
    meter[20] = 0xFFFF  # W_SF = -1
    export_wh, import_wh = 987654325 + 10005 * step, 123455 + 2 * step
    meter[36:38] = [export_wh >> 16, export_wh & 0xFFFF]  # TotWhExp
    meter[44:46] = [import_wh >> 16, import_wh & 0xFFFF]  # TotWhImp
    meter[52] = 0x8000 if step == 2 else 0xFFFC  # TotWh_SF = -4
    image = [0x5375, 0x6E53]
    for model_id, body in ((1, common), (120, nameplate), (113, inverter), (201, meter)):
        image += [model_id, len(body), *body]
    return [*image, 0xFFFF, 0]


VENDOR_SITE = (
    SITE_HEADER
    + """\
[[meter]]
name = "pv"
profile = "sunspec"
url = "%(url)s"
unit = 3
role = "generation"
source = "solar"
counter = "total"

[[meter]]
name = "grid"
profile = "sunspec"
url = "%(url)s"
unit = 3
role = "grid"
"""
)


@pytest.mark.slow
def test_scale_factors_float_models_and_refusals_agree_with_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"step": 0}

    async def serve(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        image = _vendor_image(state["step"])
        registers[: len(image)] = image
        return None

    def devices() -> list[SimDevice]:
        size = len(_vendor_image(0))
        bits = [SimData(0, 1, False, DataType.BITS)]
        holding = [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)]
        inputs = [SimData(0, 1, 0, DataType.INVALID)]
        return [SimDevice(id=3, simdata=(bits, bits, holding, inputs), action=serve)]

    def at(i: int) -> None:
        state["step"] = i

    with two_servers(devices) as (tcp_port, rtu_port):
        steps, gateways = _both_sign(tmp_path, VENDOR_SITE, rtu_port, tcp_port, monkeypatch, 4, at)

    assert [len(step["readings"]) for step in steps] == [1, 1, 0, 1], steps
    assert "scale factor TotWh_SF = -32768" in steps[2]["logs"][0]
    ours = [bytes.fromhex(cose) for step in steps for _seq, cose in step["readings"]]
    assert ours == gateways
    readings = [Reading.from_cose(c) for c in ours]
    assert readings[-1].flags & dgcc.METER_ERROR, "the reading after the refused one spans it"
    first = readings[0].channels
    assert first == [
        (dgcc.ROLE_GENERATION, "SN-77", dgcc.SOURCE_SOLAR, 1234567875),
        (dgcc.ROLE_IMPORT, "SN-77", dgcc.SOURCE_GRID, 12346),  # 12.3455 Wh: half to even, up
        (dgcc.ROLE_EXPORT, "SN-77", dgcc.SOURCE_GRID, 98765432),  # 98765.4325 Wh: half to even, down
    ]
