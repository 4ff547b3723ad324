"""The witness key file: the 32-byte Ed25519 seed as 64 hex digits and a newline, mode 0600.

The format of crev.keyfile (device, ledger and account keys), written and
read with the same care: created with O_EXCL and mode 0600, fsynced with its
directory before its vkey is printed, refused when others may read it.
"""

import os
import stat
from pathlib import Path

from crev.keys import SigningKey
from crev_witness import ConfigError

SEED_LENGTH = 32


def create_key(path: Path) -> SigningKey:
    """Write a new random witness key; never replaces an existing file."""
    if path.exists():
        raise ConfigError(
            "%s already exists; a witness keeps its key, since logs and auditors trust its vkey "
            "(move it away yourself to start a new witness)" % path
        )
    seed = os.urandom(SEED_LENGTH)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError("%s already exists; a witness keeps its key" % path) from None
    except OSError as err:
        raise ConfigError("cannot create the witness key %s: %s" % (path, err.strerror)) from err
    try:
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        directory = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as err:
        path.unlink(missing_ok=True)  # a half-written key must not be found later
        raise ConfigError("cannot write the witness key %s: %s" % (path, err.strerror)) from err
    return SigningKey(seed)


def load_key(path: Path) -> SigningKey:
    """Read the witness key; a missing, malformed or group/other-readable file is a ConfigError."""
    try:
        with open(str(path), encoding="ascii", errors="replace") as f:
            # The mode of the file actually opened, not of whatever the name points to later.
            mode = os.fstat(f.fileno()).st_mode
            text = f.read().strip()
    except FileNotFoundError:
        raise ConfigError("witness key %s not found; create it with `crev witness init --config FILE`" % path) from None
    except OSError as err:
        raise ConfigError("cannot read the witness key %s: %s" % (path, err.strerror)) from err
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != SEED_LENGTH:
        raise ConfigError("witness key %s is not 64 hex digits; was it edited or truncated?" % path)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("witness key %s is readable by others; run `chmod 600 %s`" % (path, path))
    return SigningKey(seed)
