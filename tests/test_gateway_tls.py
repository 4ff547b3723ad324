"""mqtts:// end to end: the gateway publishes to a real mosquitto TLS listener.

The test makes its own CA and server certificate (for IP 127.0.0.1) with
``cryptography``; the gateway trusts only that CA through ``ca_file``.
"""

import datetime
import ipaddress
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import Mosquitto, Service, check_chain, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_pipeline import DEVICE, sunspec_site_with_gateway


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crev test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.mark.slow
def test_gateway_publishes_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    broker = Mosquitto(tmp_path)
    broker.config.write_text(broker.config.read_text() + "cafile %s\ncertfile %s\nkeyfile %s\n" % (ca, cert, key))
    broker.url = "mqtts://127.0.0.1:%d" % broker.port
    broker.start()
    received: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-tls-collector")
    client.tls_set(ca_certs=str(ca))
    client.on_connect = lambda c, u, f, r, p: c.subscribe("crev/v1/+/reading", qos=1)
    client.on_message = lambda c, u, m: received.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sim, config = sunspec_site_with_gateway(tmp_path, broker, speed=600)
    config.write_text(config.read_text().replace("keepalive_s = 5\n", 'keepalive_s = 5\nca_file = "ca.pem"\n'))
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    try:
        wait_for(lambda: len(received) >= 3, 30, "readings over TLS")
    finally:
        assert gateway.stop() == 0, gateway.log()
        sim.stop()
        client.loop_stop()
        broker.stop()
    time.sleep(0.2)
    readings = check_chain(received)
    assert readings[0].seq == 0 and all(r.dev == DEVICE for r in readings)
