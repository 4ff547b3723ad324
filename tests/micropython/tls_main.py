# Runs on MicroPython's unix port (real sockets, real ssl over mbedTLS):
#   micropython tls_main.py BOARD
# BOARD is a folder holding what `crev provision` writes to a board
# (/config.json, /mqtt_ca.der, /lib/...), with BOARD/lib on MICROPYPATH. The
# uplink is made exactly as firmware/main.py makes it, with the real
# umqtt.simple, and publishes the readings in BOARD/test/readings.json to the
# broker in config.json. One JSON line says what happened.
import json
import socket
import ssl
import sys

import umqtt.simple
from dgc.uplink import Tls, from_config
from umqtt.simple import MQTTClient

BOARD = sys.argv[1]


def read(path):
    # The board's filesystem root is BOARD here: the one stand-in.
    with open(BOARD + path, "rb") as f:
        return f.read()


config = json.loads(read("/config.json"))
logs = []
uplink = from_config(config, MQTTClient, read, ssl, log=logs.append)
readings = [(seq, bytes.fromhex(cose)) for seq, cose in json.loads(read("/test/readings.json"))]
acknowledged = []
sent = uplink.send(readings, acknowledged.append)
if uplink.client is not None:
    uplink.client.disconnect()

# Newer umqtt.simple (frozen into some boards' firmware) calls
# ssl.wrap_socket(sock, server_hostname=...) on the object it is given.
mqtt = config["mqtt"]
direct = None
sock = socket.socket()
sock.connect(socket.getaddrinfo(mqtt["host"], mqtt["port"])[0][-1])
try:
    Tls(ssl, read(mqtt["ca_file"]), mqtt["host"]).wrap_socket(sock, server_hostname=mqtt["host"]).close()
    direct = "ok"
except Exception as err:
    direct = "%s %s" % (type(err).__name__, err)
    sock.close()

print(
    json.dumps(
        {
            "sent": sent,
            "acknowledged": acknowledged,
            "logs": logs,
            "direct": direct,
            "umqtt": umqtt.simple.__file__,
            "implementation": sys.implementation.name,
            "platform": sys.platform,
        }
    )
)
