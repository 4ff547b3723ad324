"""`crev provision` against a MicroPython board on a serial link, driven by real mpremote.

The board is the official MicroPython WebAssembly port behind
tests/micropython/serial_bridge.mjs, which stands in for the USB cable (a TCP
socket that pyserial opens as socket://). Its RS-485 meters and its random
number generator are stand-ins (tests/micropython/fake_board.py), because the
port has neither; the firmware, mpremote and the REPL are real. The firmware
goes to the board compiled to .mpy, and the commissioning check runs on that.
"""

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from harness import ingest_config, run_crev
from support import ROOT
from test_gateway_tls import _certificates

DEV = "dgc-mcu-0007"
BRIDGE = ROOT / "tests" / "micropython" / "serial_bridge.mjs"
PRELUDE = ROOT / "tests" / "micropython" / "fake_board.py"
SITE = (
    """
[device]
id = "%s"
interval_s = 60

[mqtt]
url = "mqtt://192.0.2.10:1883"

[uart]
id = 1
tx = 17
rx = 16
de_pin = 4

[[meter]]
name = "pv"
profile = "sdm630"
url = "rtu:///dev/ttyS1?baudrate=9600"
unit = 1
role = "generation"
source = "solar"
counter = "export"

[[meter]]
name = "grid"
profile = "sdm630"
url = "rtu:///dev/ttyS1?baudrate=9600"
unit = 2
role = "grid"
"""
    % DEV
)


def _board_json(path: Path, grid_export_w: int) -> Path:
    meters = {
        "1": {"serial": 11112222, "import_kwh": 0.0, "import_w": 0, "export_kwh": 120.0, "export_w": 3000},
        "2": {"serial": 33334444, "import_kwh": 80.0, "import_w": 200, "export_kwh": 30.0, "export_w": grid_export_w},
    }
    path.write_text(json.dumps({"meters": meters}))
    return path


class Board:
    def __init__(self, process: "subprocess.Popen[str]", port: int) -> None:
        self.process = process
        self.url = "socket://127.0.0.1:%d" % port

    def run(self, code: str) -> str:
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "mpremote"), "connect", self.url, "resume", "exec", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def _start_board(tmp_path: Path, grid_export_w: int) -> Board:
    board_json = _board_json(tmp_path / "board.json", grid_export_w)
    process = subprocess.Popen(
        ["node", str(BRIDGE), "--prelude", str(PRELUDE), "--file", "/test/board.json=%s" % board_json],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"listening (\d+)", line)
    assert match, "the bridge did not start: %r" % line
    return Board(process, int(match.group(1)))


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site.toml").write_text(SITE)
    ingest_config(tmp_path, "mqtt://127.0.0.1:1")
    assert run_crev(tmp_path, "ingest", "init", "--config", "ingest.toml").returncode == 0
    return tmp_path


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    board = _start_board(tmp_path, grid_export_w=1000)
    yield board
    board.process.kill()
    board.process.wait()


def _provision(site: Path, board: Board, *extra: str) -> "subprocess.CompletedProcess[str]":
    return run_crev(
        site, "provision", "--port", board.url, "--device", DEV, "--config", "site.toml", "--wait", "2", *extra
    )


