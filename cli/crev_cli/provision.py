"""``crev provision``: set up a microcontroller DGC controller over its serial port.

1. Copy the firmware (main.py, the core, the application, umqtt.simple) and
   the device's config.json, and check every file's SHA-256 on the board.
2. Have the board make its key (``os.urandom`` on the chip) and read back
   only the public key.
3. Enrol it with ingest when ingest's config is here, or print the exact
   enrol command to run where ingest is.
4. Commissioning check: the board reads every meter twice, a few seconds
   apart; the DGC-C rules are applied to the difference. A CT installed the
   wrong way round shows as grid export above generation.

The board is driven through mpremote's serial transport, in one raw-REPL
session. It is not reset, so a board already running keeps its outbox.
"""

import argparse
import hashlib
import json
import time
import tomllib
from pathlib import Path
from typing import Any

from crev import dgcc
from crev_cli import UsageError

FIRMWARE_DIR = Path(__file__).resolve().parent.parent.parent / "firmware"
# The core modules a controller needs (the ledger and audit code stays on the host).
CORE_MODULES = [
    "__init__",
    "cbor",
    "cose",
    "dgcc",
    "ed25519",
    "errors",
    "keys",
    "modbus_rtu",
    "reading",
    "registers",
    "sha512",
]

KEY_SCRIPT = """
import os
from dgc.keystore import announce, load_or_create
from dgc.outbox import Files
key, created = load_or_create(Files(os), os.urandom)
print(announce(key, %r), "created" if created else "kept")
"""

HASH_SCRIPT = """
import hashlib, binascii
with open(%r, "rb") as f:
    print(binascii.hexlify(hashlib.sha256(f.read()).digest()).decode())
"""

COMMISSION_SCRIPT = """
import json, time
import machine
from dgc.meters import channels, read_meter
from dgc.rtu_bus import RtuBus
with open("/config.json") as f:
    config = json.load(f)
u = config["uart"]
uart = machine.UART(u.get("id", 1), baudrate=u.get("baudrate", 9600), tx=u.get("tx"), rx=u.get("rx"), timeout=0)
de = machine.Pin(u["de_pin"], machine.Pin.OUT, value=0) if "de_pin" in u else None
bus = RtuBus(uart, de, u.get("timeout_ms", 300))
for round in range(2):
    samples = []
    for meter in config["meters"]:
        try:
            serial, energies = read_meter(bus, meter)
            samples.append((serial, energies))
            print(json.dumps({"round": round, "meter": meter["name"], "serial": serial, "energies": energies}))
        except Exception as err:
            print(json.dumps({"round": round, "meter": meter["name"], "error": str(err)}))
    if len(samples) == len(config["meters"]):
        # The channels exactly as the firmware builds them for a reading.
        print(json.dumps({"round": round, "channels": channels(config["meters"], samples)}))
    if round == 0:
        time.sleep(%d)
"""


