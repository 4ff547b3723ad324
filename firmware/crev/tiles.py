"""C2SP tlog-tiles resources and their verification against a checkpoint, without I/O.

A log published as tlog-tiles (SPEC §11) is three kinds of resource:

- ``checkpoint``: the signed note of the tree's size and root;
- ``tile/<L>/<N>[.p/<W>]``: the hash tiles (crev.merkle has their layout);
- ``tile/entries/<N>[.p/<W>]``: the entry bundles, 256 leaves each, every
  leaf as a big-endian 16-bit length and its bytes.

verify_tree checks that the tiles and entry bundles of a tree of ``size``
leaves are the ones its ``root`` commits to. It reads them through the
caller's lookups (a mirror fetches or opens files; this module does
neither), top-down, so that the first resource that does not hash to what
is already authenticated above it is named:

1. the root is recomputed from the tiles at the right edge of the tree (the
   partial ones: every full tile is summed up one tile level higher);
2. each full tile must hash to its hash one tile level up;
3. each entry bundle's leaves must hash to its level-0 tile.

If step 1 fails, the edge tile that disagrees with what is below it is
named; if none does, the tiles and entries agree with each other and the
checkpoint is what they do not match.
"""

from crev import merkle
from crev.errors import InvalidInput

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    TileLookup = Callable[[int, int, int], bytes]  # (tile level, tile index, width) -> the tile's bytes
    EntriesLookup = Callable[[int, int], bytes]  # (bundle index, width) -> the bundle's bytes
    KnownPath = Callable[[str], bool]

CHECKPOINT = "checkpoint"
ENTRIES = "entries"
MAX_ENTRY = 0xFFFF  # an entry's length is 16 bits
MAX_TILE_LEVEL = 63
# The longest resource path: level 63, a 64-bit index in 7 groups, ".p/255".
_MAX_PATH = 64


class TileError(InvalidInput):
    """A tile, entry bundle or checkpoint does not hash to what it must; ``path`` names it."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__("BAD_TILE", "%s: %s" % (path, detail))
        self.path = path
        self.what = detail


def entries_path(index: int, width: int = merkle.TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``, N encoded as for the hash tiles."""
    return "tile/entries/" + merkle.tile_path(0, index, width)[len("tile/0/") :]


def parse_path(path: str) -> "tuple | None":
    """``("checkpoint",)``, ``(level, index, width)`` or ``("entries", index, width)``; None if not one.

    Only the canonical encoding is a resource: "x001/234", not "001/234" or
    "x000/234", so one tile has one path (and one cache entry).
    """
    if path == CHECKPOINT:
        return (CHECKPOINT,)
    if len(path) > _MAX_PATH or not path.startswith("tile/"):
        return None
    parts = path[len("tile/") :].split("/")
    if len(parts) < 2:
        return None
    kind = parts[0]
    width = merkle.TILE_WIDTH
    if len(parts) >= 3 and parts[-2].endswith(".p"):
        width_text = parts[-1]
        if not width_text.isdigit() or width_text[0] == "0" or not 1 <= int(width_text) < merkle.TILE_WIDTH:
            return None
        width = int(width_text)
        parts = parts[:-1]
        parts[-1] = parts[-1][: -len(".p")]
    index = 0
    for group in parts[1:-1]:
        if len(group) != 4 or group[0] != "x" or not group[1:].isdigit():
            return None
        index = index * 1000 + int(group[1:])
    last = parts[-1]
    if len(last) != 3 or not last.isdigit():
        return None
    index = index * 1000 + int(last)
    if kind == ENTRIES:
        return (ENTRIES, index, width) if entries_path(index, width) == path else None
    if not kind.isdigit() or int(kind) > MAX_TILE_LEVEL:
        return None
    level = int(kind)
    return (level, index, width) if merkle.tile_path(level, index, width) == path else None


def encode_entries(leaves: list) -> bytes:
    """An entry bundle of ``leaves``. Raises TileError if one is longer than 16 bits can say."""
    parts = []
    for leaf in leaves:
        if len(leaf) > MAX_ENTRY:
            raise TileError(ENTRIES, "a leaf of %d bytes is more than an entry bundle holds" % len(leaf))
        parts.append(len(leaf).to_bytes(2, "big") + leaf)
    return b"".join(parts)


