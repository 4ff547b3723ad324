"""The B-route driver: the sans-I/O SKSTACK state machine (crev.skstack) against
scripted module output, then the gateway's BRouteMeter over a real pty
against the module emulation (crev_sim.skstack) of both the BP35A1 and the
BP35C0, and momonga, an independent driver, as the oracle on the same
emulation."""

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
from harness import free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from crev import echonet, skstack
from crev import smartmeter as sm
from crev.errors import MisuseError
from crev.skstack import Driver
from crev_gateway import MeterError
from crev_gateway._backends.broute import BRouteMeter
from crev_sim import config as sim_config
from crev_sim import smartmeter as simsm

RBID = "00112233445566778899AABBCCDDEEFF"
PASSWORD = "0123456789AB"
METER_IP = "FE80:0000:0000:0000:021D:1290:1234:5678"
OWN_IP = "FE80:0000:0000:0000:021D:1290:8765:4321"
MAC = "001D129012345678"


# --- the state machine, against scripted output ------------------------------


class Script:
    """Drives a Driver by hand: what it wrote, and the module's answers."""

    def __init__(self, model: str, **options: Any) -> None:
        self.driver = Driver(model, RBID, PASSWORD, **options)
        self.now = 0
        self.model = model
        self.driver.start(self.now)

    def written(self) -> list[str]:
        out = self.driver.output()
        return [line for line in out.decode("latin-1").split("\r\n") if line]

    def say(self, *lines: str, raw: bytes = b"") -> None:
        data = "".join(line + "\r\n" for line in lines).encode() + raw
        self.driver.feed(data, self.now)

    def advance(self, ms: int) -> None:
        self.now += ms
        self.driver.tick(self.now)

    def event(self, num: int, addr: str = METER_IP, param: int | None = None) -> str:
        parts = ["EVENT", "%02X" % num, addr]
        if self.model == skstack.BP35C0:
            parts.append("0")
        if param is not None:
            parts.append("%02X" % param)
        return " ".join(parts)

    def join(self, ropt: str = "OK 01") -> None:
        d = self.driver
        assert self.written() == ["SKRESET"]
        self.say("SKRESET", "OK")  # echoed: the module echoes until SFE 0
        assert self.written() == ["SKSREG SFE 0"]
        self.say("SKSREG SFE 0", "OK")
        assert self.written() == ["ROPT"]
        if self.model == skstack.BP35C0:
            self.driver.feed(ropt.encode() + b"\r", self.now)
            assert self.written() == ["SKSREG SA2 1"]
            self.say("OK")
        else:
            self.say("FAIL ER04")
        assert self.written() == ["SKSETRBID " + RBID]
        self.say("OK")
        assert self.written() == ["SKSETPWD C " + PASSWORD]
        self.say("OK")
        scan = self.written()
        assert scan == (["SKSCAN 2 FFFFFFFF 4"] if self.model == skstack.BP35A1 else ["SKSCAN 2 FFFFFFFF 4 0"])
        self.say("OK", self.event(0x22, OWN_IP))  # nothing found with duration 4
        assert self.written()[0].startswith("SKSCAN 2 FFFFFFFF 5")
        side = ["  Side:0"] if self.model == skstack.BP35C0 else []
        self.say(
            "OK",
            self.event(0x20, METER_IP),
            "EPANDESC",
            "  Channel:21",
            "  Channel Page:09",
            "  Pan ID:8888",
            "  Addr:" + MAC,
            "  LQI:E1",
            *side,
            "  PairID:00112233",
            self.event(0x22, OWN_IP),
        )
        assert self.written() == ["SKLL64 " + MAC]
        self.say(METER_IP)
        assert self.written() == ["SKSREG S2 21"]
        self.say("OK")
        assert self.written() == ["SKSREG S3 8888"]
        self.say("OK")
        assert self.written() == ["SKJOIN " + METER_IP]
        self.say("OK", self.event(0x21, METER_IP, 0), self.event(0x25))
        assert d.state == skstack.READY and d.ready()
        assert d.events() == [(skstack.JOINED, METER_IP)]

    def send(self, payload: bytes = b"\x10\x81\x00\x01") -> bytes:
        self.driver.send(payload, self.now)
        return self.driver.output()

    def confirm(self, result: int = 0) -> None:
        self.say(self.event(0x21, METER_IP, result), "OK")


@pytest.mark.parametrize("model", skstack.MODELS)
def test_scan_and_join(model: str) -> None:
    Script(model).join()


