"""The ledger's byte formats (SPEC §5), shared by ingest and the offline verifier.

A leaf is the deterministic CBOR ``[type, received_ms, data]``: type 1 a
reading (its COSE bytes), type 2 a key event (a COSE_Sign1 by the ledger key
over ``{0: action, 1: dev, 2: pubkey, 3: time}``), type 3 reserved for gap
notices. A block header ``{0: 1, 1: height, 2: prev_block_hash, 3: tree_size,
4: merkle_root, 5: time_ms}`` is signed by the ledger key; the block hash is
SHA-256 of the signed header bytes.
"""

import hashlib

from crev import cbor
from crev.cose import Sign1
from crev.errors import CrevError, InvalidInput

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
    return cbor.dumps([leaf_type, received_ms, data])


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
