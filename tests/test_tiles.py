"""The Merkle tree stored as C2SP tlog-tiles: layout, node lookups, proofs, migration, audit.

The expected tiles are computed here from the leaf hashes alone, straight
from the tlog-tiles definition: the i-th hash of tile n at level l is
MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l]), a partial tile
has floor(s / 256**l) mod 256 hashes, and an empty tile does not exist.
"""

import functools
import hashlib
import random
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import ingest_config
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest

from crev import merkle
from crev.keys import SigningKey
from crev_cli.main import main
from crev_ingest import LedgerError
from crev_ingest.audit import AuditState, verify_ledger
from crev_ingest.database import Database
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store

ORIGIN = "crev.test/ledger"
SNAPSHOT_SIZES = (1, 255, 256, 257, 65535, 65536, 65537)
TileRows = dict[tuple[int, int], tuple[int, bytes]]

# The schema of the tree before tiles: one row per complete node.
OLD_NODES = (
    "CREATE TABLE nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx))"
)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth_over(leaf_hashes: list[bytes]) -> Callable[[int, int], bytes]:
    """MTH(D[start : start + count]) of RFC 6962 §2.1, from the leaf hashes, memoized."""

    @functools.cache
    def mth(start: int, count: int) -> bytes:
        if count == 1:
            return leaf_hashes[start]
        k = 1 << ((count - 1).bit_length() - 1)
        return _sha(b"\x01" + mth(start, k) + mth(start + k, count - k))

    return mth


