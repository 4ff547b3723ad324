"""``crev audit ledger --mirror DIR --ledger-key KEY``: the whole-ledger audit of a mirror's copy.

A mirror (``crev audit mirror``) holds the leaves and the tree, not ingest's
rows or its block headers. So this audit checks what the leaves themselves
must satisfy, as ``crev audit ledger`` does for the local store:

1. the checkpoint is signed by the ledger key;
2. every tile and entry bundle hashes to it (crev.tiles);
3. every leaf is deterministic CBOR ``[type, received_ms, data]``;
4. every reading is signed by a key its device had enrolled, not revoked at
   its t1, once per (dev, seq), linked by prev and with the DGC-C values its
   counters give (crev.ledger_readings);
5. the registry and the market's leaves replayed from leaf 0
   (crev.registry_replay), and every lot's grams conserved.

Without block headers, "sealed before the issuance" can only be checked as
"earlier in the ledger": each registry leaf is replayed as if every leaf
before it had been sealed.
"""

from pathlib import Path

from crev import merkle, tiles
from crev.ledger_format import LEAF_KEY_EVENT, LEAF_READING, LedgerFormatError, decode_leaf
from crev.ledger_readings import LedgerReadings
from crev.registry_format import REGISTRY_LEAVES
from crev.registry_replay import RegistryReplay, ReplayError, counts_text
from crev_cli.mirror import MirrorError, open_signed


def audit_mirror(out: Path, ledger_key: bytes) -> tuple[bool, str]:
    """(ok, the one-line report) for the mirror in ``out``."""
    if not (out / tiles.CHECKPOINT).is_file():
        return False, "FAIL: %s has no checkpoint: it is not a mirror (`crev audit mirror` makes one)" % out
    try:
        signed = open_signed((out / tiles.CHECKPOINT).read_bytes(), ledger_key, "the mirror's checkpoint")
    except MirrorError as err:
        return False, "FAIL: %s" % err

    def read(path: str) -> bytes:
        try:
            return (out / path).read_bytes()
        except FileNotFoundError:
            raise tiles.TileError(path, "is missing from the mirror") from None

    def tile(level: int, index: int, width: int) -> bytes:
        return read(merkle.tile_path(level, index, width))

    def entries(index: int, width: int) -> bytes:
        return read(tiles.entries_path(index, width))

    readings = LedgerReadings(ledger_key)
    registry = RegistryReplay(ledger_key)
    try:
        tiles.verify_tree(signed.size, signed.root, tile, entries)
        for bundle in range((signed.size + merkle.TILE_WIDTH - 1) // merkle.TILE_WIDTH):
            width = merkle.tile_width(signed.size, 0, bundle)
            path = tiles.entries_path(bundle, width)
            for offset, leaf in enumerate(tiles.split_entries(entries(bundle, width), width, path)):
                _check_leaf(bundle * merkle.TILE_WIDTH + offset, leaf, readings, registry)
    except tiles.TileError as err:
        return False, "FAIL: %s: %s" % (err.path, err.what)
    except ReplayError as err:
        return False, "FAIL: %s" % err
    problem = registry.lot_conserved()
    if problem:
        return False, "FAIL: registry: %s" % problem
    counts = registry.counts()
    message = "OK (mirror of %s): %d leaves under its checkpoint, %d readings verified (%d gaps)" % (
        signed.origin,
        signed.size,
        readings.readings,
        readings.gaps(),
    )
    if counts["registry_leaves"]:
        message += "; registry replayed: " + counts_text(counts)
    return True, message


def _check_leaf(index: int, leaf: bytes, readings: LedgerReadings, registry: RegistryReplay) -> None:
    try:
        leaf_type, _received_ms, data = decode_leaf(leaf)
    except LedgerFormatError as err:
        raise ReplayError(index, "leaf", err.detail) from err
    if leaf_type == LEAF_READING:
        readings.reading(index, data)
    elif leaf_type == LEAF_KEY_EVENT:
        readings.key_event(index, data)
    elif leaf_type in REGISTRY_LEAVES:
        registry.on_sealed(index)  # no block headers in a mirror: all before it counts as sealed
    registry.on_leaf(index, leaf_type, data, readings.lookup)