def device_config(raw: dict[str, Any], config_path: Path, device: str) -> dict[str, Any]:
    """The config.json the firmware reads, from a gateway-style site.toml with [uart]."""
    from crev_gateway import ConfigError
    from crev_gateway.config import parse
    from crev_gateway.firmware_config import compact_meter
    from crev_gateway.profiles import load_profile

    try:
        site = parse(raw, config_path)
        meters = [compact_meter(m, load_profile(m.profile)) for m in site.meters]
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if site.device_id != device:
        raise UsageError("--device %s differs from [device] id = %r in %s" % (device, site.device_id, config_path))
    uart = raw.get("uart")
    if not isinstance(uart, dict):
        raise UsageError("%s: add a [uart] table (id, tx, rx, and de_pin for an RS-485 driver)" % config_path.name)
    for key in ("id", "tx", "rx", "de_pin", "baudrate", "timeout_ms"):
        if key in uart and (not isinstance(uart[key], int) or isinstance(uart[key], bool) or uart[key] < 0):
            raise UsageError("%s: [uart] %s must be a non-negative integer" % (config_path.name, key))
    if "baudrate" not in uart:
        uart = dict(uart, baudrate=site.meters[0].url.baudrate)
    mqtt: dict[str, Any] = {"host": site.mqtt.host, "port": site.mqtt.port, "keepalive": site.mqtt.keepalive_s}
    if site.mqtt.tls:
        raise UsageError("%s: the firmware speaks plain MQTT; use mqtt:// on a protected network" % config_path.name)
    if site.mqtt.username:
        mqtt["username"] = site.mqtt.username
        if site.mqtt.password_file is None:
            raise UsageError("%s: [mqtt] username needs password_file" % config_path.name)
        try:
            mqtt["password"] = site.mqtt.password_file.read_text().strip()
        except OSError as err:
            raise UsageError("cannot read %s: %s" % (site.mqtt.password_file, err.strerror)) from err
    firmware = raw.get("firmware", {})
    if not isinstance(firmware, dict):
        raise UsageError("%s: [firmware] must be a table" % config_path.name)
    signing_table = firmware.get("signing_table", False)
    watchdog_ms = firmware.get("watchdog_ms", 60000)
    if not isinstance(signing_table, bool):
        raise UsageError("%s: [firmware] signing_table must be true or false" % config_path.name)
    if not isinstance(watchdog_ms, int) or isinstance(watchdog_ms, bool) or not 5000 <= watchdog_ms <= 3600000:
        raise UsageError("%s: [firmware] watchdog_ms must be 5000..3600000" % config_path.name)
    config: dict[str, Any] = {
        "device": {
            "id": device,
            "interval_s": site.interval_s,
            "signing_table": signing_table,
            "watchdog_ms": watchdog_ms,
        },
        "mqtt": mqtt,
        "uart": uart,
        "meters": meters,
    }
    if isinstance(raw.get("wifi"), dict):
        config["wifi"] = raw["wifi"]
    return config


