"""The gateway's site control (crev_gateway.control) against the simulated inverter over real Modbus TCP.

The simulator runs in a thread of the test process (sim_thread.py), the
control in the test's own thread with a clock the test moves, so each rule
is pinned down in a second or two. test_control_pipeline.py runs the same
code as real processes with a real broker.
"""

import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import free_port, wait_for
from pymodbus.client import ModbusTcpClient
from sim_thread import simulation

from crev import control
from crev.control import Ack, command_map, sign_command
from crev.keys import SigningKey
from crev_gateway import ConfigError
from crev_gateway import config as gateway_config
from crev_gateway._backends.modbus import ModbusBus
from crev_gateway.config import BusURL, MeterConfig
from crev_gateway.control import SiteControl, centi_pct, pct_register
from crev_gateway.meters import MeterReader
from crev_gateway.metrics import GatewayMetrics
from crev_gateway.outbox import Outbox
from crev_gateway.profiles import load_profile
from crev_sim.controls import (
    C_CONN,
    C_CONN_RVRT,
    C_LIMIT,
    C_LIMIT_ENA,
    C_LIMIT_RVRT,
    D_ENA,
    D_ENA_RVRT,
    D_LIMIT,
    D_LIMIT_RVRT,
    D_RVRT_TMS,
)
from crev_sim.server import Simulation

DEV = "dgc-ctl-0001"
OPERATOR = SigningKey(bytes([0x51] * 32))
STRANGER = SigningKey(bytes([0x52] * 32))
DEVICE = SigningKey(bytes([0x53] * 32))
OPERATORS = {"grid-op": OPERATOR.public_key}
T0 = 1_790_000_000


class Rig:
    def __init__(self, sim: Simulation, tmp_path: Path, port: int) -> None:
        self.sim = sim
        self.tmp_path = tmp_path
        self.port = port
        self.clock = [float(T0)]
        self.seq = 0
        self.outbox = Outbox(tmp_path / "outbox.sqlite", DEV, DEVICE.kid)
        self.control = self.new_control()

    def new_control(self) -> SiteControl:
        meter = MeterConfig(
            "pv", "sunspec", BusURL("tcp", "127.0.0.1", self.port), 1, "generation", 1, "total", max_power_w=1e8
        )
        bus = ModbusBus(meter.url, 0.5, 1, 0.05, 0)
        reader = MeterReader(meter, load_profile("sunspec"), bus)
        return SiteControl(DEV, OPERATORS, DEVICE, self.outbox, [reader], GatewayMetrics(), lambda: self.clock[0])

    @property
    def inverter(self) -> Any:
        controls = self.sim.config.meters[0].controls
        assert controls is not None
        return controls

    def command(self, kind: int, key: SigningKey = OPERATOR, expires_in: int = 600, **params: Any) -> bytes:
        self.seq += 1
        now = int(self.clock[0])
        fields = command_map(bytes([self.seq]) * 16, DEV, self.seq, now, now - 5, now + expires_in, kind, **params)
        return sign_command(fields, key)

    def acks(self) -> list[Ack]:
        return [Ack.parse(cose, DEVICE.public_key) for _id, cose in self.outbox.acks_after(0, 1000)]

    def last_ack(self) -> Ack:
        return self.acks()[-1]


@contextmanager
def rig(tmp_path: Path, models: list[int], faults: list[dict[str, Any]] | None = None) -> Iterator[Rig]:
    port = free_port()
    meter: dict[str, Any] = {
        "name": "inv",
        "profile": "sunspec",
        "port": port,
        "measures": ["pv"],
        "controls": models,
        "ramp_pct_per_s": 0,
        "fault": faults or [],
    }
    raw = {"site": {"speed": 60, "start": "2026-06-21T12:00:00+09:00"}, "meter": [meter]}
    with simulation(raw) as sim:
        setup = Rig(sim, tmp_path, port)
        try:
            yield setup
        finally:
            setup.outbox.close()