def split_entries(data: bytes, count: int, path: str = ENTRIES) -> list:
    """The ``count`` leaves of an entry bundle. Raises TileError (naming ``path``) if it holds other than that."""
    leaves = []  # type: list[bytes]
    at = 0
    while at < len(data):
        if len(leaves) == count:
            raise TileError(path, "has bytes after its %d entries" % count)
        if at + 2 > len(data):
            raise TileError(path, "entry %d is cut short" % len(leaves))
        length = int.from_bytes(data[at : at + 2], "big")
        if at + 2 + length > len(data):
            raise TileError(path, "entry %d is cut short" % len(leaves))
        leaves.append(bytes(data[at + 2 : at + 2 + length]))
        at += 2 + length
    if len(leaves) != count:
        raise TileError(path, "holds %d entries, not %d" % (len(leaves), count))
    return leaves


def _sized(tile: "TileLookup", level: int, index: int, width: int) -> bytes:
    data = tile(level, index, width)
    if len(data) != width * merkle.HASH_SIZE:
        raise TileError(
            merkle.tile_path(level, index, width),
            "is %d bytes; a tile of %d hashes is %d" % (len(data), width, width * merkle.HASH_SIZE),
        )
    return data


def node_lookup(size: int, tile: "TileLookup") -> "Callable[[int, int], bytes]":
    """merkle's ``node(level, index)`` for the tree of ``size`` leaves, from its tiles.

    A node of tree level 8L + h is the hash of 2^h consecutive hashes of a
    tile at tile level L, read at the width that tile has at ``size``.
    """

    def node(level: int, index: int) -> bytes:
        tile_level, tile_index, height, offset = merkle.node_tile(level, index)
        width = merkle.tile_width(size, tile_level, tile_index)
        if offset + (1 << height) > width:
            raise TileError(merkle.tile_path(tile_level, tile_index), "the tree of %d leaves has no such node" % size)
        data = _sized(tile, tile_level, tile_index, width)
        row = data[offset * merkle.HASH_SIZE : (offset + (1 << height)) * merkle.HASH_SIZE]
        for _ in range(height):
            row = merkle.hash_pairs(row)
        return row

    return node


def tile_levels(size: int) -> int:
    """How many tile levels the tree of ``size`` leaves has (0 for the empty tree)."""
    levels = 0
    while size >> (merkle.TILE_HEIGHT * levels):
        levels += 1
    return levels


def _tile_count(size: int, level: int) -> int:
    return ((size >> (merkle.TILE_HEIGHT * level)) + merkle.TILE_WIDTH - 1) >> merkle.TILE_HEIGHT


def resources(size: int) -> list:
    """Every tile and entry bundle of the tree of ``size`` leaves, as ``(level or "entries", index, width)``."""
    out = []  # type: list[tuple]
    for level in range(tile_levels(size)):
        for index in range(_tile_count(size, level)):
            out.append((level, index, merkle.tile_width(size, level, index)))
    for index in range(_tile_count(size, 0)):
        out.append((ENTRIES, index, merkle.tile_width(size, 0, index)))
    return out


def resource_path(resource: tuple) -> str:
    """The path of a resource as ``resources`` and ``parse_path`` give it."""
    if resource[0] == CHECKPOINT:
        return CHECKPOINT
    if resource[0] == ENTRIES:
        return entries_path(resource[1], resource[2])
    return merkle.tile_path(resource[0], resource[1], resource[2])


def _leaf_hashes(entries: "EntriesLookup", index: int, width: int) -> bytes:
    path = entries_path(index, width)
    return b"".join(merkle.leaf_hash(leaf) for leaf in split_entries(entries(index, width), width, path))


def _first_difference(a: bytes, b: bytes) -> int:
    """The first hash position where two rows of hashes differ."""
    position = 0
    while (
        a[position * merkle.HASH_SIZE : (position + 1) * merkle.HASH_SIZE]
        == (b[position * merkle.HASH_SIZE : (position + 1) * merkle.HASH_SIZE])
    ):
        position += 1
    return position


