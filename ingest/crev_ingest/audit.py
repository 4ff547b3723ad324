"""``crev audit ledger``: recompute the whole local ledger and compare.

Checks, in order, and names the first row that fails:
1. every leaf: its hash recomputed from its stored bytes, its type and time;
2. every stored Merkle tile (C2SP tlog-tiles, crev_ingest.store), rebuilt
   by appending the leaves again: each full tile when it fills, the partial
   tiles at the end, and that no other tile row exists;
3. every block: signature by the ledger key, fields, link to the previous
   block's hash, its tree size and root against the recomputed tree, and
   its checkpoint note;
4. every reading row and key-event row against the leaf it claims;
5. every time-series row against the reading it came from;
6. the registry replayed from leaf 0 (crev_ingest.registry_audit).

Given the state of an earlier successful run (the last block it verified),
it checks that this block and the tree under it are unchanged, then only
what came after: the leaves, tiles, blocks and rows added since.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from crev import cbor, merkle, reconcile
from crev.errors import CrevError
from crev.ledger_format import (
    LEAF_KEY_EVENT,
    LEAF_READING,
    ZERO_HASH,
    LedgerFormatError,
    leaf_data,
    parse_block_header,
    parse_key_event,
)
from crev.reading import Reading
from crev.registry_format import generation_entries
from crev_ingest import LedgerError
from crev_ingest.ledger import frontier_from_store, verify_checkpoint
from crev_ingest.registry_audit import has_registry, replay_registry
from crev_ingest.store import Store


@dataclass
class AuditState:
    """The last block an audit verified: where the next incremental run starts."""

    origin: str
    height: int
    block_hash: bytes
    tree_size: int
    root: bytes

    def save(self, path: Path) -> None:
        text = json.dumps(
            {
                "origin": self.origin,
                "height": self.height,
                "block_hash": self.block_hash.hex(),
                "tree_size": self.tree_size,
                "root": self.root.hex(),
            }
        )
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text + "\n")
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> "AuditState":
        """Raises ValueError when the file is not a state this command wrote."""
        try:
            raw = json.loads(path.read_text())
            return cls(
                str(raw["origin"]),
                int(raw["height"]),
                bytes.fromhex(raw["block_hash"]),
                int(raw["tree_size"]),
                bytes.fromhex(raw["root"]),
            )
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ValueError("%s is not an audit state file: %s" % (path, err)) from err


def _resume(store: Store, since: AuditState) -> merkle.MerkleFrontier:
    """The verified prefix must be exactly as it was: same block, same tree."""
    row = store.db.execute("SELECT header, tree_size, root FROM blocks WHERE height = ?", (since.height,)).fetchone()
    where = "blocks row height %d" % since.height
    if row is None:
        raise LedgerError("%s: the block verified last time is gone" % where)
    if hashlib.sha256(bytes(row[0])).digest() != since.block_hash:
        raise LedgerError("%s: the signed header differs from the one verified last time" % where)
    if int(row[1]) != since.tree_size or bytes(row[2]) != since.root:
        raise LedgerError("%s: size or root differ from the ones verified last time" % where)
    try:
        frontier = frontier_from_store(store, since.tree_size)
    except KeyError as err:
        raise LedgerError("tiles: %s under the verified tree" % err.args[0]) from None
    if frontier.root() != since.root:
        raise LedgerError("tiles: the stored tree of size %d no longer has the verified root" % since.tree_size)
    return frontier


class _TileCheck:
    """The tiles rebuilt from the recomputed tree, each compared with its stored row."""

    def __init__(self, store: Store, size: int) -> None:
        self.store = store
        # Per tile level, the hashes so far of its rightmost tile. Resuming at
        # ``size``, they start as the prefix of the stored rows that the
        # verified root already covers.
        self.pending: list[list[bytes]] = []
        tile_level = 0
        while size >> (merkle.TILE_HEIGHT * tile_level):
            idx = size >> (merkle.TILE_HEIGHT * (tile_level + 1))
            width = merkle.tile_width(size, tile_level, idx)
            data = store.tile(tile_level, idx, width) if width else b""
            self.pending.append([data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)])
            tile_level += 1

    def add(self, level: int, index: int, value: bytes) -> None:
        """One complete node of the recomputed tree; only tile levels are stored."""
        if level % merkle.TILE_HEIGHT:
            return
        tile_level, idx, _height, _position = merkle.node_tile(level, index)
        if tile_level == len(self.pending):
            self.pending.append([])
        hashes = self.pending[tile_level]
        hashes.append(value)
        if len(hashes) == merkle.TILE_WIDTH:
            self._compare(tile_level, idx, hashes)
            self.pending[tile_level] = []

    def finish(self, size: int) -> None:
        for tile_level, hashes in enumerate(self.pending):
            if hashes:
                self._compare(tile_level, size >> (merkle.TILE_HEIGHT * (tile_level + 1)), hashes)
        stored, expected = self.store.tile_count(), merkle.tile_count(size)
        if stored != expected:
            raise LedgerError("tiles: %d rows where the tree of %d leaves has %d" % (stored, size, expected))

    def _compare(self, tile_level: int, idx: int, hashes: list[bytes]) -> None:
        row = self.store.tile_row(tile_level, idx)
        if row is None:
            raise LedgerError("tiles row level %d idx %d width %d: missing" % (tile_level, idx, len(hashes)))
        width, data = row
        where = "tiles row level %d idx %d width %d" % (tile_level, idx, width)
        if width != len(hashes):
            raise LedgerError("%s: the tree recomputed from the leaves makes it %d wide" % (where, len(hashes)))
        for position, value in enumerate(hashes):
            if data[position * merkle.HASH_SIZE : (position + 1) * merkle.HASH_SIZE] != value:
                raise LedgerError("%s: hash %d differs from the tile recomputed from the leaves" % (where, position))


def verify_ledger(
    store: Store,
    ledger_key: bytes,
    origin: str,
    since: AuditState | None = None,
    reconciliation: reconcile.Params | None = None,
) -> tuple[dict[str, int], AuditState | None]:
    """Raise LedgerError at the first problem; return counts and the new state when all holds.

    With ``reconciliation`` (the config's [reconciliation]), the registry replay also checks the
    smart-meter holds (SPEC §13)."""
    db = store.db
    first_height = -1 if since is None else since.height
    blocks = db.execute(
        "SELECT height, header, block_hash, tree_size, root, time_ms, checkpoint FROM blocks WHERE height > ? "
        "ORDER BY height",
        (first_height,),
    ).fetchall()
    store.forget_tiles()
    frontier = merkle.MerkleFrontier() if since is None else _resume(store, since)
    first_leaf = frontier.size
    tiles = _TileCheck(store, frontier.size)
    block_position = 0
    previous_hash = ZERO_HASH if since is None else since.block_hash
    leaf_types: dict[int, tuple[int, bytes]] = {}

    def check_blocks_at(size: int) -> None:
        nonlocal block_position, previous_hash
        while block_position < len(blocks) and blocks[block_position][3] == size:
            height, header, block_hash, tree_size, root, time_ms, note = blocks[block_position]
            where = "blocks row height %d" % height
            try:
                fields = parse_block_header(bytes(header), ledger_key)
            except LedgerFormatError as err:
                raise LedgerError("%s: header signature or format: %s" % (where, err)) from err
            if hashlib.sha256(bytes(header)).digest() != bytes(block_hash):
                raise LedgerError("%s: block_hash is not SHA-256 of the signed header" % where)
            if fields[1] != height or fields[3] != tree_size or fields[4] != bytes(root) or fields[5] != time_ms:
                raise LedgerError("%s: the columns disagree with the signed header" % where)
            if height != first_height + 1 + block_position or fields[2] != previous_hash:
                raise LedgerError("%s: does not link to the previous block" % where)
            if frontier.root() != bytes(root):
                raise LedgerError("%s: root differs from the tree recomputed from the leaves" % where)
            try:
                if verify_checkpoint(str(note), origin, ledger_key) != (tree_size, bytes(root)):
                    raise ValueError("size or root differ")
            except ValueError as err:
                raise LedgerError("%s: checkpoint: %s" % (where, err)) from err
            previous_hash = bytes(block_hash)
            block_position += 1

    check_blocks_at(frontier.size)
    for idx, leaf_type, received_ms, data, stored_hash in db.execute(
        "SELECT idx, type, received_ms, data, leaf_hash FROM leaves WHERE idx >= ? ORDER BY idx", (first_leaf,)
    ):
        where = "leaves row idx %d" % idx
        if idx != frontier.size:
            raise LedgerError("%s: leaf indices are not contiguous" % where)
        data = bytes(data)
        hashed = merkle.leaf_hash(data)
        if hashed != bytes(stored_hash):
            raise LedgerError("%s: leaf_hash is not the hash of the stored leaf" % where)
        try:
            decoded = cbor.loads(data)
        except CrevError as err:
            raise LedgerError("%s: not a deterministic CBOR leaf: %s" % (where, err)) from err
        if not isinstance(decoded, list) or len(decoded) != 3 or decoded[0] != leaf_type or decoded[1] != received_ms:
            raise LedgerError("%s: type or received_ms differ from the leaf bytes" % where)
        leaf_types[idx] = (leaf_type, bytes(decoded[2]))
        for level, index, value in frontier.append(hashed):
            tiles.add(level, index, value)
        check_blocks_at(frontier.size)
    if block_position != len(blocks):
        raise LedgerError("blocks row height %d: tree size beyond the stored leaves" % blocks[block_position][0])
    tiles.finish(frontier.size)

    readings = 0
    for dev, seq, t0, t1, leaf_idx, gs in db.execute(
        "SELECT dev, seq, t0, t1, leaf_idx, gs FROM readings WHERE leaf_idx >= ?", (first_leaf,)
    ):
        where = "readings row (%s, %d)" % (dev, seq)
        leaf = leaf_types.get(leaf_idx)
        if leaf is None or leaf[0] != LEAF_READING:
            raise LedgerError("%s: ledger leaf %d is not a reading" % (where, leaf_idx))
        reading = Reading.from_cose(leaf[1])
        if (reading.dev, reading.seq, reading.t0, reading.t1) != (dev, seq, t0, t1):
            raise LedgerError("%s: columns differ from the signed reading" % where)
        if gs is not None and json.loads(gs) != generation_entries(reading):
            raise LedgerError("%s: the gs column differs from the signed reading" % where)
        readings += 1
    leaf_readings = sum(1 for t, _ in leaf_types.values() if t == LEAF_READING)
    if readings != leaf_readings:
        raise LedgerError("readings: %d rows for %d reading leaves (a row was deleted)" % (readings, leaf_readings))

    for leaf_idx, action, dev, pubkey, kid, when in db.execute(
        "SELECT leaf_idx, action, dev, pubkey, kid, time FROM key_events WHERE leaf_idx >= ?", (first_leaf,)
    ):
        where = "key_events row leaf %d" % leaf_idx
        leaf = leaf_types.get(leaf_idx)
        if leaf is None or leaf[0] != LEAF_KEY_EVENT:
            raise LedgerError("%s: no key-event leaf" % where)
        try:
            statement = parse_key_event(leaf[1], ledger_key)
        except LedgerFormatError as err:
            raise LedgerError("%s: key event signature: %s" % (where, err)) from err
        if statement != (action, dev, bytes(pubkey), when) or hashlib.sha256(bytes(pubkey)).digest()[:8] != bytes(kid):
            raise LedgerError("%s: columns differ from the signed key event" % where)

    for row in db.execute(
        "SELECT s.dev, s.seq, s.gen_mwh, s.import_mwh, s.export_mwh, s.self_mwh, s.demand_mwh, l.data "
        "FROM series s LEFT JOIN readings r ON r.dev = s.dev AND r.seq = s.seq "
        "LEFT JOIN leaves l ON l.idx = r.leaf_idx "
        "WHERE r.leaf_idx IS NULL OR r.leaf_idx >= ?",
        (first_leaf,),
    ):
        dev, seq, *values, leaf = row
        if leaf is None or Reading.from_cose(leaf_data(bytes(leaf))).energies != values:
            raise LedgerError("series row (%s, %d): differs from its reading" % (dev, seq))
    state = since
    if blocks:
        height, _header, block_hash, tree_size, root = blocks[-1][:5]
        state = AuditState(origin, int(height), bytes(block_hash), int(tree_size), bytes(root))
    counts = {"leaves": frontier.size - first_leaf, "blocks": len(blocks), "readings": readings}
    if has_registry(store):
        counts.update(replay_registry(store, ledger_key, reconciliation))
    return counts, state
