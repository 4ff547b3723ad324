"""Key files: a 32-byte Ed25519 seed as 64 hex digits and a newline, mode 0600.

One format serves the three kinds of key (SPEC §7):

- ``device``: a gateway's signing key, written by ``crev gateway init``;
- ``ledger``: ingest's ledger key, written by ``crev ingest init``;
- ``account``: a participant's key, written by ``crev registry keygen``.

Why this module is in the core although the core does no I/O elsewhere: it
is the one piece of file handling that the CPython services (gateway, ingest
and the market) all share, and they import the core but never each other.
It is never flashed to a board: the firmware keeps its key through
``dgc.keystore``, and ``crev provision`` copies only the core modules it
lists. Nothing else in the core imports it, so the rest of the core stays
free of I/O.

Errors::

    KeyFileError   the key file cannot be used; the message is one line for
                   the user that says how to fix it. Each service turns it
                   into its own ConfigError at its boundary.
"""

import os
import stat
from pathlib import Path

from crev.keys import SigningKey

SEED_LENGTH = 32

# CPython's open flags. MicroPython's os has none, hence the ignore for the
# firmware type check; this module never runs there.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # type: ignore[attr-defined,unused-ignore]
_READ_FLAGS = os.O_RDONLY  # type: ignore[attr-defined,unused-ignore]

# kind: (the command that creates the file, why an existing file is kept)
KINDS = {
    "device": (
        "crev gateway init --config FILE",
        "a device keeps its key for life, so it is not replaced (move it away yourself if you really mean to re-key)",
    ),
    "ledger": (
        "crev ingest init --config FILE",
        "the ledger key is never replaced (move it away to start a new ledger)",
    ),
    "account": (
        "crev registry keygen --out FILE",
        "an account key is not replaced; use another file name",
    ),
}


class KeyFileError(Exception):
    """A key file cannot be created or used; ``str(err)`` is one line for the user."""


def _kind(kind: str) -> tuple[str, str]:
    if kind not in KINDS:
        raise ValueError("unknown kind of key %r (have %s)" % (kind, ", ".join(sorted(KINDS))))
    return KINDS[kind]


def create_key(path: "str | os.PathLike[str]", kind: str) -> SigningKey:
    """Write a new random key of ``kind`` to ``path``; never replaces an existing file.

    The file is created with O_EXCL and mode 0600 from the start, and it is
    fsynced, with its directory, before the key is returned: the public key
    printed next is then backed by a file that survives a power cut.
    """
    _command, kept = _kind(kind)
    key_path = Path(path)
    if key_path.exists():
        raise KeyFileError("%s already exists; %s" % (key_path, kept))
    seed = os.urandom(SEED_LENGTH)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KeyFileError("cannot create %s key %s: %s" % (kind, key_path, err.strerror)) from err
    try:
        # O_EXCL: never follow or reuse a file that appeared meanwhile.
        fd = os.open(str(key_path), _CREATE_FLAGS, 0o600)
    except FileExistsError:
        raise KeyFileError("%s already exists; %s" % (key_path, kept)) from None
    except OSError as err:
        raise KeyFileError("cannot create %s key %s: %s" % (kind, key_path, err.strerror)) from err
    try:
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(key_path.parent)
    except OSError as err:
        key_path.unlink(missing_ok=True)  # a half-written key must not be found later
        raise KeyFileError("cannot write %s key %s: %s" % (kind, key_path, err.strerror)) from err
    return SigningKey(seed)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(str(directory), _READ_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(path: "str | os.PathLike[str]", kind: str) -> SigningKey:
    """Read the key of ``kind`` at ``path``.

    Refuses a missing file, anything but 64 hex digits, and a file that its
    group or others may access, each with a KeyFileError that says the fix.
    """
    command, _kept = _kind(kind)
    key_path = Path(path)
    try:
        with open(str(key_path), encoding="ascii", errors="replace") as f:
            # The mode of the file actually opened, not of whatever the name points to later.
            mode = os.fstat(f.fileno()).st_mode
            text = f.read().strip()
    except FileNotFoundError:
        raise KeyFileError("%s key %s not found; create it with `%s`" % (kind, key_path, command)) from None
    except OSError as err:
        raise KeyFileError("cannot read %s key %s: %s" % (kind, key_path, err.strerror)) from err
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != SEED_LENGTH:
        raise KeyFileError("%s key %s is not 64 hex digits; was it edited or truncated?" % (kind, key_path))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError("%s key %s is readable by others; run `chmod 600 %s`" % (kind, key_path, key_path))
    return SigningKey(seed)
