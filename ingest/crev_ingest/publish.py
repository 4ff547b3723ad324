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

from crev import merkle
from crev_ingest import ConfigError
from crev_ingest.store import Store
from crev_ingest.witnessing import cosigned_checkpoint

MAX_ENTRY = 0xFFFF


@dataclass
class Published:
    size: int
    height: int
    tiles_written: int
    bundles_written: int


def entries_path(index: int, width: int = merkle.TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``, N encoded as for the hash tiles."""
    return "tile/entries/" + merkle.tile_path(0, index, width)[len("tile/0/") :]


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
        latest = store.last_block()
        if latest is None:
            raise ConfigError("the ledger has no sealed block yet: nothing to publish")
        height, _hash, size = latest
        checkpoint = cosigned_checkpoint(store, height)
        tiles = bundles = 0
        level = 0
        while size >> (merkle.TILE_HEIGHT * level):
            index = 0
            while True:
                width = merkle.tile_width(size, level, index)
                if not width:
                    break
                relative = merkle.tile_path(level, index, width)
                if not (out / relative).exists():
                    _write(out, relative, store.tile(level, index, width))
                    tiles += 1
                index += 1
            level += 1
        for index in range((size + merkle.TILE_WIDTH - 1) // merkle.TILE_WIDTH):
            width = min(merkle.TILE_WIDTH, size - index * merkle.TILE_WIDTH)
            relative = entries_path(index, width)
            if (out / relative).exists():
                continue
            parts = []
            for leaf_idx in range(index * merkle.TILE_WIDTH, index * merkle.TILE_WIDTH + width):
                leaf = store.leaf(leaf_idx)
                if len(leaf) > MAX_ENTRY:
                    raise ConfigError("leaf %d is %d bytes, more than an entry bundle holds" % (leaf_idx, len(leaf)))
                parts.append(len(leaf).to_bytes(2, "big") + leaf)
            _write(out, relative, b"".join(parts))
            bundles += 1
        _write(out, "checkpoint", checkpoint.encode())
    finally:
        store.db.execute("COMMIT")
    return Published(size, height, tiles, bundles)
