"""``crev ingest init|enroll|revoke|run`` and ``crev audit ledger``."""

import logging
import re
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from crev import note
from crev.keys import key_id
from crev.reading import valid_device_id
from crev.registry_replay import counts_text
from crev_ingest import ConfigError
from crev_ingest import config as ingest_config
from crev_ingest.audit import AuditState, verify_ledger
from crev_ingest.broker import write_broker_users
from crev_ingest.export import ExportSummary, export_configured
from crev_ingest.grants import grants_sql
from crev_ingest.keyfile import create_key, load_key
from crev_ingest.ledger import ACTION_ENROL, ACTION_REVOKE, Ledger
from crev_ingest.service import IngestService
from crev_ingest.store import SCHEMA_VERSION, Store, open_configured

if TYPE_CHECKING:
    import uvicorn


def init(config_path: Path, print_grants: bool = False, role: str = "crev_app") -> int:
    config = ingest_config.load(config_path)
    if print_grants:
        return _print_grants(config, role)
    # The store first: a database that cannot be reached must not leave a key behind that blocks a retry.
    store = Store(config.store_location)  # creates the schema, or brings an older one up to date
    store.close()
    key = create_key(config.ledger_key_path)
    print("store   %s (schema version %d)" % (store.db.label, SCHEMA_VERSION))
    print("ledger  %s" % config.origin)
    print("pubkey  %s" % key.public_key.hex())
    if note.valid_key_name(config.origin):  # C2SP verifier key, for witnesses' [[log]] vkey (SPEC §11)
        print("vkey    %s" % note.VerifierKey(config.origin, 0x01, key.public_key).vkey())
    print("key     %s (mode 0600; auditors need only the public key above)" % config.ledger_key_path)
    return 0


def _print_grants(config: ingest_config.IngestConfig, role: str) -> int:
    if config.storage_url is None:
        raise ConfigError("--print-grants is for PostgreSQL: [storage] url in %s names none" % config.path)
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ConfigError("--role must be a plain PostgreSQL role name (a-z, 0-9, _), got %r" % role)
    database = urlsplit(config.storage_url).path.lstrip("/") or "postgres"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", database):
        raise ConfigError("the database name %r needs quoting; grant by hand" % database)
    print(grants_sql(database, role), end="")
    return 0


def _open(config_path: Path) -> tuple[ingest_config.IngestConfig, Store, Ledger]:
    config = ingest_config.load(config_path)
    key = load_key(config.ledger_key_path)
    store = Store(config.store_location)
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
    store = Store(config.store_location)
    try:
        users = write_broker_users(store, out)
    finally:
        store.close()
    print("wrote %s and %s for %d users (%s)" % (out / "passwd", out / "acl", len(users), ", ".join(users)))
    print("device passwords are in %s; copy each to its gateway's password_file" % (out / "passwords"))
    return 0


def publish(config_path: Path, out: Path) -> int:
    from crev_ingest.publish import publish as publish_tiles

    config = ingest_config.load(config_path)
    store = open_configured(config)
    try:
        done = publish_tiles(store, out)
    finally:
        store.close()
    print(
        "published %s: tree size %d (block %d); %d new tiles, %d new entry bundles, and the checkpoint"
        % (out, done.size, done.height, done.tiles_written, done.bundles_written)
    )
    return 0


def run(config_path: Path) -> int:
    config = ingest_config.load(config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = IngestService(config)
    dashboard = start_dashboard(config) if config.dashboard_listen else None

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()
        if dashboard is not None:
            dashboard.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()
    return 0


def start_dashboard(config: ingest_config.IngestConfig) -> "uvicorn.Server":
    """The dashboard on its own thread; ingest's loop stays synchronous."""
    import threading

    import uvicorn

    from crev_ingest.dashboard.app import create_app

    app = create_app(config)  # reads the token now: a bad token file stops the start
    assert config.dashboard_listen is not None
    host, port = config.dashboard_listen
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, name="dashboard", daemon=True).start()
    logging.getLogger("crev.ingest").info("dashboard on http://%s:%d/", host, port)
    return server


def audit_ledger(config_path: Path, state_path: Path | None = None, full: bool = False) -> tuple[bool, str]:
    """Verify the whole ledger, or with a state file only what came after the last run."""
    config = ingest_config.load(config_path)
    key = load_key(config.ledger_key_path)
    if config.storage_url is None and not config.storage_path.exists():
        raise ConfigError("no ledger at %s (storage.path in %s)" % (config.storage_path, config_path))
    since = None
    if state_path is not None and state_path.exists() and not full:
        try:
            since = AuditState.load(state_path)
        except ValueError as err:
            raise ConfigError("%s; remove it or pass --full" % err) from err
        if since.origin != config.origin:
            raise ConfigError("%s is the state of ledger %s, not %s" % (state_path, since.origin, config.origin))
    store = Store(config.store_location)
    try:
        counts, state = verify_ledger(store, key.public_key, config.origin, since, config.reconciliation)
    except Exception as err:  # LedgerError, or a row so broken it cannot be parsed
        return False, "FAIL: %s" % err
    finally:
        store.close()
    if state_path is not None and state is not None:
        state.save(state_path)
    scope = "full" if since is None else "since block %d" % since.height
    message = "OK (%s): %d leaves, %d blocks, %d readings verified" % (
        scope,
        counts["leaves"],
        counts["blocks"],
        counts["readings"],
    )
    if "registry_leaves" in counts:
        message += "; registry replayed: " + counts_text(counts)
    return True, message


def export(config_path: Path, device: str, from_s: int, to_s: int, out: Path) -> ExportSummary:
    return export_configured(config_path, device, from_s, to_s, out)