def test_bp35c0_in_binary_mode_reads_binary_erxudp() -> None:
    script = Script(skstack.BP35C0)
    script.join(ropt="OK 00")
    assert script.driver.reader.binary
    payload = bytes.fromhex("1081000102880105FF017201E704") + b"\r\n\r\n"
    head = "ERXUDP %s %s 0E1A 0E1A %s C8 1 0 %04X " % (METER_IP, OWN_IP, MAC, len(payload))
    script.driver.feed(head.encode() + payload + b"\r\n", script.now)
    events = script.driver.events()
    assert [kind for kind, _ in events] == [skstack.RX]
    assert events[0][1].data == payload and events[0][1].rssi == -56


@pytest.mark.parametrize("model", skstack.MODELS)
def test_sendto_in_each_dialect(model: str) -> None:
    script = Script(model)
    script.join()
    out = script.send(b"\x10\x81\x00\x07")
    head = "SKSENDTO 1 %s 0E1A 1 " % METER_IP + ("" if model == skstack.BP35A1 else "0 ") + "0004 "
    assert out == head.encode() + b"\x10\x81\x00\x07"
    script.driver.send(b"\x10\x81\x00\x08", script.now)
    assert script.driver.output() == b"", "one SKSENDTO at a time"
    script.confirm()
    assert script.driver.output().endswith(b"\x10\x81\x00\x08")


def test_unsolicited_datagrams_only_from_the_meter() -> None:
    script = Script(skstack.BP35A1)
    script.join()
    data = "1081000102880105FF017201E70400000270"
    script.say("ERXUDP %s %s 0E1A 0E1A %s 1 0012 %s" % (METER_IP, OWN_IP, MAC, data))
    script.say("ERXUDP FE80:0000:0000:0000:021D:1290:0000:0001 %s 0E1A 0E1A %s 1 0012 %s" % (OWN_IP, MAC, data))
    script.say("ERXUDP %s %s 02CC 02CC %s 1 0002 0001" % (METER_IP, OWN_IP, MAC))
    events = script.driver.events()
    assert len(events) == 1 and events[0][0] == skstack.RX and events[0][1].data == bytes.fromhex(data)


def test_event_29_holds_sends_until_reauthenticated() -> None:
    script = Script(skstack.BP35C0)
    script.join()
    script.say(script.event(0x29))
    assert script.driver.events() == [(skstack.BLOCKED, "reauth")]
    assert not script.driver.ready()
    assert script.send() == b"", "no send while the module re-authenticates"
    script.say(script.event(0x25))
    assert script.driver.events() == [(skstack.RESUMED, "")]
    assert script.driver.output().startswith(b"SKSENDTO"), "the held payload goes out"


def test_failed_reauthentication_joins_again() -> None:
    script = Script(skstack.BP35C0)
    script.join()
    script.say(script.event(0x29), script.event(0x24))
    assert script.driver.events() == [(skstack.BLOCKED, "reauth"), (skstack.LOST, "re-authentication failed")]
    assert script.written() == ["SKJOIN " + METER_IP]
    script.say("OK", script.event(0x25))
    assert script.driver.events() == [(skstack.JOINED, METER_IP)]


def test_reauthentication_that_never_ends_joins_again() -> None:
    script = Script(skstack.BP35A1, reauth_timeout_ms=30000)
    script.join()
    script.say(script.event(0x29))
    script.advance(29999)
    assert script.written() == []
    script.advance(1)
    assert script.written() == ["SKJOIN " + METER_IP]


def test_transmit_time_limit_backs_off() -> None:
    script = Script(skstack.BP35A1, backoff_ms=1000, max_backoff_ms=8000)
    script.join()
    script.say(script.event(0x32, OWN_IP))
    assert script.driver.events() == [(skstack.BLOCKED, "rate_limit")]
    assert script.send() == b""
    script.advance(60000)
    assert script.driver.output() == b"", "nothing goes out before EVENT 33"
    script.say(script.event(0x33, OWN_IP))
    script.advance(999)
    assert script.driver.output() == b"", "nor during the backoff after it"
    script.advance(1)
    assert script.driver.output().startswith(b"SKSENDTO")
    assert (skstack.RESUMED, "") in script.driver.events()
    script.confirm()
    # The limit comes back within the hour: the backoff doubles, up to its cap.
    waits = []
    for _ in range(4):
        script.say(script.event(0x32, OWN_IP))
        script.driver.send(b"\x10\x81\x00\x02", script.now)
        script.say(script.event(0x33, OWN_IP))
        start = script.now
        while not script.driver.output():
            script.advance(100)
        waits.append(script.now - start)
        script.confirm()
    assert waits == [2000, 4000, 8000, 8000]


