"""The ledger key file (crev.keyfile), with its errors as ingest's ConfigError."""

from pathlib import Path

from crev import keyfile
from crev.keys import SigningKey
from crev_ingest import ConfigError


def create_key(path: Path) -> SigningKey:
    """Write a new random ledger key; refuses to replace an existing one."""
    try:
        return keyfile.create_key(path, "ledger")
    except keyfile.KeyFileError as err:
        raise ConfigError(str(err)) from err


def load_key(path: Path) -> SigningKey:
    """Read the ledger key; a missing, malformed or group/other-readable file is a ConfigError."""
    try:
        return keyfile.load_key(path, "ledger")
    except keyfile.KeyFileError as err:
        raise ConfigError(str(err)) from err