def firmware_files(config: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(path on the board, contents), directories first."""
    if not (FIRMWARE_DIR / "dgc" / "app.py").exists():
        raise UsageError("the firmware sources are not here: run crev provision from a crev checkout")
    umqtt = FIRMWARE_DIR / "lib" / "umqtt" / "simple.py"
    if not umqtt.exists():
        raise UsageError("umqtt.simple is missing: run `make` or `python firmware/fetch_libs.py` first")
    files = [("/lib/crev/%s.py" % m, (FIRMWARE_DIR / "crev" / (m + ".py")).read_bytes()) for m in CORE_MODULES]
    files += [("/lib/dgc/" + p.name, p.read_bytes()) for p in sorted((FIRMWARE_DIR / "dgc").glob("*.py"))]
    files += [("/lib/umqtt/__init__.py", b""), ("/lib/umqtt/simple.py", umqtt.read_bytes())]
    files += [("/main.py", (FIRMWARE_DIR / "main.py").read_bytes())]
    files += [("/config.json", json.dumps(config, indent=1).encode())]
    return files


class Board:
    """One raw-REPL session with the board (mpremote's serial transport)."""

    def __init__(self, port: str) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.error = TransportError
        self.made: set[str] = set()
        try:
            self.transport = SerialTransport(port, baudrate=115200)
            self.transport.enter_raw_repl(soft_reset=False)
        except TransportError as err:
            raise UsageError("cannot talk to the board on %s: %s" % (port, err)) from err

    def run(self, code: str) -> str:
        try:
            return bytes(self.transport.exec(code)).decode("utf-8", "replace")
        except self.error as err:
            raise UsageError("the board failed: %s" % str(err).strip().splitlines()[-1]) from err

    def write(self, path: str, data: bytes) -> None:
        parts = path.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            directory = "/" + "/".join(parts[:depth])
            if directory not in self.made:
                self.run("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % directory)
                self.made.add(directory)
        try:
            self.transport.fs_writefile(path, data, chunk_size=4096)
        except self.error as err:
            raise UsageError("cannot write %s on the board: %s" % (path, err)) from err
        digest = self.run(HASH_SCRIPT % path)
        if digest.strip() != hashlib.sha256(data).hexdigest():
            raise UsageError("%s did not arrive intact on the board" % path)

    def close(self) -> None:
        try:
            self.transport.exit_raw_repl()
        finally:
            self.transport.close()


def commissioning(output: str, meters: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """The report lines, and whether every meter answered and the energies make sense."""
    rounds: dict[int, dict[str, dict[str, Any]]] = {0: {}, 1: {}}
    channels: dict[int, list[tuple[int, str, int, int]]] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "channels" in record:
                channels[record["round"]] = [tuple(c) for c in record["channels"]]
            else:
                rounds[record["round"]][record["meter"]] = record
    lines = ["%-10s %-12s %16s %16s" % ("meter", "serial", "counter kWh", "in the pause")]
    ok = True
    for meter in meters:
        first, second = rounds[0].get(meter["name"], {}), rounds[1].get(meter["name"], {})
        for record in (first, second):
            if "error" in record or not record:
                lines.append("%-10s FAILED: %s" % (meter["name"], record.get("error", "no answer")))
                ok = False
                break
        else:
            for name, value in sorted(second["energies"].items()):
                delta = value - first["energies"][name]
                lines.append(
                    "%-10s %-12s %16.3f %13.3f Wh  (%s)"
                    % (meter["name"], second["serial"], value / 1e6, delta / 1e3, name)
                )
    if not ok or len(channels) != 2:
        return False, lines
    energies, _gs, flags = dgcc.apply_rules(channels[0], channels[1])
    if energies is not None:
        g, i, e, s, d = energies
        lines.append("in the pause: generation %d, import %d, export %d, self %d, demand %d mWh" % (g, i, e, s, d))
    if flags & dgcc.EXPORT_EXCEEDS_GEN:
        lines.append(
            "WARNING: grid export exceeds generation: is a CT or the grid meter installed the wrong way round?"
        )
        ok = False
    if flags & (dgcc.COUNTER_RESET | dgcc.NO_BASELINE):
        lines.append("WARNING: a counter went back or a meter changed between the two reads")
        ok = False
    return ok, lines


def provision(args: argparse.Namespace) -> int:
    config_path = Path(args.config)
    try:
        raw = tomllib.loads(config_path.read_text())
    except FileNotFoundError:
        raise UsageError("%s does not exist" % config_path) from None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError("cannot read %s: %s" % (config_path, err)) from err
    config = device_config(raw, config_path, args.device)
    files = firmware_files(config)

    board = Board(args.port)
    try:
        print("1/4 copying the firmware and config.json (%d files)" % len(files))
        for path, data in files:
            board.write(path, data)
        print("2/4 making the device key on the board")
        announced = board.run(KEY_SCRIPT % args.device).strip().splitlines()[-1].split()
        if len(announced) != 5 or announced[:3] != ["crev-device", args.device, "pubkey"]:
            raise UsageError("the board did not announce its key: %r" % " ".join(announced))
        pubkey, state = announced[3], announced[4]
        print("    pubkey %s (%s on the board; the private key never leaves it)" % (pubkey, state))
        print("3/4 enrolment")
        enrol = "crev ingest enroll --config ingest.toml --device %s --pubkey %s" % (args.device, pubkey)
        if args.ingest_config:
            from crev_ingest import IngestError
            from crev_ingest.cli import enroll

            try:
                enroll(Path(args.ingest_config), args.device, pubkey)
            except IngestError as err:
                raise UsageError(str(err)) from err
        else:
            print("    run this where ingest runs:\n    " + enrol)
        print("4/4 commissioning check: reading every meter twice, %d s apart" % args.wait)
        started = time.monotonic()
        output = board.run(COMMISSION_SCRIPT % args.wait)
        ok, lines = commissioning(output, config["meters"])
        for line in lines:
            print("    " + line)
        print("    (%.1f s)" % (time.monotonic() - started))
    finally:
        board.close()
    if not ok:
        print("commissioning check FAILED: fix the wiring or the config, then run crev provision again")
        return 1
    print("done: %s is provisioned; power-cycle it to start" % args.device)
    return 0