def expected_tiles(mth: Callable[[int, int], bytes], size: int) -> TileRows:
    tiles: TileRows = {}
    level = 0
    while size // 256**level:
        span = 256**level
        hashes = size // span
        for n in range((hashes + 255) // 256):
            width = min(256, hashes - 256 * n)
            tiles[(level, n)] = (width, b"".join(mth((256 * n + i) * span, span) for i in range(width)))
        level += 1
    return tiles


def stored_tiles(db: "sqlite3.Connection | Database") -> TileRows:
    # Full tiles, and each tile level's partial edge.
    rows = db.execute(
        "SELECT level, idx, width, data FROM tiles UNION ALL SELECT level, idx, width, data FROM tile_edge"
    )
    return {(int(r[0]), int(r[1])): (int(r[2]), bytes(r[3])) for r in rows}


def leaf_hashes_of(db: "sqlite3.Connection | Database") -> list[bytes]:
    return [_sha(b"\x00" + bytes(r[0])) for r in db.execute("SELECT data FROM leaves ORDER BY idx")]


def append_leaves(ledger: Ledger, start: int, stop: int) -> None:
    """Leaves of type 3 (reserved, so nothing else reads them) with distinct data."""
    ledger.store.begin()
    for i in range(start, stop):
        ledger.append(3, i, i.to_bytes(4, "big"))
    ledger.store.commit()


def old_nodes(leaf_hashes: list[bytes]) -> dict[tuple[int, int], bytes]:
    """What the one-row-per-node store held: every complete node the frontier created."""
    frontier = merkle.MerkleFrontier()
    nodes = {}
    for value in leaf_hashes:
        for level, index, node in frontier.append(value):
            nodes[(level, index)] = node
    return nodes


class BigTree:
    def __init__(self, store: Store, snapshots: dict[int, TileRows], leaf_hashes: list[bytes]) -> None:
        self.store = store
        self.snapshots = snapshots
        self.leaf_hashes = leaf_hashes
        self.mth = mth_over(leaf_hashes)
        self.nodes = old_nodes(leaf_hashes)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> BigTree:
    """One ledger grown to 65537 leaves, its tile rows kept at each snapshot size."""
    store = Store(tmp_path_factory.mktemp("big") / "crev.sqlite")
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    snapshots = {}
    size = 0
    for target in SNAPSHOT_SIZES:
        for stop in range(size + 8192, target, 8192):
            append_leaves(ledger, size, stop)
            size = stop
        append_leaves(ledger, size, target)
        size = target
        snapshots[target] = stored_tiles(store.db)
    return BigTree(store, snapshots, leaf_hashes_of(store.db))


# ------------------------------------------------------------ the core helpers


def test_tile_paths_and_widths_follow_the_spec_examples() -> None:
    assert merkle.tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert merkle.tile_path(2, 0, 1) == "tile/2/000.p/1"
    assert merkle.tile_path(1, 1000, 255) == "tile/1/x001/000.p/255"
    for bad in ((64, 0, 256), (0, -1, 256), (0, 0, 0), (0, 0, 257)):
        with pytest.raises(Exception, match="no tile"):
            merkle.tile_path(*bad)
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0 tile of
    # width 112, one full level 1 tile, one partial level 1 tile of width 17, and one partial level 2
    # tile of width 1."
    assert [merkle.tile_width(70000, 0, n) for n in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [merkle.tile_width(70000, 1, n) for n in (0, 1, 2)] == [256, 17, 0]
    assert [merkle.tile_width(70000, 2, n) for n in (0, 1)] == [1, 0]
    assert merkle.tile_width(70000, 3, 0) == 0
    assert merkle.tile_count(70000) == 273 + 1 + 1 + 1 + 1
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1 tile of width 1"
    assert merkle.tile_count(256) == 2 and merkle.tile_width(256, 1, 0) == 1
    assert merkle.tile_count(0) == 0


def test_node_coordinates_within_tiles() -> None:
    assert merkle.node_tile(0, 0) == (0, 0, 0, 0)
    assert merkle.node_tile(0, 513) == (0, 2, 0, 1)
    assert merkle.node_tile(3, 33) == (0, 1, 3, 8)  # leaves 264..271: hashes 8..15 of level-0 tile 1
    assert merkle.node_tile(8, 5) == (1, 0, 0, 5)
    assert merkle.node_tile(15, 3) == (1, 1, 7, 128)  # level-1 hashes 384..511: the second half of tile 1
    assert merkle.node_tile(17, 1) == (2, 0, 1, 2)


# ------------------------------------------------------------ layout


@pytest.mark.parametrize("size", SNAPSHOT_SIZES)
def test_tiles_are_those_of_the_spec(big: BigTree, size: int) -> None:
    stored = big.snapshots[size]
    expected = expected_tiles(big.mth, size)
    assert sorted(stored) == sorted(expected)
    for key, (width, data) in expected.items():
        assert stored[key] == (width, data), "tile level %d index %d" % key
    assert len(stored) == merkle.tile_count(size)


def test_a_full_tile_never_changes_as_the_tree_grows(big: BigTree) -> None:
    final = big.snapshots[SNAPSHOT_SIZES[-1]]
    for size, tiles in big.snapshots.items():
        for key, (width, data) in tiles.items():
            grown_width, grown = final[key]
            if width == 256:
                assert (grown_width, grown) == (width, data)
            else:  # a partial tile is the prefix of every later version of it
                assert grown_width >= width and grown[: 32 * width] == data, (size, key)


@given(st.integers(min_value=0, max_value=1100))
@settings(max_examples=15, deadline=None)
def test_tiles_at_random_sizes(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "crev.sqlite")
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
        append_leaves(ledger, 0, size)
        hashes = leaf_hashes_of(store.db)
        assert stored_tiles(store.db) == expected_tiles(mth_over(hashes), size)
        assert merkle.root_of(size, store.node) == (mth_over(hashes)(0, size) if size else merkle.EMPTY_ROOT)
        store.close()


# ------------------------------------------------------------ node() and proofs


def test_every_node_reads_as_the_old_store_held_it(big: BigTree) -> None:
    store = Store(big.store.path)  # a cold cache
    for (level, index), value in big.nodes.items():
        assert store.node(level, index) == value, (level, index)
    size = len(big.leaf_hashes)
    for level, index in ((0, size), (1, size // 2), (8, 256), (16, 1), (17, 0)):
        with pytest.raises(KeyError):
            store.node(level, index)
    store.close()


def test_proofs_from_tiles_equal_proofs_from_nodes(big: BigTree) -> None:
    rng = random.Random(14)
    sizes = [*SNAPSHOT_SIZES, 2, 3, 8, 9, 511, 512, 513, 4095, 4097, 65280, 65281]
    sizes += [rng.randrange(1, 65538) for _ in range(40)]
    nodes = big.nodes

    def old(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    for size in sizes:
        assert merkle.root_of(size, big.store.node) == merkle.root_of(size, old) == big.mth(0, size)
        for index in {0, size - 1, size // 2, rng.randrange(size)}:
            assert merkle.inclusion_path(index, size, big.store.node) == merkle.inclusion_path(index, size, old)
        for old_size in {1, size - 1, size // 3, rng.randrange(size + 1)}:
            new = merkle.consistency_path(old_size, size, big.store.node)
            assert new == merkle.consistency_path(old_size, size, old)
            old_root = big.mth(0, old_size) if old_size else merkle.EMPTY_ROOT
            assert merkle.verify_consistency(old_size, size, new, old_root, big.mth(0, size))


def test_a_rolled_back_append_leaves_no_stale_tile(tmp_path: Path) -> None:
    store = Store(tmp_path / "crev.sqlite")
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    append_leaves(ledger, 0, 300)
    store.begin()
    store.savepoint()
    ledger.append(3, 0, b"rolled back")
    ledger.append(3, 0, b"rolled back too")
    # Read (and so cached) while the rolled-back rows exist.
    doomed = merkle.inclusion_path(300, 302, store.node)
    assert merkle.verify_inclusion(store.node(0, 300), 300, 302, doomed, ledger.frontier.root())
    store.rollback_to_savepoint()
    with pytest.raises(KeyError):
        store.node(0, 300)
    ledger.sync()
    ledger.append(3, 300, b"kept")
    ledger.append(3, 301, b"kept too")
    store.commit()
    hashes = leaf_hashes_of(store.db)
    assert merkle.root_of(302, store.node) == mth_over(hashes)(0, 302) == ledger.frontier.root()
    assert stored_tiles(store.db) == expected_tiles(mth_over(hashes), 302)
    assert merkle.inclusion_path(300, 302, store.node)[0] == hashes[301] != doomed[0]
    store.close()


def test_a_second_store_sees_what_another_appended(tmp_path: Path) -> None:
    writer = Store(tmp_path / "crev.sqlite")
    reader = Store(tmp_path / "crev.sqlite")
    ledger = Ledger(writer, LEDGER_KEY, ORIGIN, 3600, 10**9)
    append_leaves(ledger, 0, 270)
    assert reader.node(3, 32) == writer.node(3, 32)  # the reader now holds level-0 tile 1, 14 hashes wide
    append_leaves(ledger, 270, 300)
    reader.begin()
    with pytest.raises(LedgerError, match="tiles row level 0 idx 1: cannot take a hash at position 14"):
        reader.add_tile_hash(0, 1, 14, bytes(32))  # where the reader last saw the row end: no longer the end
    assert reader.tile(0, 1, 44) == writer.tile(0, 1, 44)
    # The row grows from what it is now, not from what the reader read before.
    reader.add_tile_hash(0, 1, 44, bytes(32))
    assert reader.tile(0, 1, 45) == writer.tile(0, 1, 44) + bytes(32)
    reader.rollback()
    other = Ledger(reader, LEDGER_KEY, ORIGIN, 3600, 10**9)  # rebuilds its frontier through node()
    assert other.frontier.root() == ledger.frontier.root()
    append_leaves(other, 300, 301)  # and appends on the row the writer grew
    ledger.sync()
    assert ledger.frontier.root() == mth_over(leaf_hashes_of(writer.db))(0, 301)
    writer.close()
    reader.close()


def test_a_full_tile_or_an_out_of_order_hash_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "crev.sqlite")
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    append_leaves(ledger, 0, 257)
    before = stored_tiles(store.db)
    store.begin()
    for position in (256, 255, 0):
        with pytest.raises((LedgerError, sqlite3.IntegrityError)):
            store.add_tile_hash(0, 0, position, bytes(32))
    for position in (0, 2):
        with pytest.raises((LedgerError, sqlite3.IntegrityError)):
            store.add_tile_hash(0, 1, position, bytes(32))
    store.commit()
    assert stored_tiles(store.db) == before
    assert store.tile(0, 1, 1) == before[(0, 1)][1]
    assert store.tile(0, 0, 7) == before[(0, 0)][1][: 7 * 32]
    with pytest.raises(KeyError):
        store.tile(0, 1, 2)
    store.close()


# ------------------------------------------------------------ a ledger of readings: migration and audit


@pytest.fixture(scope="module")
def readings_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """282 leaves through the ingest code path: a full level-0 tile, then partials at levels 0 and 1."""
    directory = tmp_path_factory.mktemp("readings")
    ingest = LocalIngest(directory)
    devices = [Device("dgc-tiles-%03d" % i, SigningKey(bytes([80 + i]) * 32), t1=NOW - 86400) for i in range(2)]
    for device in devices:
        ingest.enroll(device)
    for _ in range(140):
        for device in devices:
            assert ingest.send(device.next()).status == "accepted"
    ingest.store.begin()
    ingest.ledger.seal(NOW * 1000)
    ingest.store.commit()
    ingest.store.close()
    ingest_config(directory, "mqtt://127.0.0.1:1")
    key = directory / "ledger.key"
    key.write_text(LEDGER_KEY.seed_bytes().hex() + "\n")
    key.chmod(0o600)
    return directory


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(exist_ok=True)
    for name in ("ingest.toml", "ledger.key"):
        (target / name).write_bytes((source / name).read_bytes())
    (target / "ledger.key").chmod(0o600)
    with sqlite3.connect(source / "crev.sqlite") as src, sqlite3.connect(target / "crev.sqlite") as dst:
        src.backup(dst)
    return target


def _to_old_format(db_path: Path) -> dict[tuple[int, int], bytes]:
    """Rewrite a store as the previous crev left it: a nodes table, no tiles."""
    with sqlite3.connect(db_path) as db:
        nodes = old_nodes([bytes(r[0]) for r in db.execute("SELECT leaf_hash FROM leaves ORDER BY idx")])
        for table in ("tiles", "tile_edge", "schema_version"):
            db.execute("DROP TABLE %s" % table)
        db.execute(OLD_NODES)
        db.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", [(*k, v) for k, v in nodes.items()])
    return nodes


def _audit(directory: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["audit", "ledger", "--config", str(directory / "ingest.toml"), *extra])
    out, err = capsys.readouterr()
    return code, out + err


def test_the_ingest_path_writes_the_spec_tiles(readings_ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(readings_ledger / "crev.sqlite") as db:
        hashes = leaf_hashes_of(db)
        assert len(hashes) == 282
        assert stored_tiles(db) == expected_tiles(mth_over(hashes), 282)
        assert {k: v[0] for k, v in stored_tiles(db).items()} == {(0, 0): 256, (0, 1): 26, (1, 0): 1}
    code, out = _audit(_copy(readings_ledger, readings_ledger.parent / "untouched"), capsys)
    assert code == 0 and "OK (full): 282 leaves" in out, out


def test_migration_keeps_every_proof_and_root(readings_ledger: Path, tmp_path: Path) -> None:
    directory = _copy(readings_ledger, tmp_path / "old")
    with sqlite3.connect(directory / "crev.sqlite") as db:
        original = stored_tiles(db)
        blocks = [(int(r[0]), bytes(r[1])) for r in db.execute("SELECT tree_size, root FROM blocks ORDER BY height")]
    nodes = _to_old_format(directory / "crev.sqlite")

    def old(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    store = Store(directory / "crev.sqlite")
    assert stored_tiles(store.db) == original
    assert store.db.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'nodes'").fetchone()[0] == 0
    for key, value in nodes.items():
        assert store.node(*key) == value
    for size, root in blocks:
        assert merkle.root_of(size, store.node) == merkle.root_of(size, old) == root
        for index in range(size):
            assert merkle.inclusion_path(index, size, store.node) == merkle.inclusion_path(index, size, old)
        for old_size in range(size + 1):
            assert merkle.consistency_path(old_size, size, store.node) == merkle.consistency_path(old_size, size, old)
    verify_ledger(store, LEDGER_KEY.public_key, ORIGIN)
    # The ingest that opens it next appends to the converted tiles.
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    append_leaves(ledger, 282, 300)
    assert stored_tiles(store.db) == expected_tiles(mth_over(leaf_hashes_of(store.db)), 300)
    store.close()
    Store(directory / "crev.sqlite").close()  # and opening it again changes nothing


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        # a leaf hash inside the full tile: the tile no longer hashes to its node one tile level up
        ("UPDATE nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 7", "does not hash to its node"),
        # the same node of the level-1 tile: the full tile below no longer hashes to it
        ("UPDATE nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 0", "does not hash to its node"),
        # a leaf hash of the partial tile, under the last block: the root differs from the signed one
        ("UPDATE nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 281", "where block 35 signs"),
        # the same leaf, unsealed once the last block is gone: the tiles' root differs from the nodes' root
        (
            "DELETE FROM blocks WHERE height = 35; UPDATE nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 281",
            "another root from tiles than from nodes",
        ),
        ("DELETE FROM nodes WHERE level = 0 AND idx = 100", "node rows where a tree of 282 leaves has"),
        ("DELETE FROM leaves WHERE idx = 281", "node rows where a tree of 281 leaves has"),
    ],
)
def test_a_migration_that_does_not_verify_is_refused(
    readings_ledger: Path, tmp_path: Path, statement: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _copy(readings_ledger, tmp_path / "old")
    _to_old_format(directory / "crev.sqlite")
    with sqlite3.connect(directory / "crev.sqlite") as db:
        db.executescript(statement)
        rows_before = db.execute("SELECT count(*) FROM nodes").fetchone()[0]
    with pytest.raises(LedgerError) as caught:
        Store(directory / "crev.sqlite")
    message = str(caught.value)
    assert reason in message and "\n" not in message and "not converting" in message, message
    with sqlite3.connect(directory / "crev.sqlite") as db:  # all or nothing: the old tree is still there
        assert db.execute("SELECT count(*) FROM nodes").fetchone()[0] == rows_before
        assert db.execute("SELECT count(*) FROM tiles").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM tile_edge").fetchone()[0] == 0
    code, out = _audit(directory, capsys)
    assert code != 0 and reason in out and len(out.strip().splitlines()) == 1, out


@given(st.sampled_from([(0, 0, 256), (0, 1, 26), (1, 0, 1)]), st.integers(min_value=0), st.integers(1, 255))
@settings(max_examples=12, deadline=None)
def test_a_changed_tile_byte_is_named_by_the_audit(
    readings_ledger: Path, tile: tuple[int, int, int], position: int, xor: int
) -> None:
    level, idx, width = tile
    table = "tiles" if width == 256 else "tile_edge"
    with tempfile.TemporaryDirectory() as tmp:
        directory = _copy(readings_ledger, Path(tmp))
        with sqlite3.connect(directory / "crev.sqlite") as db:
            where = "WHERE level = ? AND idx = ?"
            data = bytearray(db.execute("SELECT data FROM %s %s" % (table, where), (level, idx)).fetchone()[0])
            data[position % len(data)] ^= xor
            db.execute("UPDATE %s SET data = ? %s" % (table, where), (bytes(data), level, idx))
        store = Store(directory / "crev.sqlite")
        with pytest.raises(LedgerError) as caught:
            verify_ledger(store, LEDGER_KEY.public_key, ORIGIN)
        store.close()
    expected = "tiles row level %d idx %d width %d: hash %d differs" % (level, idx, width, position % len(data) // 32)
    assert str(caught.value).startswith(expected), str(caught.value)


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("DELETE FROM tile_edge WHERE level = 1", "tiles row level 1 idx 0 width 1: missing"),
        ("INSERT INTO tiles VALUES (3, 0, 1, zeroblob(32))", "tiles: 4 rows where the tree of 282 leaves has 3"),
        (
            "UPDATE tile_edge SET width = 25, data = substr(data, 1, 800) WHERE level = 0 AND idx = 1",
            "tiles row level 0 idx 1 width 25: the tree recomputed from the leaves makes it 26 wide",
        ),
    ],
)
def test_a_missing_extra_or_cut_tile_is_named_through_the_cli(
    readings_ledger: Path, tmp_path: Path, statement: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _copy(readings_ledger, tmp_path / "edited")
    with sqlite3.connect(directory / "crev.sqlite") as db:
        db.execute(statement)
    code, out = _audit(directory, capsys)
    assert code == 1 and "FAIL: %s" % named in out, out


def test_the_incremental_audit_checks_the_tiles_since_and_under_its_state(
    readings_ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _copy(readings_ledger, tmp_path / "grown")
    state = directory / "audit.state"
    code, out = _audit(directory, capsys, "--state", str(state))
    assert code == 0, out
    assert AuditState.load(state).tree_size == 282
    store = Store(directory / "crev.sqlite")
    ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 10**9)
    append_leaves(ledger, 282, 520)  # fills level-0 tile 1, and level-1 tile 0 grows to width 2
    store.begin()
    ledger.seal(NOW * 1000)
    store.commit()
    store.close()
    grown = _copy(directory, tmp_path / "grown-copy")
    (grown / "audit.state").write_bytes(state.read_bytes())
    code, out = _audit(grown, capsys, "--state", str(grown / "audit.state"))
    assert code == 0 and "since block" in out, out

    def tampered(where: str, position: int) -> str:
        copy = _copy(directory, tmp_path / ("t-%d" % position))
        (copy / "audit.state").write_bytes(state.read_bytes())
        with sqlite3.connect(copy / "crev.sqlite") as db:
            data = bytearray(db.execute("SELECT data FROM tiles WHERE %s" % where).fetchone()[0])
            data[position] ^= 1
            db.execute("UPDATE tiles SET data = ? WHERE %s" % where, (bytes(data),))
        code, out = _audit(copy, capsys, "--state", str(copy / "audit.state"))
        assert code == 1, out
        return out

    # a hash appended after the verified state
    assert "FAIL: tiles row level 0 idx 1 width 256: hash 200 differs" in tampered("level = 0 AND idx = 1", 200 * 32)
    # a hash under the verified tree: its root no longer comes out
    assert "FAIL: tiles: the stored tree of size 282 no longer has" in tampered("level = 0 AND idx = 1", 3 * 32)
