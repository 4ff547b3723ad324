# The DGC controller's entry point on a MicroPython board (ESP32, RP2040).
#
# /config.json is written by `crev provision`. The device key is made here at
# first boot and never leaves the board; its public key is printed on the
# serial console for provisioning to read back.
import json
import os
import ssl
import time

import machine
import network
import ntptime
from dgc.app import App
from dgc.clock import Clock
from dgc.keystore import announce, load_or_create
from dgc.outbox import Files, Outbox
from dgc.rtu_bus import RtuBus
from dgc.uplink import from_config as uplink_from_config
from umqtt.simple import MQTTClient

from crev import ed25519

# Without the signing table (200 kB, boards with PSRAM only): the mode whose loop ran in the
# smallest fixed heap under a garbage collector that runs within a pass, as a board's does
# (MicroPython's unix port), and the faster (docs/provisioning-a-microcontroller.md).
DEFAULT_SIGNING = "ints"


def choose_signing(device):
    """The signature's base multiplication: the table if signing_table, else device["signing"]."""
    mode = "table" if device.get("signing_table", False) else device.get("signing", DEFAULT_SIGNING)
    if mode == "table":
        ed25519.use_base_table(True)
    elif mode == "limbs":
        # Imported only here: its 11 kB of bytecode would stay in the heap of the other modes.
        from dgc.limbs25519 import install

        install()  # 12-bit limbs: slower, no garbage per field operation
    elif mode == "ints":
        ed25519.use_base_table(False)  # the comb in Python ints: faster, 240 kB of garbage a signature
    else:
        raise ValueError("device.signing must be table, limbs or ints, not %r" % mode)


def site_control(config, key, uplink, bus, files):
    """Site control (SPEC §12) when config.json lists operators, else None (and the module stays unimported)."""
    if not config.get("operators"):
        return None
    # Imported only here: a meter-only board keeps neither its bytecode nor the core's control rules.
    from dgc.control import from_config as control_from_config

    try:
        return control_from_config(config, key, uplink, bus, files, time, log=print)
    except ValueError as err:  # /control.json does not parse: never guess which seqs were accepted
        print("control: disabled, %s" % err)
        return None


def main():
    with open("/config.json") as f:
        config = json.load(f)
    choose_signing(config["device"])
    files = Files(os)
    key, created = load_or_create(files, os.urandom)
    print(announce(key, config["device"]["id"]))
    if created:
        print("a new device key was made; enrol it before readings are accepted")
    if config.get("provision_only"):
        return  # `crev provision` reads the public key and stops here

    wifi = config.get("wifi")
    if wifi:
        station = network.WLAN(network.STA_IF)
        station.active(True)
        station.connect(wifi["ssid"], wifi["password"])

    uart_cfg = config["uart"]
    uart = machine.UART(
        uart_cfg.get("id", 1),
        baudrate=uart_cfg.get("baudrate", 9600),
        bits=8,
        parity=None if uart_cfg.get("parity", "N") == "N" else (0 if uart_cfg["parity"] == "E" else 1),
        stop=uart_cfg.get("stop", 1),
        tx=uart_cfg.get("tx"),
        rx=uart_cfg.get("rx"),
        timeout=0,
    )
    de_pin = machine.Pin(uart_cfg["de_pin"], machine.Pin.OUT, value=0) if "de_pin" in uart_cfg else None
    bus = RtuBus(uart, de_pin, uart_cfg.get("timeout_ms", 300))

    clock = Clock(ntptime.settime)
    clock.synchronise()
    watchdog = machine.WDT(timeout=config["device"].get("watchdog_ms", 60000))
    # With mqtts:// the broker's certificate is checked against the CA `crev provision` wrote.
    uplink = uplink_from_config(config, MQTTClient, files.read, ssl, log=print)
    app = App(
        config,
        bus,
        Outbox("/outbox", files),
        key,
        uplink,
        clock,
        watchdog,
        control=site_control(config, key, uplink, bus, files),
    )
    last_sync = time.ticks_ms()
    while True:
        app.run(time.sleep_ms, passes=300)  # about a minute
        if time.ticks_diff(time.ticks_ms(), last_sync) > 3600 * 1000:
            clock.synchronise()
            last_sync = time.ticks_ms()


main()
