"""The ledger key file: a 32-byte Ed25519 seed in hex, mode 0600."""

import os
import stat
from pathlib import Path

from crev.keys import SigningKey
from crev_ingest import ConfigError


def create_key(path: Path) -> SigningKey:
    if path.exists():
        raise ConfigError(
            "%s already exists; the ledger key is never replaced (move it away to start a new ledger)" % path
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return SigningKey(seed)


def load_key(path: Path) -> SigningKey:
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        raise ConfigError("ledger key %s not found; create it with `crev ingest init --config FILE`" % path) from None
    except (OSError, ValueError) as err:
        raise ConfigError("ledger key %s cannot be read: %s" % (path, err)) from err
    if len(seed) != 32:
        raise ConfigError("ledger key %s is not 64 hex digits" % path)
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("ledger key %s is readable by others; run `chmod 600 %s`" % (path, path))
    return SigningKey(seed)
