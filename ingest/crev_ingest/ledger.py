"""The ledger (SPEC §5): an RFC 9162 Merkle log under signed, hash-chained blocks.

A leaf is the deterministic CBOR ``[type, received_ms, data]``:
type 1 a reading (its COSE bytes), type 2 a key event (a COSE_Sign1 by the
ledger key over ``{0: action, 1: dev, 2: pubkey, 3: time}``), type 3
reserved for gap notices. Appending costs O(log n): only the frontier of
complete subtrees is kept in memory. The tree is stored as C2SP tlog-tiles
(crev_ingest.store): of the complete nodes a leaf creates, those at tree
levels 0, 8, 16, ... go into their tiles in the same transaction as the
leaf, and the levels between are recomputed from them when read.

Every block header ``{0: 1, 1: height, 2: prev_block_hash, 3: tree_size,
4: merkle_root, 5: time_ms}`` is signed by the ledger key, and also written
as a C2SP tlog-checkpoint signed note.
"""

import base64
import hashlib
import time

from crev import cbor, ledger_format, merkle
from crev.cose import sign1
from crev.keys import SigningKey
from crev.ledger_format import (
    ACTION_ENROL,
    ACTION_REVOKE,
    BLOCK_VERSION,
    LEAF_GAP_NOTICE,
    LEAF_KEY_EVENT,
    LEAF_READING,
    ZERO_HASH,
    LedgerFormatError,
    checkpoint_key_hash,
    checkpoint_text,
    encode_leaf,
    parse_block_header,
)
from crev_ingest.store import Store

__all__ = [
    "ACTION_ENROL",
    "ACTION_REVOKE",
    "LEAF_GAP_NOTICE",
    "LEAF_KEY_EVENT",
    "LEAF_READING",
    "ZERO_HASH",
    "Ledger",
    "encode_leaf",
    "make_checkpoint",
    "parse_block_header",
    "verify_checkpoint",
]


def frontier_from_store(store: Store, size: int) -> merkle.MerkleFrontier:
    """Rebuild the frontier of a stored tree from its complete subtree roots."""
    hashes = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            hashes.append(store.node(level, start >> level))
            start += 1 << level
    return merkle.MerkleFrontier(size, hashes)


def make_checkpoint(key: SigningKey, origin: str, size: int, root: bytes) -> str:
    """A C2SP tlog-checkpoint signed note for (size, root)."""
    body = checkpoint_text(origin, size, root)
    signature = key.sign(body.encode())
    stamp = base64.b64encode(checkpoint_key_hash(origin, key.public_key) + signature).decode()
    return body + "\n\u2014 %s %s\n" % (origin, stamp)


def verify_checkpoint(note: str, origin: str, public_key: bytes) -> tuple[int, bytes]:
    """Check a signed note; return (size, root). Raises ValueError if it does not verify."""
    try:
        size, root = ledger_format.verify_checkpoint(note, origin, public_key)
    except LedgerFormatError as err:
        raise ValueError(err.detail) from err
    return int(size), bytes(root)


class Ledger:
    def __init__(
        self, store: Store, key: SigningKey, origin: str, block_interval_s: float, block_max_leaves: int
    ) -> None:
        self.store = store
        self.key = key
        self.origin = origin
        self.block_interval_s = block_interval_s
        self.block_max_leaves = block_max_leaves
        self.frontier = merkle.MerkleFrontier()
        self.height = -1
        self.last_block_hash = ZERO_HASH
        self.sealed_size = 0
        self.sync()
        self.last_seal = time.monotonic()

    def sync(self) -> None:
        """Catch up with rows other workers (or a rolled-back message) left.

        Call it inside the write transaction: with several workers on one
        database, the store, not this process's memory, says what the tree is.
        """
        size = self.store.leaf_count()
        if size != self.frontier.size:
            self.frontier = frontier_from_store(self.store, size)
        last = self.store.last_block()
        if last is not None and last[0] != self.height:
            self.height, self.last_block_hash, self.sealed_size = last[0], last[1], last[2]

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, leaf_type: int, received_ms: int, data: bytes) -> int:
        """Append a leaf inside the caller's transaction; return its index."""
        leaf = encode_leaf(leaf_type, received_ms, data)
        hashed = merkle.leaf_hash(leaf)
        index = self.frontier.size
        self.store.add_leaf(index, leaf_type, received_ms, leaf, hashed)
        for level, node_index, value in self.frontier.append(hashed):
            if level % merkle.TILE_HEIGHT == 0:
                tile_level, tile_index, _height, position = merkle.node_tile(level, node_index)
                self.store.add_tile_hash(tile_level, tile_index, position, value)
        return index

    def key_event(self, action: int, dev: str, public_key: bytes, when_s: int, received_ms: int) -> int:
        """Sign and append a key event, and record it in the registry."""
        statement = sign1(cbor.dumps({0: action, 1: dev, 2: public_key, 3: when_s}), self.key)
        index = self.append(LEAF_KEY_EVENT, received_ms, statement)
        self.store.add_key_event(index, action, dev, public_key, hashlib.sha256(public_key).digest()[:8], when_s)
        return index

    def due(self) -> bool:
        pending = self.size - self.sealed_size
        if pending <= 0:
            return False
        return pending >= self.block_max_leaves or time.monotonic() - self.last_seal >= self.block_interval_s

    def seal(self, now_ms: int) -> int:
        """Sign a block over the current tree, inside the caller's transaction."""
        root = self.frontier.root()
        height = self.height + 1
        header = {0: BLOCK_VERSION, 1: height, 2: self.last_block_hash, 3: self.size, 4: root, 5: now_ms}
        signed = sign1(cbor.dumps(header), self.key)
        block_hash = hashlib.sha256(signed).digest()
        note = make_checkpoint(self.key, self.origin, self.size, root)
        self.store.add_block(height, signed, block_hash, self.size, root, now_ms, note)
        self.height = height
        self.last_block_hash = block_hash
        self.sealed_size = self.size
        self.last_seal = time.monotonic()
        return height
