"""``crev ingest publish``: the ledger as C2SP tlog-tiles static files (SPEC §11).

Writes, under the output directory:

- ``checkpoint``: the newest block's checkpoint note, with the witnesses'
  cosignatures kept for it;
- ``tile/<L>/<N>[.p/<W>]``: the hash tiles, as the store keeps them;
- ``tile/entries/<N>[.p/<W>]``: the entry bundles, 256 leaves each, every
  leaf (the bytes of SPEC §5 that the tree hashes) as a big-endian 16-bit
  length and the bytes.

Only what the newest sealed block covers is published, so every file is
proven by the checkpoint. Run again, it writes only what is new: a full
tile or bundle is immutable and kept; a partial one is written at its new
width beside the older ones. Each file is written aside, fsynced and renamed,
and the checkpoint goes last, so a mirror never sees a checkpoint whose
tiles are not there yet.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from crev import tiles
from crev_ingest import ConfigError
from crev_ingest.store import Store
from crev_ingest.witnessing import cosigned_checkpoint


@dataclass
class Published:
    size: int
    height: int
    tiles_written: int
    bundles_written: int


def newest_block(store: Store) -> tuple[int, int] | None:
    """(height, tree size) of the newest sealed block: what is published, and served (tiles_http)."""
    latest = store.last_block()
    return None if latest is None else (latest[0], latest[2])


def body(store: Store, height: int, resource: tuple[object, ...]) -> bytes:
    """The bytes of a tlog-tiles resource (as crev.tiles.parse_path gives it) of the tree of block ``height``.

    ``crev ingest publish`` writes these bytes and the HTTP listener serves
    them, so a mirror of either sees the same files.
    """
    if resource[0] == tiles.CHECKPOINT:
        return cosigned_checkpoint(store, height).encode()
    kind, index, width = resource
    assert isinstance(index, int) and isinstance(width, int)
    if kind == tiles.ENTRIES:
        first = index * 256
        rows = store.db.execute(
            "SELECT idx, data FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx", (first, first + width)
        ).fetchall()
        if [int(r[0]) for r in rows] != list(range(first, first + width)):
            raise ConfigError("the leaves %d to %d are not all stored" % (first, first + width - 1))
        try:
            return tiles.encode_entries([bytes(r[1]) for r in rows])
        except tiles.TileError as err:
            raise ConfigError("leaves %d to %d: %s" % (first, first + width - 1, err.what)) from err
    assert isinstance(kind, int)
    return store.tile(kind, index, width)


def _write(out: Path, relative: str, data: bytes) -> None:
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(target.name + ".tmp")
    with aside.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(aside, target)


def publish(store: Store, out: Path) -> Published:
    """Bring ``out`` up to the newest sealed block (one read snapshot of the store)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out %s is not a directory" % out)
    store.begin_snapshot()
    try:
        latest = newest_block(store)
        if latest is None:
            raise ConfigError("the ledger has no sealed block yet: nothing to publish")
        height, size = latest
        written = {"tiles": 0, "bundles": 0}
        for resource in tiles.resources(size):
            relative = tiles.resource_path(resource)
            if not (out / relative).exists():
                _write(out, relative, body(store, height, resource))
                written["bundles" if resource[0] == tiles.ENTRIES else "tiles"] += 1
        _write(out, tiles.CHECKPOINT, body(store, height, (tiles.CHECKPOINT,)))
    finally:
        store.db.execute("COMMIT")
    return Published(size, height, written["tiles"], written["bundles"])
