"""Gateway CPU time and peak RSS per interval with 3 meters, against a baseline.

The gateway runs as a real process (interval 1 s) against simulated meters
and a real mosquitto. The baseline, measured in the same run, is a bare
pymodbus client that makes the same register reads once per interval and
nothing else: the irreducible Modbus cost.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    Mosquitto,
    Service,
    free_port,
    gateway_config,
    init_gateway,
    port_open,
    sim_config,
    wait_for,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def peak_rss_kib(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


BASELINE = """
import sys, time
from pymodbus.client import ModbusTcpClient
ports = [int(p) for p in sys.argv[2:5]]
n = int(sys.argv[1])
clients = [ModbusTcpClient("127.0.0.1", port=p, timeout=1, retries=0) for p in ports]
for c in clients:
    c.connect()
start = time.process_time()
for _ in range(n):
    clients[0].read_holding_registers(0xFC00, count=2, device_id=1)
    clients[0].read_input_registers(0x34, count=2, device_id=1)
    clients[0].read_input_registers(0x4A, count=2, device_id=1)
    clients[0].read_input_registers(0x48, count=2, device_id=1)
    clients[0].read_input_registers(0x156, count=2, device_id=1)
    clients[1].read_holding_registers(0xFC00, count=2, device_id=1)
    clients[1].read_input_registers(0x34, count=2, device_id=1)
    clients[1].read_input_registers(0x48, count=4, device_id=1)
    clients[1].read_input_registers(0x156, count=2, device_id=1)
    clients[2].read_holding_registers(40002, count=68, device_id=1)
    clients[2].read_holding_registers(40070, count=52, device_id=1)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.process_time() - start, hwm)
"""


def run(intervals: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work)
        broker.start()
        pv, grid, inverter = free_port(), free_port(), free_port()
        sim_meters = (
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\n\n'
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\n\n'
            '[[meter]]\nname = "inv"\nprofile = "sunspec"\nport = %d\nmeasures = ["wind"]\n' % (pv, grid, inverter)
        )
        sim = Service("sim", ["sim", "meters", "--config", str(sim_config(work, sim_meters, 60))], work).start()
        try:
            wait_for(lambda: all(port_open(p) for p in (pv, grid, inverter)), 20, "simulated meters")
            gw_meters = (
                '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
                'source = "solar"\nmax_power_w = 1e7\n\n'
                '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\n'
                "max_power_w = 1e7\n\n"
                '[[meter]]\nname = "inv"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
                'source = "wind"\nmax_power_w = 1e7\n' % (pv, grid, inverter)
            )
            config = gateway_config(work, "dgc-bench-0001", broker.url, gw_meters)
            init_gateway(work, config)
            gateway = Service("gateway", ["gateway", "run", "--config", str(config)], work).start()
            assert gateway.process is not None
            pid = gateway.process.pid
            time.sleep(3.5)  # start-up and the first readings are not steady state
            cpu_start, wall_start = process_cpu_seconds(pid), time.time()
            time.sleep(intervals)
            cpu = process_cpu_seconds(pid) - cpu_start
            elapsed = time.time() - wall_start
            rss = peak_rss_kib(pid)
            gateway.stop()
            committed = gateway.log().count('"event": "reading"')

            done = subprocess.run(
                [sys.executable, "-c", BASELINE, str(intervals), str(pv), str(grid), str(inverter)],
                capture_output=True,
                text=True,
                check=True,
            )
            base_cpu, base_rss = done.stdout.split()
        finally:
            sim.stop()
            broker.stop()
    per_interval = cpu / elapsed  # one interval per wall second
    base_per_interval = float(base_cpu) / intervals
    return {
        "gateway_cpu_ms": per_interval * 1000,
        "baseline_cpu_ms": base_per_interval * 1000,
        "gateway_rss_mib": rss / 1024,
        "baseline_rss_mib": int(base_rss) / 1024,
        "readings": committed,
    }


def report(intervals: int) -> None:
    r = run(intervals)
    print("== gateway, 3 meters (2 x SDM630, 1 x SunSpec), one interval per second ==")
    print("%-44s %10s %8s" % ("", "per interval", "ratio"))
    print("%-44s %8.2f ms %7.1fx" % ("bare pymodbus reads of the same registers", r["baseline_cpu_ms"], 1.0))
    print(
        "%-44s %8.2f ms %7.1fx"
        % (
            "gateway (read, DGC-C, sign, commit, publish)",
            r["gateway_cpu_ms"],
            r["gateway_cpu_ms"] / r["baseline_cpu_ms"],
        )
    )
    print(
        "peak RSS: gateway %.1f MiB, bare pymodbus client %.1f MiB (%.1fx); %d readings committed"
        % (r["gateway_rss_mib"], r["baseline_rss_mib"], r["gateway_rss_mib"] / r["baseline_rss_mib"], r["readings"])
    )


if __name__ == "__main__":
    report(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
