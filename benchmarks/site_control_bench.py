"""Site control (SPEC §12, §13): the gateway's interval cost with the smart meter and a command in force,
and the ECHONET Lite codec's frames per second.

Gateway: three real `crev gateway run` processes (interval 1 s) at the same time, against one `crev sim
smartmeter` (2 x SDM630 and two SunSpec inverters with model 123 over Modbus TCP on loopback, and the
smart meter behind an emulated Wi-SUN module on a pty) and a real mosquitto. The baseline is the plain
gateway of gateway_bench.py (the same 3 meters, nothing else). The measured one also has [smartmeter]
(key 12 from its thread's latest EA/EB) and an [[operator]] whose signed 40 % limit (`crev control send`,
revert 20 s) it has applied and read back before the clock starts, so the windows hold its work with a
command in force: CURTAILED in each reading, tick() on every loop pass, and every 10 s the read, the
rewrite and the read-back of the inverter's limit. The third has the command and not the smart meter (on
its own inverter), to split the cost. The processes' CPU time (utime + stime from /proc, all threads) is
sampled over the same wall windows, so the machine's noise falls on all alike. Counted: everything each
process does, the smart meter's thread included (its polls of the pty for pushes, its Get of EA/EB every
refresh_s = 60 s, and the meter's 30-minute pushes, which come every 30 s here as the site runs 60 times
faster). Not counted: start-up, the B-route join and the command's own check, write and ack (all before
the windows), the simulator and the broker. /proc counts in 10 ms ticks: a 3 s quick window is coarse.

Codec: one Get_Res of the smart meter (EA and EB, 11 bytes each: 38 bytes) decoded by crev.echonet.decode
(strict: every PDC, the ESV's EDT rule, trailing bytes), against struct-unpacking the same bytes' fields
(EHD1, EHD2, TID, SEOJ, DEOJ, ESV, OPC, then each EPC, PDC and EDT) with no checks, in the same run,
rounds interleaved; also the decode followed by EA and EB to mWh, as the B-route driver takes an answer;
and the same for encoding (Frame.encode against struct.pack of the same fields).
"""

import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway_bench import process_cpu_seconds  # noqa: E402
from harness import (  # noqa: E402
    Mosquitto,
    ReadingCollector,
    Service,
    free_port,
    gateway_config,
    init_gateway,
    load_truth,
    run_crev,
    sim_config,
    wait_for,
    write_toml,
)

from crev import dgcc, echonet  # noqa: E402
from crev import smartmeter as sm  # noqa: E402
from crev.reading import Reading  # noqa: E402

GOAL_RATIO = 1.5
LIMIT_PCT = 40
REVERT_S = 20  # the gateway writes the limit again every REVERT_S / 2
RBID = "00112233445566778899AABBCCDDEEFF"
PASSWORD = "0123456789AB"


@dataclass(frozen=True)
class Setup:
    device: str
    label: str
    inverter: str  # the simulated inverter it reads (and, with a command, drives)
    smart_meter: bool
    command: bool


