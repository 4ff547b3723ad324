"""The device key: made on the device at first boot, and never sent anywhere.

The 32-byte Ed25519 seed comes from ``os.urandom`` (the chip's hardware
random number generator on ESP32 and RP2040) and is written once, with
write-temp-then-rename, so a power cut cannot leave half a key. Only the
public key is ever printed (on the serial console, where ``crev provision``
reads it back).
"""

from crev.keys import SigningKey

KEY_FILE = "/device.key"


def load_or_create(files: object, random_bytes: object, path: str = KEY_FILE) -> tuple:
    """``(key, created)``: the device key, made now if there was none."""
    try:
        seed = files.read(path)  # type: ignore[attr-defined]
    except OSError:
        seed = b""
    if len(seed) == 32:
        return SigningKey(seed), False
    if seed:
        raise ValueError(
            "%s holds %d bytes, not a 32-byte key; it was not written by this firmware" % (path, len(seed))
        )
    seed = random_bytes(32)  # type: ignore[operator]
    if len(seed) != 32 or seed == bytes(32):
        raise ValueError("the random number generator gave no key")
    files.replace(path, seed)  # type: ignore[attr-defined]
    return SigningKey(seed), True


def announce(key: SigningKey, device: str) -> str:
    """The line the serial console shows, and provisioning parses."""
    return "crev-device %s pubkey %s" % (device, key.public_key.hex())