def hold(action: Callable[[], None], seconds: float) -> None:
    """Call ``action`` often for ``seconds``, as the gateway's loop does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        action()
        time.sleep(0.1)


def test_scaling_never_rounds_a_limit_up() -> None:
    assert pct_register(40, -2) == 4000 and pct_register(40, 0) == 40 and pct_register(45, 1) == 4
    assert centi_pct(400, -1) == 4000 and centi_pct(4000, -2) == 4000 and centi_pct(4, 1) == 4000
    assert centi_pct(2000, -1) == 10000, "a register above 100 % reads back as no limit"


def test_model_123_limit_refresh_and_revert(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        r.control.start()
        r.control.handle(r.command(control.CMD_LIMIT, pct=40, revert_s=2))
        ack = r.last_ack()
        assert (ack.status_name, ack.limit_centi, ack.connected) == ("applied", 4000, True)
        regs = r.inverter.regs[123]
        assert (regs[C_LIMIT], regs[C_LIMIT_RVRT], regs[C_LIMIT_ENA]) == (400, 2, 1)
        assert r.control.curtailed_since(T0 - 1)
        # Written again at half the revert time, the limit outlives its revert time...
        hold(r.control.tick, 3.5)
        assert r.inverter.reverts == 0 and r.inverter.limit_pct() == 40
        # ... and once the controller falls silent, the inverter lifts it by itself.
        wait_for(lambda: r.inverter.limit_pct() == 100, 3, "the inverter's own revert")
        assert r.inverter.reverts == 1


def test_model_704_limit_reverts_to_its_reversion_value(tmp_path: Path) -> None:
    with rig(tmp_path, [704]) as r:
        r.control.start()
        r.control.handle(r.command(control.CMD_LIMIT, pct=35, revert_s=2))
        assert (r.last_ack().status_name, r.last_ack().limit_centi) == ("applied", 3500)
        regs = r.inverter.regs[704]
        assert (regs[D_ENA], regs[D_LIMIT], regs[D_LIMIT_RVRT], regs[D_ENA_RVRT]) == (1, 3500, 10000, 1)
        assert (regs[D_RVRT_TMS] << 16 | regs[D_RVRT_TMS + 1]) == 2
        wait_for(lambda: r.inverter.limit_pct() == 100, 4, "the 704 reversion")
        # A refresh after the reversion notices it and writes the limit again.
        r.control.next_refresh = 0.0
        r.control.tick()
        assert r.inverter.limit_pct() == 35
        # 704 has no Conn: a disconnect is refused, with the reason.
        r.control.handle(r.command(control.CMD_DISCONNECT, revert_s=60))
        ack = r.last_ack()
        assert (ack.status_name, ack.reason) == ("rejected", "NO_CONTROL")
        assert r.inverter.limit_pct() == 35, "the refused command left the limit in force"


def test_an_inverter_that_ignores_writes_is_caught_by_the_read_back(tmp_path: Path) -> None:
    with rig(tmp_path, [123], [{"kind": "ignore_writes", "from_h": 0, "to_h": 1000}]) as r:
        r.control.start()
        raw = r.command(control.CMD_LIMIT, pct=40, revert_s=60)
        r.control.handle(raw)
        ack = r.last_ack()
        assert (ack.status_name, ack.reason) == ("rejected", "NOT_TAKEN")
        assert ack.detail is not None and "did not take the limit" in ack.detail
        assert r.control.controller.active == [] and not r.control.curtailed_since(T0 - 1)
        r.control.handle(raw)
        assert r.last_ack().reason == "REPLAYED", "a command refused at the inverter still spent its seq"


def test_disconnect_then_connect_through_model_123(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        r.control.start()
        r.control.handle(r.command(control.CMD_DISCONNECT, revert_s=30))
        ack = r.last_ack()
        assert (ack.status_name, ack.connected) == ("applied", False)
        regs = r.inverter.regs[123]
        assert (regs[C_CONN], regs[C_CONN_RVRT]) == (0, 30)
        assert r.control.curtailed_since(T0 - 1)
        r.control.handle(r.command(control.CMD_CONNECT))
        assert r.acks()[-2].status_name == "applied" and r.acks()[-2].connected is True
        assert r.acks()[-1].status_name == "reverted", "the disconnect it ended is acknowledged as reverted"
        assert regs[C_CONN] == 1


def test_a_limit_crev_did_not_write_is_never_raised(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        # The utility's output control set 30 % (no revert time) before crev came.
        r.inverter.write(123, C_LIMIT, [300], time.monotonic())
        r.inverter.write(123, C_LIMIT_ENA, [1], time.monotonic())
        r.control.start()
        r.control.handle(r.command(control.CMD_LIMIT, pct=60, revert_s=60))
        assert r.last_ack().limit_centi == 3000, "crev writes at most the limit it found"
        r.control.handle(r.command(control.CMD_CLEAR))
        regs = r.inverter.regs[123]
        assert (regs[C_LIMIT], regs[C_LIMIT_RVRT], regs[C_LIMIT_ENA]) == (300, 0, 1), "the old limit is back"


def test_commands_resume_after_a_restart_unless_they_expired(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        r.control.start()
        r.control.handle(r.command(control.CMD_LIMIT, expires_in=100, pct=50, revert_s=60))
        r.control.handle(r.command(control.CMD_LIMIT, STRANGER, pct=10, revert_s=60))
        assert r.last_ack().reason == "UNKNOWN_OPERATOR"
        before = len(r.acks())
        # A restart within the command's time: it is written again.
        r.inverter.write(123, C_LIMIT_ENA, [0], time.monotonic())
        r.control = r.new_control()
        r.control.start()
        assert r.inverter.limit_pct() == 50
        resumed = r.acks()[before:]
        assert [(a.status_name, a.detail) for a in resumed] == [("applied", "resumed after a restart")]
        # A restart after it expired: lifted, and acknowledged as expired.
        r.clock[0] += 100
        r.control = r.new_control()
        r.control.start()
        assert r.inverter.limit_pct() == 100
        assert r.last_ack().status_name == "expired"
        assert r.control.controller.active == [] and r.outbox.control_active() == []
        assert r.control.controller.last_seq == {"grid-op": 1}, "the last seq survived both restarts"


def test_a_command_expires_while_the_gateway_runs(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        r.control.start()
        r.control.handle(r.command(control.CMD_LIMIT, expires_in=30, pct=45, revert_s=600))
        r.control.tick()
        assert r.inverter.limit_pct() == 45
        r.clock[0] += 30
        r.control.tick()
        assert r.inverter.limit_pct() == 100
        ack = r.last_ack()
        assert (ack.status_name, ack.limit_centi) == ("expired", 10000)
        assert r.control.curtailed_since(T0 + 29) and not r.control.curtailed_since(T0 + 31)


def test_malformed_commands_are_only_logged(tmp_path: Path) -> None:
    with rig(tmp_path, [123]) as r:
        r.control.start()
        for raw in (b"", b"\xff" * 40, b"\xd2\x84\x40\xa0\x40\x40"):
            r.control.handle(raw)
        assert r.acks() == []


def test_no_inverter_to_command(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite", DEV, DEVICE.kid)
    site = SiteControl(DEV, OPERATORS, DEVICE, outbox, [], GatewayMetrics(), lambda: float(T0))
    fields = command_map(bytes(16), DEV, 1, T0, T0, T0 + 60, control.CMD_LIMIT, 40, 60)
    site.handle(sign_command(fields, OPERATOR))
    ack = Ack.parse(outbox.acks_after(0, 10)[-1][1], DEVICE.public_key)
    assert (ack.status_name, ack.reason) == ("rejected", "NO_CONTROL")
    outbox.close()


BASE = """
[device]
id = "dgc-ctl-0001"
[[meter]]
name = "pv"
profile = "sunspec"
url = "tcp://127.0.0.1:5020"
role = "generation"
source = "solar"
"""


@pytest.mark.parametrize(
    ("operators", "message"),
    [
        ('[[operator]]\nid = "grid-op"\n', "pubkey is missing"),
        ('[[operator]]\nid = "Grid Op"\npubkey = "%s"\n' % ("00" * 32), "not an operator id"),
        ('[[operator]]\nid = "grid-op"\npubkey = "abcd"\n', "64 hex digits"),
        ('[[operator]]\nid = "grid-op"\npubkey = "%s"\nrole = "x"\n' % ("00" * 32), "role is not a setting"),
        (('[[operator]]\nid = "grid-op"\npubkey = "%s"\n' % ("00" * 32)) * 2, "listed twice"),
        ('operator = "grid-op"\n', "[[operator]] tables"),
    ],
)
def test_operator_configuration_mistakes(operators: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        gateway_config.parse(tomllib.loads(operators + BASE), Path("gw.toml"))
    assert message in str(caught.value)


def test_operators_in_the_configuration() -> None:
    text = '[[operator]]\nid = "grid-op"\npubkey = "%s"\n' % OPERATOR.public_key.hex()
    parsed = gateway_config.parse(tomllib.loads(text + BASE), Path("gw.toml"))
    assert parsed.operators == {"grid-op": OPERATOR.public_key}
    assert gateway_config.parse(tomllib.loads(BASE), Path("gw.toml")).operators == {}


def test_the_simulator_takes_writes_only_on_control_registers(tmp_path: Path) -> None:
    with rig(tmp_path, [123, 704]) as r:
        client = ModbusTcpClient("127.0.0.1", port=r.port)
        assert client.connect()  # type: ignore[no-untyped-call]
        try:
            assert client.write_registers(40002, [1], device_id=1).isError(), "the common model is read-only"
            start = r.sim.config.meters[0].control_addresses[123]
            assert client.write_registers(start + 21, [0], device_id=1).isError(), "scale factors are read-only"
            assert not client.write_registers(start + C_LIMIT, [500], device_id=1).isError()
            assert r.inverter.regs[123][C_LIMIT] == 500
        finally:
            client.close()  # type: ignore[no-untyped-call]
