"""The RFC 9162 Merkle log: hashes, an O(log n) appender, and proofs.

Leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right)
(RFC 9162 §2.1.1). The tree over n leaves splits at the largest power of two
below n, so every complete subtree is aligned: subtree (level j, index i)
covers leaves [i * 2^j, (i + 1) * 2^j). A store keeps those complete nodes;
the proof functions take a lookup ``node(level, index) -> bytes`` and compute
the incomplete right edge themselves, so this module stays free of I/O.
"""

import hashlib

from crev.errors import MisuseError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    NodeLookup = Callable[[int, int], bytes]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


class MerkleFrontier:
    """Appends leaves in O(log n), keeping one root per complete subtree.

    ``frontier`` holds the roots of the complete subtrees that make up the
    tree, largest (leftmost) first; their sizes are the set bits of ``size``.
    """

    def __init__(self, size: int = 0, frontier: list | None = None) -> None:
        self.size = size
        self.frontier = list(frontier or [])
        if len(self.frontier) != bin(size).count("1"):
            raise MisuseError("a frontier has one hash per set bit of the size")

    def append(self, leaf_hash_value: bytes) -> list:
        """Add one leaf; return the complete nodes it created as (level, index, hash)."""
        index = self.size
        created = [(0, index, leaf_hash_value)]
        current = leaf_hash_value
        level = 0
        # Each trailing 1-bit of the old size is a complete subtree to merge with.
        while (index >> level) & 1:
            current = node_hash(self.frontier.pop(), current)
            level += 1
            created.append((level, index >> level, current))
        self.frontier.append(current)
        self.size += 1
        return created

    def root(self) -> bytes:
        if not self.frontier:
            return EMPTY_ROOT
        current = self.frontier[-1]  # type: bytes
        for left in reversed(self.frontier[:-1]):
            current = node_hash(left, current)
        return current


def subtree_root(start: int, end: int, node: "NodeLookup") -> bytes:
    """MTH(D[start:end]) from stored complete nodes (RFC 9162 §2.1.1)."""
    count = end - start
    if count <= 0:
        raise MisuseError("an empty range has no subtree root")
    if count & (count - 1) == 0 and start % count == 0:
        level = 0
        while 1 << level < count:
            level += 1
        return node(level, start >> level)
    k = _split(count)
    return node_hash(subtree_root(start, start + k, node), subtree_root(start + k, end, node))


def root_of(size: int, node: "NodeLookup") -> bytes:
    return EMPTY_ROOT if size == 0 else subtree_root(0, size, node)


def _path(index: int, start: int, end: int, node: "NodeLookup", out: list) -> None:
    # RFC 9162 §2.1.3.1, collected leaf-side first.
    if end - start == 1:
        return
    k = _split(end - start)
    if index < start + k:
        _path(index, start, start + k, node, out)
        out.append(subtree_root(start + k, end, node))
    else:
        _path(index, start + k, end, node, out)
        out.append(subtree_root(start, start + k, node))


def inclusion_path(index: int, size: int, node: "NodeLookup") -> list:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise MisuseError("leaf %d is not in a tree of %d leaves" % (index, size))
    out = []  # type: list[bytes]
    _path(index, 0, size, node, out)
    return out


def _subproof(m: int, start: int, end: int, complete: bool, node: "NodeLookup", out: list) -> None:
    # RFC 9162 §2.1.4.1, SUBPROOF(m, D[start:end], b), collected leaf-side first.
    n = end - start
    if m == n:
        if not complete:
            out.append(subtree_root(start, end, node))
        return
    k = _split(n)
    if m <= k:
        _subproof(m, start, start + k, complete, node, out)
        out.append(subtree_root(start + k, end, node))
    else:
        _subproof(m - k, start + k, end, False, node, out)
        out.append(subtree_root(start, start + k, node))


def consistency_path(old_size: int, new_size: int, node: "NodeLookup") -> list:
    """The proof that the tree of ``old_size`` leaves is a prefix of ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise MisuseError("consistency needs 0 <= old size <= new size")
    out = []  # type: list[bytes]
    if 0 < old_size < new_size:
        _subproof(old_size, 0, new_size, True, node, out)
    return out


def verify_inclusion(leaf: bytes, index: int, size: int, path: list, root: bytes) -> bool:
    """RFC 9162 §2.1.3.2 with ``leaf`` the leaf hash."""
    if not 0 <= index < size:
        return False
    fn = index
    sn = size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, path: list, old_root: bytes, new_root: bytes) -> bool:
    """RFC 9162 §2.1.4.2."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path and old_root == EMPTY_ROOT
    if old_size & (old_size - 1) == 0:
        path = [old_root] + list(path)
    if not path:
        return False
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = path[0]
    sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# C2SP tlog-tiles: the tree stored (and published) as tiles of height 8. The
# tile at tile level L, index N holds up to 256 consecutive hashes of tree
# level 8L, those of the complete subtrees covering leaves from
# N * 256^(L+1) on; the seven tree levels between two tile levels are not
# stored but recomputed from the tile's own hashes.
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
HASH_SIZE = 32


def node_tile(level: int, index: int) -> tuple:
    """Where complete node (level, index) lives: (tile level, tile index, height, offset).

    The node is the root of the 2^height stored hashes from position
    ``offset`` of that tile, so the tile holds it once it is at least
    ``offset + 2^height`` hashes wide.
    """
    tile_level = level // TILE_HEIGHT
    height = level % TILE_HEIGHT
    first = index << height
    return tile_level, first >> TILE_HEIGHT, height, first & (TILE_WIDTH - 1)


