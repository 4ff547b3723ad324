"""The device key file: a 32-byte Ed25519 seed in hex, mode 0600."""

import os
import stat
from pathlib import Path

from crev.keys import SigningKey
from crev_gateway import ConfigError


def create_key(path: Path) -> SigningKey:
    """Write a new random key; refuses to replace an existing one."""
    if path.exists():
        raise ConfigError(
            "%s already exists; a device keeps its key for life, so it is not replaced "
            "(move it away yourself if you really mean to re-key)" % path
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32)
    # O_EXCL: never follow a file that appeared meanwhile; 0600 from the start.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return SigningKey(seed)


def load_signing_key(path: Path) -> SigningKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError("device key %s not found; create it with `crev gateway init --config FILE`" % path) from None
    except OSError as err:
        raise ConfigError("cannot read device key %s: %s" % (path, err.strerror)) from err
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise ConfigError("device key %s is not 64 hex digits; was it edited or truncated?" % path)
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("device key %s is readable by others; run `chmod 600 %s`" % (path, path))
    return SigningKey(seed)
