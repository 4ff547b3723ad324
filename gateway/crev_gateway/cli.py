"""``crev gateway init`` and ``crev gateway run``."""

import signal
import sys
from pathlib import Path
from types import FrameType

from crev_gateway import config as gateway_config
from crev_gateway.keyfile import create_key
from crev_gateway.metrics import setup_logging
from crev_gateway.service import Gateway, check_startup


def init(config_path: Path) -> int:
    config = gateway_config.load(config_path)
    key = create_key(config.key_path)
    print("device  %s" % config.device_id)
    print("pubkey  %s" % key.public_key.hex())
    print("kid     %s" % key.kid.hex())
    print("key     %s (mode 0600; back it up offline, it never leaves the device)" % config.key_path)
    print(
        "enrol:  crev ingest enroll --config ingest.toml --device %s --pubkey %s"
        % (config.device_id, key.public_key.hex())
    )
    return 0


def run(config_path: Path, skip_meter_check: bool = False) -> int:
    config = gateway_config.load(config_path)
    setup_logging()
    gateway = Gateway(config)
    if not skip_meter_check:
        check_startup(gateway)

    def stop(signum: int, frame: FrameType | None) -> None:
        gateway.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    gateway.run()
    sys.stdout.flush()
    return 0
