"""The device key file (crev.keyfile), with its errors as the gateway's ConfigError."""

from pathlib import Path

from crev import keyfile
from crev.keys import SigningKey
from crev_gateway import ConfigError


def create_key(path: Path) -> SigningKey:
    """Write a new random device key; refuses to replace an existing one."""
    try:
        return keyfile.create_key(path, "device")
    except keyfile.KeyFileError as err:
        raise ConfigError(str(err)) from err


def load_signing_key(path: Path) -> SigningKey:
    """Read the device key; a missing, malformed or group/other-readable file is a ConfigError."""
    try:
        return keyfile.load_key(path, "device")
    except keyfile.KeyFileError as err:
        raise ConfigError(str(err)) from err