def test_a_failed_send_is_retried_then_given_up() -> None:
    script = Script(skstack.BP35C0, send_attempts=3, backoff_ms=500)
    script.join()
    first = script.send(b"\x10\x81\x00\x09")
    script.confirm(result=1)
    assert script.driver.output() == b""
    script.advance(500)
    assert script.driver.output() == first
    script.say("FAIL ER10")
    script.advance(1000)
    assert script.driver.output() == first
    script.say("OK", script.event(0x21, METER_IP, 1))  # this module reports after its OK
    assert script.driver.events() == [(skstack.SEND_FAILED, b"\x10\x81\x00\x09")]
    assert script.send(b"\x10\x81\x00\x0a").endswith(b"\x10\x81\x00\x0a")


def test_no_pan_and_bad_password_fail_with_a_reason() -> None:
    script = Script(skstack.BP35A1, scan_durations=(4, 5))
    for line in ("OK", "OK", "FAIL ER04", "OK", "OK"):
        script.driver.output()
        script.say(line)
    for _ in range(2):
        script.say("OK", script.event(0x22, OWN_IP))
    assert script.driver.state == skstack.FAILED_STATE
    kind, detail = script.driver.events()[-1]
    assert kind == skstack.FAILED and str(detail).startswith("SCAN")
    script = Script(skstack.BP35A1, join_attempts=2, backoff_ms=100)
    script.join()
    script.say(script.event(0x26))  # the meter ends the session
    assert script.driver.events() == [(skstack.LOST, "the meter ended the PANA session")]
    assert script.written() == ["SKJOIN " + METER_IP]
    script.say("OK", script.event(0x24))
    script.advance(100)
    assert script.written() == ["SKJOIN " + METER_IP]
    script.say("OK", script.event(0x24))
    kind, detail = script.driver.events()[-1]
    assert kind == skstack.FAILED and str(detail).startswith("JOIN")


def test_scan_failure_event() -> None:
    script = Script(skstack.BP35C0, scan_durations=(4,))
    script.driver.output()
    for line in ("OK", "OK"):
        script.say(line)
    script.driver.feed(b"OK 01\r", 0)
    for _ in range(3):
        script.say("OK")
    script.say("OK", script.event(0x22, OWN_IP))
    assert script.driver.events() == [
        (skstack.FAILED, "SCAN: no smart meter answered the scan (check the Route-B ID and the distance)")
    ]


def test_a_silent_module_is_reset_then_given_up() -> None:
    script = Script(skstack.BP35A1, command_timeout_ms=1000, max_restarts=2)
    assert script.written() == ["SKRESET"]
    for _ in range(2):
        script.advance(1000)
        assert script.written() == ["SKRESET"]
    script.advance(1000)
    kind, detail = script.driver.events()[-1]
    assert kind == skstack.FAILED and str(detail).startswith("MODULE")


def test_misuse_is_refused() -> None:
    with pytest.raises(MisuseError):
        Driver("bp35x9", RBID, PASSWORD)
    with pytest.raises(MisuseError):
        Driver(skstack.BP35A1, "short", PASSWORD)
    with pytest.raises(MisuseError):
        Driver(skstack.BP35A1, RBID, "pass word")
    with pytest.raises(MisuseError):
        Script(skstack.BP35A1).driver.send(b"", 0)
    assert skstack.redact("SKSETPWD C " + PASSWORD) == "SKSETPWD ****"
    assert skstack.redact("SKSETRBID " + RBID) == "SKSETRBID ****"


@settings(max_examples=300)
@given(st.sampled_from(skstack.MODELS), st.booleans(), st.lists(st.binary(max_size=80), max_size=8))
def test_random_module_output_never_raises(model: str, ready: bool, chunks: list[bytes]) -> None:
    script = Script(model)
    if ready:
        script.join()
    script.driver.reader.binary = model == skstack.BP35C0 and ready
    for chunk in chunks:
        script.driver.feed(b"ERXUDP " + chunk if chunk[:1] == b"E" else chunk, script.now)
        script.advance(10)
    script.driver.events()


# --- over a real pty, against the module emulation ---------------------------


def meter_site(skstack_table: dict[str, Any], meter: dict[str, Any] | None = None) -> simsm.SmartMeterSimulation:
    raw = {
        "site": {"seed": 5, "speed": 3600, "tick_s": 60, "start": "2026-06-21T06:00:00+09:00", "pv_peak_w": 6000},
        "meter": [{"name": "grid", "profile": "sdm630", "measures": "grid", "port": free_port()}],
        "smartmeter": {"port": 0, **(meter or {}), "skstack": {"rbid": RBID, "password": PASSWORD, **skstack_table}},
    }
    return simsm.SmartMeterSimulation(sim_config.parse(raw, Path(".")), simsm.parse(raw, Path(".")))