SETUPS = (
    Setup("dgc-bench-plain1", "plain gateway: 3 meters (baseline)", "inv", False, False),
    Setup(
        "dgc-bench-ctl001",
        "+ a %d %% limit in force, rewritten every %d s" % (LIMIT_PCT, REVERT_S // 2),
        "inv2",
        False,
        True,
    ),
    Setup("dgc-bench-site01", "+ the smart meter (key 12) and the same limit", "inv", True, True),
)


# ------------------------------------------------------------------ gateway


def _configs(work: Path, broker_url: str, operator_pubkey: str) -> list[Path]:
    ports = {name: free_port() for name in ("pv", "grid", "inv", "inv2")}
    inverter = (
        '[[meter]]\nname = "%s"\nprofile = "sunspec"\nport = %d\nmeasures = ["pv"]\n'
        "controls = [123]\nramp_pct_per_s = 20\nrating_w = 5000\n\n"
    )
    sim_meters = (
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\n\n'
        % (ports["pv"], ports["grid"])
        + inverter % ("inv", ports["inv"])
        + inverter % ("inv2", ports["inv2"])
        + '[smartmeter]\nport = 0\nunit = 3\ndigits = 8\nserial = "SM0000000042"\n\n'
        '[smartmeter.skstack]\nmodel = "bp35c0"\nrbid = "%s"\npassword = "%s"\nlink = "smartmeter.pty"\n'
        % (RBID, PASSWORD)
    )
    sim_config(work, sim_meters, 60)
    (work / "broute.pass").write_text(PASSWORD + "\n")
    configs = []
    for setup in SETUPS:
        meters = (
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
            'source = "solar"\nmax_power_w = 1e7\n\n'
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\n'
            "max_power_w = 1e7\n\n"
            '[[meter]]\nname = "inv"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
            'source = "solar"\nmax_power_w = 1e7\n' % (ports["pv"], ports["grid"], ports[setup.inverter])
        )
        extra = ""
        if setup.smart_meter:
            extra += (
                '[smartmeter]\nmeter_id = "SM-0042"\nport = "%s"\nmodel = "bp35c0"\nrbid = "%s"\n'
                'password_file = "broute.pass"\n\n' % (work / "smartmeter.pty", RBID)
            )
        if setup.command:
            extra += '[[operator]]\nid = "grid-op"\npubkey = "%s"\n' % operator_pubkey
        configs.append(gateway_config(work, setup.device, broker_url, meters, extra=extra))
    return configs


def _send_limit(work: Path, setup: Setup, device_key: bytes, gateway: Service) -> None:
    """The operator's signed limit, through `crev control send`, applied and read back before it returns."""
    sent = run_crev(
        work,
        *("control", "send", "--config", "ingest.toml", "--operator", "grid-op", "--key", "op.key"),
        *("--device", setup.device, "--limit", str(LIMIT_PCT), "--revert", str(REVERT_S), "--expires", "2h"),
        *("--wait", "15", "--device-pubkey", device_key.hex()),
    )
    if sent.returncode != 0 or "ack: applied" not in sent.stdout:
        raise SystemExit("the command was not applied:\n" + sent.stdout + sent.stderr + gateway.log())


def _wait_log(gateway: Service, text: str, timeout_s: float, what: str) -> None:
    wait_for(lambda: text in gateway.log() or not gateway.alive(), timeout_s, "%s of %s" % (what, gateway.name))
    if not gateway.alive():
        raise SystemExit("%s stopped:\n%s" % (gateway.name, gateway.log()))


def _settled(collector: ReadingCollector, setup: Setup) -> bool:
    """The setup's last reading carries what it should: CURTAILED with a command, key 12 with the smart meter."""
    payloads = collector.payloads(setup.device)
    if not payloads:
        return False
    last = Reading.from_cose(payloads[-1])
    return (last.smart_meter is not None) == setup.smart_meter and bool(last.flags & dgcc.CURTAILED) == setup.command


def run_gateways(rounds: int, window_s: float) -> dict[str, list[float] | list[int] | float]:
    with tempfile.TemporaryDirectory(prefix="crev-site-bench-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        services: list[Service] = []
        collector: ReadingCollector | None = None
        try:
            keygen = run_crev(work, "registry", "keygen", "--out", "op.key")
            if keygen.returncode != 0:
                raise SystemExit("crev registry keygen failed:\n" + keygen.stderr)
            configs = _configs(work, broker.url, keygen.stdout.split()[1])
            write_toml(work / "ingest.toml", '[mqtt]\nurl = "%s"\n' % broker.url)
            sim = Service("sim", ["sim", "smartmeter", "--config", str(work / "sim.toml")], work).start()
            services.append(sim)
            wait_for(lambda: (work / "smartmeter.pty").exists() or not sim.alive(), 20, "the simulated site")
            if not sim.alive():
                raise SystemExit("crev sim smartmeter failed:\n" + sim.log())
            keys = [init_gateway(work, config) for config in configs]
            collector = ReadingCollector(broker.port, client_id="crev-site-bench")
            gateways = [
                Service(s.device, ["gateway", "run", "--config", str(c)], work).start()
                for s, c in zip(SETUPS, configs, strict=True)
            ]
            services += gateways
            for setup, gateway, key in zip(SETUPS, gateways, keys, strict=True):
                if setup.smart_meter:
                    _wait_log(gateway, "joined", 60, "the B-route join")
                if setup.command:
                    _wait_log(gateway, '"event": "reading"', 20, "a first reading")
                    _send_limit(work, setup, key, gateway)
            # Settle: each setup's readings carry what they should before the clock starts.
            for setup in SETUPS:
                wait_for(partial(_settled, collector, setup), 30, "a settled reading of %s" % setup.device)
            pids = []
            for gateway in gateways:
                assert gateway.process is not None
                pids.append(gateway.process.pid)
            cpu: list[list[float]] = [[] for _ in pids]
            walls = []
            before = [g.log().count('"event": "reading"') for g in gateways]
            for _ in range(rounds):
                wall_start = time.perf_counter()
                start = [process_cpu_seconds(pid) for pid in pids]
                time.sleep(window_s)
                end = [process_cpu_seconds(pid) for pid in pids]
                walls.append(time.perf_counter() - wall_start)
                for column, a, b in zip(cpu, start, end, strict=True):
                    column.append(b - a)
            readings = [g.log().count('"event": "reading"') - n for g, n in zip(gateways, before, strict=True)]
            for setup, gateway in zip(SETUPS, gateways, strict=True):
                if not _settled(collector, setup):
                    raise SystemExit("%s's last reading lacks key 12 or CURTAILED" % setup.device)
                if setup.command:
                    state = load_truth(work / "truth.jsonl")[-1]["inverters"][setup.inverter]
                    if state["limit_pct"] != LIMIT_PCT or state["reverts"] != 0:
                        raise SystemExit("inverter %s did not hold the limit: %r" % (setup.inverter, state))
                    if "control_lost" in gateway.log() or "command_rejected" in gateway.log():
                        raise SystemExit("%s lost its command:\n%s" % (setup.device, gateway.log()))
        finally:
            for service in reversed(services):
                service.stop()
            if collector is not None:
                collector.close()
            broker.stop()
    wall = sum(walls)
    return {
        "ms": [sum(column) / wall * 1000 for column in cpu],  # one interval per wall second
        "readings": readings,
        "seconds": wall,
        "round_ratios": [s / p if p else float("inf") for p, s in zip(cpu[0], cpu[-1], strict=True)],
    }


def report_gateway(rounds: int, window_s: float) -> None:
    r = run_gateways(rounds, window_s)
    ms, readings, ratios = r["ms"], r["readings"], r["round_ratios"]
    assert isinstance(ms, list) and isinstance(readings, list) and isinstance(ratios, list)
    print(
        "== gateway with the smart meter and a command in force: 3 meters, one interval per second, "
        "%d windows of %.0f s ==" % (rounds, window_s)
    )
    print(
        "(3 real gateways at once; CPU of all their threads, smart meter's included, over the same windows; "
        "start-up, the join and the command's own handling before them)"
    )
    print("%-62s %12s %8s" % ("setup", "per interval", "ratio"))
    for setup, value in zip(SETUPS, ms, strict=True):
        print("%-62s %9.2f ms %7.2fx" % (setup.label, value, value / ms[0]))
    print(
        "the smart meter's part (last row less the one above): %.2f ms; readings in the windows: %s; "
        "per-window ratio, last row to baseline: %s"
        % (ms[-1] - ms[-2], ", ".join(str(n) for n in readings), " ".join("%.2f" % x for x in ratios))
    )
    ratio = ms[-1] / ms[0]
    print("Goals, measured here:")
    print(
        "  [%s] interval cost with the smart meter and a command in force <= %.1fx the plain interval: %.2fx"
        % ("met" if ratio <= GOAL_RATIO else "NOT met", GOAL_RATIO, ratio)
    )


# ------------------------------------------------------------------ codec

HEADER = struct.Struct(">BBH3s3sBB")
PROPERTY = struct.Struct(">BB")
SCALE = sm.Scale(1, 0x02, 8)  # 0.01 kWh a step, 8 digits


def get_res_frame() -> echonet.Frame:
    """The smart meter's answer to a Get of EA and EB at one 30-minute mark."""
    t = 1_798_000_200  # a 30-minute mark
    ea = sm.encode_fixed(t, 12_345_678)
    eb = sm.encode_fixed(t, 2_345_678)
    return echonet.Frame(0x1234, sm.CLASS_EOJ, echonet.CONTROLLER_EOJ, echonet.GET_RES, [(0xEA, ea), (0xEB, eb)])


def struct_decode(data: bytes) -> tuple[tuple[int, int, int, bytes, bytes, int, int], list[tuple[int, bytes]]]:
    """The baseline: the same fields, by struct, with no check at all."""
    header = HEADER.unpack_from(data)
    props = []
    at = 12
    for _ in range(header[6]):
        epc, pdc = PROPERTY.unpack_from(data, at)
        at += 2
        props.append((epc, data[at : at + pdc]))
        at += pdc
    return header, props


def decode_values(data: bytes, scale: sm.Scale = SCALE) -> sm.SlotValues:
    """What the gateway's B-route driver does with such an answer: the frame, then EA and EB in mWh."""
    frame = echonet.decode(data)
    normal = sm.decode_fixed(frame.edt(sm.EPC_FIXED_NORMAL))
    return sm.fixed_pair(normal, sm.decode_fixed(frame.edt(sm.EPC_FIXED_REVERSE)), scale)


def struct_encode(tid: int, seoj: bytes, deoj: bytes, esv: int, props: list[tuple[int, bytes]]) -> bytes:
    parts = [HEADER.pack(echonet.EHD1, echonet.EHD2_FORMAT1, tid, seoj, deoj, esv, len(props))]
    for epc, edt in props:
        parts.append(PROPERTY.pack(epc, len(edt)))
        parts.append(edt)
    return b"".join(parts)


def _rate(call: Callable[[Any], object], arg: object, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        call(arg)
    return frames / (time.perf_counter() - start)


def run_codec(frames: int, rounds: int) -> dict[str, float]:
    frame = get_res_frame()
    data = frame.encode()
    decoded = echonet.decode(data)
    header, props = struct_decode(data)
    if decoded != frame or struct_encode(*header[2:6], props) != data:
        raise SystemExit("the codec and the struct baseline do not agree on the frame")
    if header[2] != frame.tid or [(e, bytes(d)) for e, d in props] != frame.props:
        raise SystemExit("the struct baseline does not read the frame's fields")
    tid, seoj, deoj, esv = frame.tid, frame.seoj, frame.deoj, frame.esv
    plain_props = [(e, bytes(d)) for e, d in frame.props]
    if decode_values(data).import_mwh != SCALE.to_mwh(12_345_678):
        raise SystemExit("the EA value does not come back")
    names = ("struct_decode", "decode", "values", "struct_encode", "encode")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        rates["struct_decode"].append(_rate(struct_decode, data, frames))
        rates["decode"].append(_rate(echonet.decode, data, frames))
        rates["values"].append(_rate(decode_values, data, frames))
        rates["struct_encode"].append(_rate(lambda _: struct_encode(tid, seoj, deoj, esv, plain_props), None, frames))
        rates["encode"].append(_rate(lambda f: f.encode(), frame, frames))
    result = {name: statistics.median(values) for name, values in rates.items()}
    result["bytes"] = len(data)
    return result


def report_codec(frames: int, rounds: int) -> None:
    r = run_codec(frames, rounds)
    print(
        "== ECHONET Lite codec (crev.echonet): a Get_Res of EA and EB, %d bytes, %d frames a round, "
        "%d rounds (median) ==" % (r["bytes"], frames, rounds)
    )
    print("(CPython, one thread; the baseline unpacks or packs the same fields with struct and checks nothing)")
    print("%-62s %12s %8s" % ("setup", "frames/s", "ratio"))
    print("%-62s %12.0f %7.2fx" % ("decode: struct.unpack of the fields (baseline)", r["struct_decode"], 1.0))
    print(
        "%-62s %12.0f %7.2fx"
        % ("decode: echonet.decode, every PDC and EDT rule checked", r["decode"], r["decode"] / r["struct_decode"])
    )
    print(
        "%-62s %12.0f %7.2fx"
        % ("  and EA, EB to mWh (smartmeter.decode_fixed, fixed_pair)", r["values"], r["values"] / r["struct_decode"])
    )
    print("%-62s %12.0f %7.2fx" % ("encode: struct.pack of the fields (baseline)", r["struct_encode"], 1.0))
    print(
        "%-62s %12.0f %7.2fx"
        % ("encode: Frame.encode, every field checked", r["encode"], r["encode"] / r["struct_encode"])
    )


def report(rounds: int, window_s: float, frames: int, codec_rounds: int) -> None:
    report_gateway(rounds, window_s)
    print()
    report_codec(frames, codec_rounds)


if __name__ == "__main__":
    # On its own: python benchmarks/site_control_bench.py [--quick]; `make bench` runs it from run.py.
    quick = "--quick" in sys.argv
    if quick:
        report(1, 3, 2000, 1)
    else:
        report(6, 10, 100_000, 5)