def _row_from_below(tile: "TileLookup", entries: "EntriesLookup", level: int, index: int, width: int) -> bytes:
    """The hashes of tile (level, index) recomputed from the level below it (the entries below level 0)."""
    if level == 0:
        return _leaf_hashes(entries, index, width)
    first = index * merkle.TILE_WIDTH
    return b"".join(
        merkle.tile_root(_sized(tile, level - 1, first + position, merkle.TILE_WIDTH)) for position in range(width)
    )


def _blame_edge(size: int, tile: "TileLookup", entries: "EntriesLookup") -> TileError:
    """The root did not match: the edge tile that disagrees with what is below it, else the checkpoint."""
    for level in range(tile_levels(size) - 1, -1, -1):
        index = (size >> (merkle.TILE_HEIGHT * level)) >> merkle.TILE_HEIGHT
        width = merkle.tile_width(size, level, index)
        if not 0 < width < merkle.TILE_WIDTH:
            continue
        data = _sized(tile, level, index, width)
        expected = _row_from_below(tile, entries, level, index, width)
        if data != expected:
            position = _first_difference(data, expected)
            below = (
                "its entry bundle" if level == 0 else merkle.tile_path(level - 1, index * merkle.TILE_WIDTH + position)
            )
            return TileError(
                merkle.tile_path(level, index, width),
                "hash %d is not that of %s, and the tree's root is not the checkpoint's" % (position, below),
            )
    return TileError(
        CHECKPOINT,
        "the tiles and entry bundles agree with each other but hash to a root other than the checkpoint's (size %d)"
        % size,
    )


def verify_tree(
    size: int, root: bytes, tile: "TileLookup", entries: "EntriesLookup", known: "KnownPath | None" = None
) -> None:
    """Check every tile and entry bundle of the tree of ``size`` leaves against ``root``. Raises TileError.

    ``known(path)`` is True for a resource verified already, under an
    earlier checkpoint of the same log: a known tile is still checked
    against its parent when the parent is new, but what lies below two known
    resources is not read again. So a mirror brought up to date reads only
    what is new, and the edges where it meets what it kept.
    """
    if size == 0:
        if root != merkle.EMPTY_ROOT:
            raise TileError(CHECKPOINT, "the empty tree's root is SHA-256 of nothing")
        return
    is_known = known if known is not None else (lambda path: False)
    if merkle.root_of(size, node_lookup(size, tile)) != root:
        raise _blame_edge(size, tile, entries)
    for level in range(tile_levels(size) - 1, 0, -1):
        for index in range(_tile_count(size, level)):
            width = merkle.tile_width(size, level, index)
            parent_path = merkle.tile_path(level, index, width)
            parent = None
            for position in range(width):
                child = index * merkle.TILE_WIDTH + position
                child_path = merkle.tile_path(level - 1, child)
                if is_known(parent_path) and is_known(child_path):
                    continue
                if parent is None:
                    parent = _sized(tile, level, index, width)
                hashed = merkle.tile_root(_sized(tile, level - 1, child, merkle.TILE_WIDTH))
                if hashed != parent[position * merkle.HASH_SIZE : (position + 1) * merkle.HASH_SIZE]:
                    raise TileError(child_path, "does not hash to hash %d of %s" % (position, parent_path))
    for index in range(_tile_count(size, 0)):
        width = merkle.tile_width(size, 0, index)
        tile_path = merkle.tile_path(0, index, width)
        bundle_path = entries_path(index, width)
        if is_known(tile_path) and is_known(bundle_path):
            continue
        hashes = _leaf_hashes(entries, index, width)
        stored = _sized(tile, 0, index, width)
        if hashes != stored:
            position = _first_difference(hashes, stored)
            raise TileError(
                bundle_path,
                "entry %d (leaf %d) does not hash to hash %d of %s"
                % (position, index * merkle.TILE_WIDTH + position, position, tile_path),
            )


def covered(size: int, resource: tuple) -> bool:
    """Whether the tree of ``size`` leaves has ``resource`` (a tile or bundle no wider than it has there)."""
    kind, index, width = resource
    level = 0 if kind == ENTRIES else kind  # type: int
    has = 1 <= width <= merkle.tile_width(size, level, index)  # type: bool
    return has