def open_meter(sim: simsm.SmartMeterSimulation, model: str, **options: Any) -> BRouteMeter:
    driver = Driver(model, RBID, PASSWORD, **options) if options else None
    meter = BRouteMeter("smart", sim.pty_path, model, RBID, PASSWORD, request_timeout_s=3, driver=driver)
    meter.open(timeout_s=10)
    return meter


def expected(sim: simsm.SmartMeterSimulation, t: int) -> sm.SlotValues:
    imp, exp = sim.model.history[t]
    scale = sim.model.scale
    return sm.SlotValues(t, scale.to_mwh(imp), scale.to_mwh(exp))


@pytest.mark.parametrize(
    ("model", "output"), [("bp35a1", "hex"), ("bp35c0", "hex"), ("bp35c0", "binary")], ids=["A1", "C0-hex", "C0-binary"]
)
def test_read_and_push_over_the_pty(model: str, output: str) -> None:
    sim = meter_site({"model": model, "output": output}, {"unit": 0x02, "digits": 7, "serve_coefficient": False})
    with simsm.in_background(sim):
        meter = open_meter(sim, model)
        try:
            scale = meter.read_scale()
            fixed = meter.read_fixed()
            pushes = meter.poll(1.5)
        finally:
            meter.close()
    assert (scale.coefficient, scale.unit_code, scale.mwh_per_step) == (1, 0x02, 10_000), "D3 absent means 1"
    assert fixed == expected(sim, fixed.t)
    assert pushes and all(p == expected(sim, p.t) for p in pushes)
    assert sim.skstack.wopt_writes == 0, "the driver never writes the module's flash"
    assert sim.skstack.refused == 0
    sends = [c for c in sim.skstack.commands if c.startswith("SKSENDTO")]
    assert len(sends) == 2


def test_infc_pushes_are_acknowledged() -> None:
    sim = meter_site({"model": "bp35c0", "output": "binary"}, {"push": "INFC"})
    with simsm.in_background(sim):
        meter = open_meter(sim, "bp35c0")
        try:
            pushes = meter.poll(1.5)
            meter.poll(0.2)  # lets the last INFC_Res go out
        finally:
            meter.close()
        time.sleep(0.1)
    infcs = [echonet.decode(f) for f in sim.skstack.sent_frames if f[10] == echonet.INFC_RES]
    assert pushes and len(infcs) >= len(pushes)
    assert sim.model.acks[: len(infcs)] == [f.tid for f in infcs]
    assert all(f.epcs() == [0xEA, 0xEB] and f.deoj == sm.CLASS_EOJ for f in infcs)


def test_event_29_during_reads() -> None:
    sim = meter_site({"model": "bp35c0", "reauth_s": 0.3})
    with simsm.in_background(sim):
        meter = open_meter(sim, "bp35c0")
        try:
            meter.read_scale()
            # poll() reads EVENT 29 first; the request then waits for EVENT 25
            # instead of going out while the module re-authenticates.
            sim.call_soon(sim.skstack.expire_session)
            meter.poll(0.1)
            fixed = meter.read_fixed()
            sim.call_soon(lambda: sim.skstack.expire_session(fails=True))
            meter.poll(0.1)
            again = meter.read_fixed()  # EVENT 24: the driver joins again, then asks
        finally:
            meter.close()
    kinds = [kind for kind, _ in meter.events if kind != skstack.RX]
    assert kinds == [
        skstack.JOINED,
        skstack.BLOCKED,
        skstack.RESUMED,
        skstack.BLOCKED,
        skstack.LOST,
        skstack.JOINED,
    ]
    assert fixed == expected(sim, fixed.t) and again == expected(sim, again.t)
    assert sim.skstack.failed_sends == 0 and sim.skstack.refused == 0


def test_event_32_33_holds_and_resumes() -> None:
    sim = meter_site({"model": "bp35a1", "rate_limit_after": 2, "rate_limit_s": 0.4})
    with simsm.in_background(sim):
        meter = open_meter(sim, "bp35a1", backoff_ms=200)
        try:
            start = time.monotonic()
            for _ in range(3):
                meter.read_fixed()
            took = time.monotonic() - start
        finally:
            meter.close()
    kinds = [kind for kind, _ in meter.events if kind != skstack.RX]
    assert kinds.count(skstack.BLOCKED) >= 1 and kinds.count(skstack.RESUMED) >= 1
    assert sim.skstack.refused == 0, "nothing was sent while the limit was in force"
    assert took >= 0.6  # the limit (0.4 s), then the backoff (0.2 s)


