"""``crev ingest init|enroll|revoke|run`` and ``crev audit ledger``."""

import logging
import signal
import time
from pathlib import Path
from types import FrameType

from crev.keys import key_id
from crev.reading import valid_device_id
from crev_ingest import ConfigError
from crev_ingest import config as ingest_config
from crev_ingest.audit import verify_ledger
from crev_ingest.broker import write_broker_users
from crev_ingest.keyfile import create_key, load_key
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE, Ledger
from crev_ingest.service import IngestService
from crev_ingest.store import Store


def init(config_path: Path) -> int:
    config = ingest_config.load(config_path)
    key = create_key(config.ledger_key_path)
    print("ledger  %s" % config.origin)
    print("pubkey  %s" % key.public_key.hex())
    print("key     %s (mode 0600; auditors need only the public key above)" % config.ledger_key_path)
    return 0


def _open(config_path: Path) -> tuple[ingest_config.IngestConfig, Store, Ledger]:
    config = ingest_config.load(config_path)
    key = load_key(config.ledger_key_path)
    store = Store(config.storage_path)
    return config, store, Ledger(store, key, config.origin, config.block_interval_s, config.block_max_leaves)


def _active_key(store: Store, device: str) -> bytes | None:
    current = None
    for action, pubkey, _when in store.key_events_for_device(device):
        current = pubkey if action == ACTION_ENROL else (None if pubkey == current else current)
    return current


def enroll(config_path: Path, device: str, pubkey_hex: str) -> int:
    if not valid_device_id(device):
        raise ConfigError("--device %r is not a device id (3-63 of a-z, 0-9 and '-')" % device)
    try:
        pubkey = bytes.fromhex(pubkey_hex)
    except ValueError:
        pubkey = b""
    if len(pubkey) != 32:
        raise ConfigError("--pubkey must be the 64 hex digits printed by `crev gateway init`")
    _config, store, ledger = _open(config_path)
    try:
        active = _active_key(store, device)
        if active == pubkey:
            print("%s is already enrolled with this key" % device)
            return 0
        if active is not None:
            raise ConfigError("%s already has an enrolled key; revoke it first (crev ingest revoke)" % device)
        for _action, other, _pub, _when in store.key_events_for_kid(key_id(pubkey)):
            if other != device:
                raise ConfigError("this key is already enrolled for %s; a key belongs to one device" % other)
        now = time.time()
        with store.transaction():
            ledger.key_event(ACTION_ENROL, device, pubkey, int(now), int(now * 1000))
            ledger.seal(int(now * 1000))
    finally:
        store.close()
    print("enrolled %s (key %s)" % (device, pubkey.hex()))
    return 0


def revoke(config_path: Path, device: str) -> int:
    _config, store, ledger = _open(config_path)
    try:
        active = _active_key(store, device)
        if active is None:
            raise ConfigError("%s has no enrolled key to revoke" % device)
        now = time.time()
        with store.transaction():
            ledger.key_event(ACTION_REVOKE, device, active, int(now), int(now * 1000))
            ledger.seal(int(now * 1000))
    finally:
        store.close()
    print("revoked the key of %s from %d on" % (device, int(now)))
    return 0


def broker_users(config_path: Path, out: Path) -> int:
    config = ingest_config.load(config_path)
    store = Store(config.storage_path)
    try:
        users = write_broker_users(store, out)
    finally:
        store.close()
    print("wrote %s and %s for %d users (%s)" % (out / "passwd", out / "acl", len(users), ", ".join(users)))
    print("device passwords are in %s; copy each to its gateway's password_file" % (out / "passwords"))
    return 0


def run(config_path: Path) -> int:
    config = ingest_config.load(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = IngestService(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()
    return 0


def audit_ledger(config_path: Path) -> tuple[bool, str]:
    config = ingest_config.load(config_path)
    key = load_key(config.ledger_key_path)
    store = Store(config.storage_path)
    try:
        counts = verify_ledger(store, key.public_key, config.origin)
    except Exception as err:  # LedgerError, or a row so broken it cannot be parsed
        return False, "FAIL: %s" % err
    finally:
        store.close()
    return True, "OK: %d leaves, %d blocks, %d readings verified" % (
        counts["leaves"],
        counts["blocks"],
        counts["readings"],
    )
