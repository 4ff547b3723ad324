"""Ed25519 keys with two interchangeable backends.

``cryptography`` (OpenSSL) on CPython, the pure RFC 8032 code in
crev.ed25519 everywhere else. Ed25519 signatures are deterministic, so both
backends produce the same bytes; the shared test vectors prove it.
"""

import hashlib

from crev import ed25519 as _pure
from crev.errors import MisuseError

try:
    # Absent on MicroPython, hence the ignore for the firmware type check.
    from cryptography.exceptions import InvalidSignature as _InvalidSignature  # type: ignore[import-not-found,unused-ignore]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # type: ignore[import-not-found,unused-ignore]
        Ed25519PrivateKey as _PrivateKey,
    )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # type: ignore[import-not-found,unused-ignore]
        Ed25519PublicKey as _PublicKey,
    )

    DEFAULT_BACKEND = "cryptography"
except ImportError:  # MicroPython, or CPython without cryptography
    DEFAULT_BACKEND = "pure"

BACKENDS = ("cryptography", "pure") if DEFAULT_BACKEND == "cryptography" else ("pure",)

KID_LENGTH = 8


def key_id(public_key: bytes) -> bytes:
    """SPEC §3: the kid is the first 8 bytes of SHA-256 of the raw public key."""
    if len(public_key) != 32:
        raise MisuseError("an Ed25519 public key is 32 bytes, got %d" % len(public_key))
    return hashlib.sha256(public_key).digest()[:KID_LENGTH]


def _check_backend(backend: str | None) -> str:
    chosen = DEFAULT_BACKEND if backend is None else backend
    if chosen not in BACKENDS:
        raise MisuseError("Ed25519 backend %r is not available here (have %s)" % (chosen, BACKENDS))
    return chosen


class SigningKey:
    """An Ed25519 private key made from a 32-byte seed."""

    def __init__(self, seed: bytes, backend: str | None = None) -> None:
        if len(seed) != 32:
            raise MisuseError("an Ed25519 seed is 32 bytes, got %d" % len(seed))
        self.backend = _check_backend(backend)
        self._seed = bytes(seed)
        if self.backend == "cryptography":
            self._private = _PrivateKey.from_private_bytes(self._seed)
            self.public_key = self._private.public_key().public_bytes_raw()
        else:
            self.public_key = _pure.public_key(self._seed)
        self.kid = key_id(self.public_key)

    def seed_bytes(self) -> bytes:
        """The raw seed, for writing the key file. Handle with care."""
        return self._seed

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        if self.backend == "cryptography":
            return self._private.sign(message)
        return _pure.sign(self._seed, message, self.public_key)


# Public keys already loaded by cryptography: a verifier checks many signatures of one key.
_LOADED = {}  # type: dict


def verify_signature(public_key: bytes, signature: bytes, message: bytes, backend: str | None = None) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``."""
    chosen = _check_backend(backend)
    if len(public_key) != 32 or len(signature) != 64:
        return False
    if chosen == "cryptography":
        try:
            loaded = _LOADED.get(public_key)
            if loaded is None:
                loaded = _PublicKey.from_public_bytes(public_key)
                if len(_LOADED) < 256:
                    _LOADED[public_key] = loaded
            loaded.verify(signature, message)
        except (_InvalidSignature, ValueError):
            return False
        return True
    try:
        _pure.verify(public_key, signature, message)
    except _pure.SignatureError:
        return False
    return True
