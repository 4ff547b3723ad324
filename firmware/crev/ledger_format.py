"""The ledger's byte formats (SPEC §5), shared by ingest and the offline verifier.

A leaf is the deterministic CBOR ``[type, received_ms, data]``: type 1 a
reading (its COSE bytes), type 2 a key event (a COSE_Sign1 by the ledger key
over ``{0: action, 1: dev, 2: pubkey, 3: time}``), type 3 reserved for gap
notices. A block header ``{0: 1, 1: height, 2: prev_block_hash, 3: tree_size,
4: merkle_root, 5: time_ms}`` is signed by the ledger key; the block hash is
SHA-256 of the signed header bytes.
"""

import binascii
import hashlib

from crev import cbor
from crev.cose import Sign1
from crev.errors import CrevError, InvalidInput
from crev.keys import verify_signature

LEAF_READING = 1
LEAF_KEY_EVENT = 2
LEAF_GAP_NOTICE = 3
ACTION_ENROL = 1
ACTION_REVOKE = 2
BLOCK_VERSION = 1
ZERO_HASH = bytes(32)

# Block header keys.
B_VERSION = 0
B_HEIGHT = 1
B_PREV = 2
B_SIZE = 3
B_ROOT = 4
B_TIME = 5


class LedgerFormatError(InvalidInput):
    """A block header or key event is not what the ledger key signed."""

    def __init__(self, detail: str) -> None:
        super().__init__("LEDGER_FORMAT", detail)


def encode_leaf(leaf_type: int, received_ms: int, data: bytes) -> bytes:
    """``cbor.dumps([leaf_type, received_ms, data])``, put together directly (verifiers build one per item)."""
    if type(leaf_type) is not int or type(received_ms) is not int or type(data) is not bytes:
        return cbor.dumps([leaf_type, received_ms, data])
    return b"".join((b"\x83", cbor.dumps(leaf_type), cbor.dumps(received_ms), cbor.encode_head(2, len(data)), data))


def decode_leaf(leaf: bytes) -> tuple:
    """``(type, received_ms, data)`` of an encoded leaf. Raises LedgerFormatError."""
    try:
        value = cbor.loads(leaf)
    except CrevError as err:
        raise LedgerFormatError("leaf: %s" % err)
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], int)
        or not isinstance(value[1], int)
        or not isinstance(value[2], bytes)
    ):
        raise LedgerFormatError("a leaf is [type, received_ms, data]")
    return value[0], value[1], value[2]


def leaf_data(leaf: bytes) -> bytes:
    """The data (a reading's COSE_Sign1, say) of an encoded leaf. Raises LedgerFormatError."""
    data = decode_leaf(leaf)[2]  # type: bytes
    return data


def block_hash(signed_header: bytes) -> bytes:
    return hashlib.sha256(signed_header).digest()


def _signed_map(signed: bytes, ledger_key: bytes, what: str) -> dict:
    try:
        envelope = Sign1.from_bytes(signed)
        envelope.verify(ledger_key)
        fields = cbor.loads(envelope.payload)
    except CrevError as err:
        raise LedgerFormatError("%s: %s" % (what, err))
    if not isinstance(fields, dict):
        raise LedgerFormatError("%s is not a map" % what)
    return fields


def parse_block_header(signed: bytes, ledger_key: bytes) -> dict:
    """Verify a signed block header and return its fields. Raises LedgerFormatError."""
    header = _signed_map(signed, ledger_key, "block header")
    if sorted(header) != [0, 1, 2, 3, 4, 5] or header[B_VERSION] != BLOCK_VERSION:
        raise LedgerFormatError("not a version 1 block header")
    for key in (B_HEIGHT, B_SIZE, B_TIME):
        value = header[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LedgerFormatError("block header field %d is not an unsigned integer" % key)
    for key in (B_PREV, B_ROOT):
        if not isinstance(header[key], bytes) or len(header[key]) != 32:
            raise LedgerFormatError("block header field %d is not 32 bytes" % key)
    return header


def parse_key_event(signed: bytes, ledger_key: bytes) -> tuple:
    """Verify a key-event statement; return ``(action, dev, pubkey, time_s)``."""
    event = _signed_map(signed, ledger_key, "key event")
    if sorted(event) != [0, 1, 2, 3]:
        raise LedgerFormatError("a key event has exactly the keys 0..3")
    action, dev, pubkey, when = event[0], event[1], event[2], event[3]
    if action not in (ACTION_ENROL, ACTION_REVOKE) or isinstance(action, bool):
        raise LedgerFormatError("key event action %r is not 1 (enrol) or 2 (revoke)" % (action,))
    if not isinstance(dev, str) or not isinstance(pubkey, bytes) or len(pubkey) != 32:
        raise LedgerFormatError("a key event names a device and a 32-byte public key")
    if not isinstance(when, int) or isinstance(when, bool) or when < 0:
        raise LedgerFormatError("key event time is not an unsigned integer")
    return action, dev, pubkey, when


# ------------------------------------------------------------------ checkpoints


def checkpoint_key_hash(origin: str, public_key: bytes) -> bytes:
    """C2SP signed-note key ID: SHA-256(name || "\\n" || 0x01 || Ed25519 public key)[:4]."""
    return hashlib.sha256(origin.encode() + b"\n\x01" + public_key).digest()[:4]


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """The C2SP tlog-checkpoint body: origin, size and base64 root, one per line."""
    return "%s\n%d\n%s\n" % (origin, size, binascii.b2a_base64(root).decode().strip())


def verify_checkpoint(note: str, origin: str, public_key: bytes) -> tuple:
    """Check a block's checkpoint signed note; return ``(size, root)``.

    It must name ``origin`` and carry a valid signature by the ledger key.
    Raises LedgerFormatError.
    """
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise LedgerFormatError("a checkpoint has a blank line before its signatures")
    lines = body.split("\n")
    if len(lines) < 3 or lines[0] != origin:
        raise LedgerFormatError("the checkpoint's origin is not %r" % origin)
    try:
        size, root = int(lines[1]), binascii.a2b_base64(lines[2])
    except ValueError:
        raise LedgerFormatError("the checkpoint's size or root does not parse")
    wanted = checkpoint_key_hash(origin, public_key)
    for line in signatures.split("\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "\u2014" and parts[1] == origin:
            try:
                blob = binascii.a2b_base64(parts[2])
            except ValueError:
                continue
            if blob[:4] == wanted and verify_signature(public_key, blob[4:], (body + "\n").encode()):
                return size, root
    raise LedgerFormatError("the checkpoint has no valid signature by the ledger key")