def test_filling_a_missed_slot_from_ec() -> None:
    sim = meter_site({"model": "bp35c0"}, {"fault": [{"kind": "missed_push", "from_h": 1.2, "to_h": 2.2}]})
    start = int(sim.config.sim_start)
    missed = [start + 5400, start + 7200]
    with simsm.in_background(sim):
        meter = open_meter(sim, "bp35c0")
        try:
            pushed = [p.t for p in meter.poll(0.1)]
            while sim.sim_hours() < 2.7:
                pushed += [p.t for p in meter.poll(0.2)]
            assert not set(missed) & set(pushed)
            gaps = [t for t in range(min(pushed), max(pushed), 1800) if t not in pushed]
            assert gaps == missed
            filled = meter.fill(gaps)
        finally:
            meter.close()
    assert filled == {t: expected(sim, t) for t in missed}
    # The scale (D3, E1, D7) for the pushes, then one SetC of ED and one Get of EC for both slots.
    sent = [echonet.decode(frame) for frame in sim.skstack.sent_frames]
    assert [(f.esv, f.epcs()) for f in sent] == [
        (echonet.GET, [0xD3, 0xE1, 0xD7]),
        (echonet.SETC, [0xED]),
        (echonet.GET, [0xEC]),
    ]
    assert sm.decode_history2_time(sent[1].edt(0xED)) == (missed[-1], 2)


def test_filling_from_e2_e4_when_the_meter_has_no_ec() -> None:
    sim = meter_site(
        {"model": "bp35a1"},
        {"fault": [{"kind": "sna", "epcs": [0xEC, 0xED], "from_h": 0, "to_h": 99}]},
    )
    start = int(sim.config.sim_start)
    with simsm.in_background(sim):
        meter = open_meter(sim, "bp35a1")
        try:
            while sim.sim_hours() < 1.6:
                time.sleep(0.05)
            with pytest.raises(MeterError) as err:
                meter.fill([start + 3600])
            assert err.value.code == "EXCEPTION"
            filled = meter.fill([start + 1800, start + 3600], today=(2026, 6, 21))
        finally:
            meter.close()
    assert filled == {t: expected(sim, t) for t in (start + 1800, start + 3600)}


def test_wrong_password_is_a_clear_error() -> None:
    sim = meter_site({"model": "bp35a1", "password": "ABCDEFGHIJKL"})
    with simsm.in_background(sim):
        meter = BRouteMeter(
            "smart", sim.pty_path, "bp35a1", RBID, PASSWORD, driver=Driver("bp35a1", RBID, PASSWORD, backoff_ms=10)
        )
        with pytest.raises(MeterError) as err:
            meter.open(timeout_s=10)
        meter.close()
    assert err.value.code == "CONNECTION" and "password" in str(err.value) and "\n" not in str(err.value)


def test_momonga_reads_the_same_values() -> None:
    # momonga, an independent SKSTACK/ECHONET Lite driver, on the same emulation:
    # its kWh floats, turned into mWh, must be our integers.
    import momonga

    jst = datetime.timezone(datetime.timedelta(hours=9))
    sim = meter_site({"model": "bp35c0"}, {"unit": 0x01, "digits": 6})
    start = int(sim.config.sim_start)
    with simsm.in_background(sim):
        while sim.sim_hours() < 2.1:
            time.sleep(0.05)
        oracle = momonga.Momonga(RBID, PASSWORD, sim.pty_path)
        oracle.internal_xmit_interval = 0
        oracle.recv_timeout = 3
        with oracle:
            theirs: Any = oracle.get_cumulative_energy_measured_at_fixed_time()
            their_history: Any = oracle.get_historical_cumulative_energy_2(datetime.datetime(2026, 6, 21, 8, 0), 4)
        meter = open_meter(sim, "bp35c0")
        try:
            ours = meter.history2(start + 7200, 4)
        finally:
            meter.close()
    t = int(theirs["timestamp"].replace(tzinfo=jst).timestamp())
    assert round(theirs["cumulative energy"] * 10**6) == expected(sim, t).import_mwh
    assert [int(p["timestamp"].replace(tzinfo=jst).timestamp()) for p in their_history] == [s.t for s in ours]
    for point, slot in zip(their_history, ours, strict=True):
        assert round(point["cumulative energy"]["normal direction"] * 10**6) == slot.import_mwh
        assert round(point["cumulative energy"]["reverse direction"] * 10**6) == slot.export_mwh
    assert ours == [expected(sim, start + 7200 - 1800 * i) for i in range(4)]
    assert sim.skstack.wopt_writes == 0