def tile_width(size: int, tile_level: int, tile_index: int) -> int:
    """How many hashes tile (tile_level, tile_index) has in the tree of ``size`` leaves: 0 to 256."""
    stored = size >> (TILE_HEIGHT * tile_level)
    start = tile_index << TILE_HEIGHT
    if stored <= start:
        return 0
    return min(TILE_WIDTH, stored - start)


def tile_count(size: int) -> int:
    """The number of tiles, full and partial, of the tree of ``size`` leaves."""
    count = 0
    stored = size
    while stored:
        count += (stored + TILE_WIDTH - 1) >> TILE_HEIGHT
        stored >>= TILE_HEIGHT
    return count


def tile_path(tile_level: int, tile_index: int, width: int = TILE_WIDTH) -> str:
    """The tlog-tiles resource of a tile: ``tile/<L>/<N>[.p/<W>]``, N in 3-digit x-prefixed groups."""
    if not 0 <= tile_level <= 63 or tile_index < 0 or not 1 <= width <= TILE_WIDTH:
        raise MisuseError("no tile at level %d index %d width %d" % (tile_level, tile_index, width))
    groups = ["%03d" % (tile_index % 1000)]
    tile_index //= 1000
    while tile_index:
        groups.append("x%03d" % (tile_index % 1000))
        tile_index //= 1000
    groups.reverse()
    path = "tile/%d/%s" % (tile_level, "/".join(groups))
    return path if width == TILE_WIDTH else path + ".p/%d" % width


def hash_pairs(row: bytes) -> bytes:
    """The next height up inside a tile: each pair of 32-byte hashes hashed, an odd last one dropped."""
    step = 2 * HASH_SIZE
    out = []
    for start in range(0, len(row) - step + 1, step):
        out.append(node_hash(row[start : start + HASH_SIZE], row[start + HASH_SIZE : start + step]))
    return b"".join(out)


def tile_root(data: bytes) -> bytes:
    """The Merkle Tree Hash of a full tile's 256 hashes: the hash it contributes one tile level up."""
    if len(data) != TILE_WIDTH * HASH_SIZE:
        raise MisuseError("only a full tile has a root one tile level up")
    for _ in range(TILE_HEIGHT):
        data = hash_pairs(data)
    return data


# Multi-proofs: the nodes that prove several leaves of one tree at once, each
# carried once. Walking the tree from the root, depth first and left before
# right, every subtree that holds none of the proven leaves contributes its
# root (MTH of its range, RFC 9162 §2.1.1), in that order; every subtree that
# holds some is recomputed from below. One leaf's multi-proof holds the nodes
# of its RFC 9162 audit path, in the walk's order.


def _first_at_or_after(indices: list, lo: int, hi: int, value: int) -> int:
    while lo < hi:
        mid = (lo + hi) >> 1
        if indices[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _multi_nodes(indices: list, lo: int, hi: int, start: int, end: int, node: "NodeLookup", out: list) -> None:
    if lo == hi:
        out.append(subtree_root(start, end, node))
        return
    if end - start == 1:
        return
    k = _split(end - start)
    mid = _first_at_or_after(indices, lo, hi, start + k)
    _multi_nodes(indices, lo, mid, start, start + k, node, out)
    _multi_nodes(indices, mid, hi, start + k, end, node, out)


def multiproof(indices: list, size: int, node: "NodeLookup") -> list:
    """The multi-proof of the leaves ``indices`` (ascending, distinct) in the tree of ``size`` leaves."""
    for i in range(len(indices)):
        if not 0 <= indices[i] < size or (i and indices[i] <= indices[i - 1]):
            raise MisuseError("a multi-proof takes distinct ascending leaf indices below the tree size")
    out = []  # type: list[bytes]
    if indices:
        _multi_nodes(indices, 0, len(indices), 0, size, node, out)
    return out


class MissingNode(Exception):
    """A multi-proof ran out of nodes: the one over leaves [start, end) is lacking."""

    def __init__(self, start: int, end: int) -> None:
        Exception.__init__(self, start, end)
        self.start = start
        self.end = end


def describe_range(start: int, end: int) -> str:
    """A tree node named by its level and index when it is complete, else by its leaves."""
    count = end - start
    if count & (count - 1) == 0 and start % count == 0:
        level = 0
        while 1 << level < count:
            level += 1
        return "node (level %d, index %d)" % (level, start >> level)
    return "the node over leaves %d..%d" % (start, end - 1)


def _multi_root(indices: list, hashes: list, lo: int, hi: int, start: int, end: int, nodes: bytes, at: list) -> bytes:
    if lo == hi:
        offset = at[0]
        if offset + HASH_SIZE > len(nodes):
            raise MissingNode(start, end)
        at[0] = offset + HASH_SIZE
        return nodes[offset : offset + HASH_SIZE]
    if end - start == 1:
        found = hashes[lo]  # type: bytes
        return found
    k = _split(end - start)
    mid = _first_at_or_after(indices, lo, hi, start + k)
    left = _multi_root(indices, hashes, lo, mid, start, start + k, nodes, at)
    return node_hash(left, _multi_root(indices, hashes, mid, hi, start + k, end, nodes, at))


def multiproof_root(indices: list, hashes: list, size: int, nodes: bytes) -> tuple:
    """``(root, bytes of nodes used)`` from leaf hashes at ``indices`` (ascending, distinct, below ``size``).

    ``nodes`` is the multi-proof as one byte string, the 32-byte hashes one
    after another. Raises MissingNode when it ends before the proof does; a
    caller compares the root with the signed one and the count with the
    length, since nodes left over are not part of the proof.
    """
    if not indices or size <= indices[-1]:
        raise MisuseError("a multi-proof proves at least one leaf of the tree")
    at = [0]
    root = _multi_root(indices, hashes, 0, len(indices), 0, size, nodes, at)
    return root, at[0]