@pytest.mark.slow
def test_provision_copies_makes_the_key_enrols_and_commissions(site: Path, board: Board) -> None:
    # Sources left by an older provisioning would shadow the new .mpy (MicroPython imports foo.py first).
    board.run("import os\nos.mkdir('/lib')\nos.mkdir('/lib/dgc')\nopen('/lib/dgc/meters.py','w').write('1/0')")
    done = _provision(site, board, "--ingest-config", "ingest.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"1/4 copying the firmware and config.json \(\d+ files, compiled to .mpy v6\)", done.stdout)
    pubkey = re.search(r"pubkey ([0-9a-f]{64}) \(created on the board", done.stdout)
    assert pubkey, done.stdout
    assert "enrolled %s" % DEV in done.stdout and "done: %s is provisioned" % DEV in done.stdout
    assert re.search(r"pv\s+11112222\s+120\.\d+\s+[1-9]", done.stdout), done.stdout
    assert "WARNING" not in done.stdout

    # ingest's registry now holds the key the board made.
    with sqlite3.connect(site / "crev.sqlite") as db:
        rows = db.execute("SELECT dev, pubkey FROM key_events").fetchall()
    assert rows == [(DEV, bytes.fromhex(pubkey.group(1)))]

    # The board has the firmware, compiled, and its config; its seed was never printed.
    listing = board.run("import os; print(sorted(os.listdir('/lib/dgc')), sorted(os.listdir('/lib/crev')))")
    assert "'app.mpy'" in listing and "'modbus_rtu.mpy'" in listing and "'evidence" not in listing
    assert ".py'" not in listing, "no module is left as source: %s" % listing
    assert "'main.py'" in board.run("import os; print(os.listdir('/'))"), "main.py stays source: it is what boots"
    config = json.loads(board.run("print(open('/config.json').read())"))
    assert config["device"]["id"] == DEV and config["uart"]["de_pin"] == 4 and len(config["meters"]) == 2
    assert "tls" not in config["mqtt"]
    seed = board.run("import binascii; print(binascii.hexlify(open('/device.key','rb').read()).decode())").strip()
    assert len(seed) == 64 and seed not in done.stdout + done.stderr

    # Again, now for a broker behind TLS: the key stays, the enrolment is already there,
    # and the broker's CA arrives on the board as DER next to a config that asks for TLS.
    ca, _cert, _key = _certificates(site)
    (site / "site.toml").write_text(
        SITE.replace('url = "mqtt://192.0.2.10:1883"', 'url = "mqtts://192.0.2.10:8883"\nca_file = "ca.pem"')
    )
    again = _provision(site, board, "--ingest-config", "ingest.toml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "pubkey %s (kept on the board" % pubkey.group(1) in again.stdout
    assert "already enrolled" in again.stdout
    config = json.loads(board.run("print(open('/config.json').read())"))
    assert config["mqtt"] == {
        "host": "192.0.2.10",
        "port": 8883,
        "keepalive": config["mqtt"]["keepalive"],
        "tls": True,
        "ca_file": "/mqtt_ca.der",
    }
    on_board = board.run("import binascii; print(binascii.hexlify(open('/mqtt_ca.der','rb').read()).decode())")
    assert bytes.fromhex(on_board.strip()) == x509.load_pem_x509_certificate(ca.read_bytes()).public_bytes(Encoding.DER)


@pytest.mark.slow
def test_a_reversed_ct_fails_the_commissioning_check(site: Path, tmp_path: Path) -> None:
    board = _start_board(tmp_path, grid_export_w=5000)  # more export than the PV generates
    try:
        done = _provision(site, board)
    finally:
        board.process.kill()
        board.process.wait()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "grid export exceeds generation" in done.stdout
    assert "crev ingest enroll --config ingest.toml --device %s --pubkey" % DEV in done.stdout


def test_provision_mistakes_are_one_line(site: Path) -> None:
    done = run_crev(site, "provision", "--port", "/dev/nonexistent-tty", "--device", DEV, "--config", "site.toml")
    assert done.returncode == 2 and "cannot talk to the board" in done.stderr
    wrong = run_crev(site, "provision", "--port", "/dev/null", "--device", "dgc-other-0001", "--config", "site.toml")
    assert wrong.returncode == 2 and "differs from [device] id" in wrong.stderr
    (site / "bad.toml").write_text(SITE.replace("[uart]\nid = 1\ntx = 17\nrx = 16\nde_pin = 4\n", ""))
    missing = run_crev(site, "provision", "--port", "/dev/null", "--device", DEV, "--config", "bad.toml")
    assert missing.returncode == 2 and "add a [uart] table" in missing.stderr
    for done in (wrong, missing):
        assert len(done.stderr.strip().splitlines()) == 1
