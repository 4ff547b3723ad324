"""One conformance suite for both stores: SQLite (a file) and PostgreSQL (a real server).

Each test runs once per store and drives the store through what ingest,
the registry and the market do with it: readings, gaps, quarantine, the
fleet tables, blocks, tiles and proofs, issuance, trades and retirement,
the schema's version, and one writer at a time.
"""

import sqlite3
import threading
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import pytest
from ingest_support import LEDGER_KEY, NOW, Device, LocalIngest, resign
from market_support import BUYER, make_market
from postgres_support import PostgresServer
from registry_support import replay
from trace_support import ACCOUNT, ORIGIN

from crev import merkle
from crev.keys import SigningKey
from crev.ledger_format import leaf_data
from crev.reading import Reading
from crev_ingest import LedgerError, StoreUnavailable
from crev_ingest.audit import verify_ledger
from crev_ingest.integrate import Item, integrate
from crev_ingest.ledger import Ledger
from crev_ingest.registry_audit import replay_registry
from crev_ingest.store import SCHEMA_VERSION, ChainHead, Store
from crev_ingest.validate import Rejected


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "crev.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def ingest(location: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalIngest]:
    local = LocalIngest(tmp_path, location)
    if local.store.db.dialect == "postgresql":
        local.twin_server = request.getfixturevalue("postgres")  # type: ignore[attr-defined]
    yield local
    local.store.close()


def _leaf_hashes(store: Store) -> list[bytes]:
    return [bytes(r[0]) for r in store.db.execute("SELECT leaf_hash FROM leaves ORDER BY idx")]


def _mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return merkle.EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)
    return sha256(b"\x01" + _mth(hashes[:split]) + _mth(hashes[split:])).digest()


# ------------------------------------------------------------ readings, gaps, quarantine, the fleet


def test_readings_gaps_and_quarantine(ingest: LocalIngest) -> None:
    a = Device("dgc-conf-a", SigningKey(bytes([21]) * 32))
    b = Device("dgc-conf-b", SigningKey(bytes([22]) * 32))
    ingest.enroll(a)
    ingest.enroll(b)
    sent_a = [a.next() for _ in range(5)]
    for raw in sent_a[:2] + sent_a[4:]:  # seq 2 and 3 missing: a gap
        assert ingest.send(raw).status == "accepted"
    for _ in range(3):
        assert ingest.send(b.next()).status == "accepted"
    assert ingest.send(sent_a[0]).status == "duplicate"
    forged = resign({1: "not a reading"}, a.key)
    assert ingest.send(forged, dev=a.dev).status == "quarantined"

    store = ingest.store
    assert store.open_gaps() == [(a.dev, 2, 3)]
    assert ingest.send(sent_a[2]).status == "accepted"  # a late reading fills part of the gap
    assert store.open_gaps(a.dev) == [(a.dev, 3, 3)]
    assert store.max_seq(a.dev) == 4 and store.max_seq(b.dev) == 2 and store.max_seq("dgc-none") is None
    assert store.reading(a.dev, 0) == sent_a[0] and store.reading(a.dev, 3) is None
    rows = list(store.readings_between(a.dev, 0, 2**40))
    assert [r[0] for r in rows] == [0, 1, 2, 4] and [r[3] for r in rows] == [sent_a[i] for i in (0, 1, 2, 4)]
    assert store.count_readings_between(a.dev, 0, 2**40) == 4
    one = store.reading_row(a.dev, 4)
    assert one is not None and one[3] == sent_a[4]
    assert sum(store.quarantine_counts().values()) == 1
    fleet = {
        str(r[0]): (int(r[1]), int(r[2]))
        for r in store.db.execute("SELECT dev, readings, quarantined FROM devices ORDER BY dev")
    }
    assert fleet == {a.dev: (4, 1), b.dev: (3, 0)}
    daily = store.db.execute("SELECT sum(readings) FROM daily").fetchone()
    assert int(daily[0]) == 7
    store.begin()
    store.bump("conformance", 2)
    store.bump("conformance", 3)
    store.commit()
    assert store.stat("conformance") == 5 and store.stat("never") == 0
    assert [action for action, _key, _time in store.key_events_for_device(a.dev)] == [1]


def test_a_rolled_back_transaction_leaves_nothing(ingest: LocalIngest) -> None:
    device = Device("dgc-conf-c", SigningKey(bytes([23]) * 32))
    ingest.enroll(device)
    before = ingest.store.leaf_count()
    ingest.store.begin()
    ingest.ledger.sync()
    ingest.ingestor.process("crev/v1/%s/reading" % device.dev, device.next(), NOW * 1000)
    ingest.store.rollback()
    assert ingest.store.leaf_count() == before and ingest.store.max_seq(device.dev) is None
    ingest.ledger.sync()
    assert ingest.ledger.size == before


# ------------------------------------------------------------ blocks, tiles, proofs


def test_tiles_blocks_and_proofs(ingest: LocalIngest) -> None:
    store, ledger = ingest.store, ingest.ledger
    store.begin()
    ledger.sync()
    for i in range(600):  # over two full level-0 tiles, into a third
        ledger.append(3, i, i.to_bytes(4, "big"))
        if i in (255, 256, 599):
            ledger.seal(NOW * 1000 + i)
    store.commit()
    hashes = _leaf_hashes(store)
    assert len(hashes) == store.leaf_count() == 600
    rows = {(level, idx): (width, data) for level, idx, width, data in store.tile_rows()}
    assert {key: width for key, (width, _data) in rows.items()} == {(0, 0): 256, (0, 1): 256, (0, 2): 88, (1, 0): 2}
    assert rows[(0, 1)][1] == b"".join(hashes[256:512])
    assert store.tile_count() == merkle.tile_count(600) == 4
    assert store.tile(0, 2, 10) == b"".join(hashes[512:522])
    with pytest.raises(KeyError):
        store.tile(0, 2, 89)
    assert merkle.root_of(600, store.node) == _mth(hashes) == ledger.frontier.root()
    for index, size in ((0, 600), (300, 512), (599, 600), (256, 257)):
        path = merkle.inclusion_path(index, size, store.node)
        assert merkle.verify_inclusion(hashes[index], index, size, path, _mth(hashes[:size]))
    proof = merkle.consistency_path(256, 600, store.node)
    assert merkle.verify_consistency(256, 600, proof, _mth(hashes[:256]), _mth(hashes))
    last = store.last_block()
    assert last is not None and last[0] == 2 and last[2] == 600
    assert store.block_covering(255) == (0, 256) and store.block_covering(256) == (1, 257)
    assert store.block_covering(600) is None
    header, size = store.block_header(1)
    assert size == 257 and header
    assert store.checkpoint(2).startswith(ORIGIN + "\n600\n")
    with pytest.raises(KeyError):
        store.checkpoint(3)
    counts, _state = verify_ledger(store, LEDGER_KEY.public_key, ORIGIN)
    assert counts["leaves"] == 600


def test_a_tile_hash_out_of_place_is_refused(ingest: LocalIngest) -> None:
    store, ledger = ingest.store, ingest.ledger
    store.begin()
    ledger.sync()
    for i in range(257):
        ledger.append(3, i, i.to_bytes(4, "big"))
    store.commit()
    for level, idx, position in ((0, 0, 256), (0, 0, 0), (0, 1, 5), (0, 1, 0)):
        store.begin()
        with pytest.raises(LedgerError, match="cannot take a hash at position %d" % position):
            store.add_tile_hash(level, idx, position, bytes(32))
        store.rollback()
    assert merkle.root_of(257, store.node) == _mth(_leaf_hashes(store))


# ------------------------------------------------------------ the registry and the market


def test_issuance_trade_and_retirement(location: str, tmp_path: Path) -> None:
    mkt = make_market(tmp_path, location=location)
    store = mkt.traced.ingest.store
    try:
        issued = store.issued_grams()
        assert issued > 2000
        sold = mkt.sell(1200, 30)
        bought = mkt.buy(1000, 35)
        assert bought.trades and sum(e.grams for _leaf, e in bought.trades) == 1000 and sold.grams_left == 1200
        trades = store.trades()
        assert len(trades) == 1 and trades[0][1:4] == (bought.order, sold.order, 1000)
        assert sum(lot[7] for lot in store.holdings(BUYER)) == 1000
        owner_before = sum(lot[7] for lot in store.holdings(ACCOUNT))
        mkt.traced.retire(500)
        assert store.retired_grams() == 500
        assert sum(lot[7] for lot in store.holdings(ACCOUNT)) == owner_before - 500
        assert store.holdings("nobody") == []
        mkt.traced.seal()
        replay(store.db)
        replay_registry(store, LEDGER_KEY.public_key)
        verify_ledger(store, LEDGER_KEY.public_key, ORIGIN)
        market_leaves = [leaf for leaf, *_rest in store.market_leaves()]
        assert market_leaves == sorted(market_leaves)
        assert {sold.order, bought.order, trades[0][0], mkt.traced.retirement} <= set(market_leaves)
        assert store.last_market_leaf() == market_leaves[-1]
    finally:
        store.close()


# ------------------------------------------------------------ schema versions


def test_a_store_newer_than_the_code_is_refused(location: str) -> None:
    store = Store(location)
    store.begin()
    store.db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    store.commit()
    store.close()
    with pytest.raises(LedgerError) as caught:
        Store(location)
    message = str(caught.value)
    assert "schema version %d, newer than this crev's %d" % (SCHEMA_VERSION + 1, SCHEMA_VERSION) in message
    assert "\n" not in message


def test_a_version_1_store_is_upgraded(tmp_path: Path) -> None:
    # SQLite alone: PostgreSQL stores begin at version 2.
    location = str(tmp_path / "crev.sqlite")
    ingest = LocalIngest(tmp_path, location)
    store, ledger = ingest.store, ingest.ledger
    store.begin()
    ledger.sync()
    for i in range(300):
        ledger.append(3, i, i.to_bytes(4, "big"))
    ledger.seal(NOW * 1000)
    store.commit()
    before = sorted(store.tile_rows())
    # Version 1: partial tiles grew in place in tiles, and no version row.
    store.begin()
    store.db.execute("INSERT INTO tiles SELECT level, idx, width, data FROM tile_edge")
    store.db.execute("DELETE FROM tile_edge")
    store.db.execute("DROP TABLE schema_version")
    store.commit()
    store.close()
    upgraded = Store(location)
    try:
        assert sorted(upgraded.tile_rows()) == before
        assert int(upgraded.db.execute("SELECT count(*) FROM tile_edge").fetchone()[0]) == 2
        assert int(upgraded.db.execute("SELECT version FROM schema_version").fetchone()[0]) == SCHEMA_VERSION
        verify_ledger(upgraded, LEDGER_KEY.public_key, ORIGIN)
        grown = Ledger(upgraded, LEDGER_KEY, ORIGIN, 3600, 10**9)
        upgraded.begin()
        grown.append(3, 300, b"after the upgrade")
        upgraded.commit()
        assert merkle.root_of(301, upgraded.node) == _mth(_leaf_hashes(upgraded))
    finally:
        upgraded.close()


def test_a_version_3_store_drops_the_second_cose_once_it_matches_the_leaves(tmp_path: Path) -> None:
    # SQLite, the store that had readings.cose in the wild.
    def version_3(directory: Path, change_one: bool) -> str:
        directory.mkdir()
        location = str(directory / "crev.sqlite")
        ingest = LocalIngest(directory, location)
        device = Device("dgc-conf-v3", SigningKey(bytes([26]) * 32))
        ingest.enroll(device)
        for _ in range(5):
            assert ingest.send(device.next()).status == "accepted"
        db = ingest.store.db
        db.execute("ALTER TABLE readings ADD COLUMN cose BLOB")
        for leaf_idx, data in db.execute("SELECT idx, data FROM leaves WHERE type = 1").fetchall():
            db.execute("UPDATE readings SET cose = ? WHERE leaf_idx = ?", (leaf_data(bytes(data)), leaf_idx))
        if change_one:
            db.execute("UPDATE readings SET cose = zeroblob(10) WHERE seq = 3")
        db.execute("UPDATE schema_version SET version = 3")
        ingest.store.close()
        return location

    upgraded = Store(version_3(tmp_path / "honest", False))
    try:
        assert "cose" not in upgraded.db.columns("readings")
        assert int(upgraded.db.execute("SELECT version FROM schema_version").fetchone()[0]) == SCHEMA_VERSION
        assert upgraded.reading("dgc-conf-v3", 3) is not None
        verify_ledger(upgraded, LEDGER_KEY.public_key, ORIGIN)
    finally:
        upgraded.close()
    changed = version_3(tmp_path / "changed", True)
    with pytest.raises(LedgerError) as caught:
        Store(changed)
    assert "readings row (dgc-conf-v3, 3): its cose differs from its ledger leaf" in str(caught.value)
    assert "\n" not in str(caught.value)
    with sqlite3.connect(changed) as left:  # all or nothing: the store is as it was
        assert "cose" in [row[1] for row in left.execute("PRAGMA table_info(readings)")]
        assert left.execute("SELECT version FROM schema_version").fetchone()[0] == 3


def _plain(value: object) -> object:
    return bytes(value) if isinstance(value, memoryview) else value


def _head_from_readings(store: Store, dev: str) -> ChainHead:
    """What a device's chain head must be, worked out from its readings' leaves."""
    seq, _leaf, _ms, raw = list(store.readings_between(dev, 0, 2**40))[-1]
    return ChainHead(seq, sha256(raw).digest(), Reading.from_cose(raw).channels)


def test_a_version_4_store_gets_its_chain_heads_from_its_readings(location: str, tmp_path: Path) -> None:
    ingest = LocalIngest(tmp_path, location)
    devices = [Device("dgc-conf-head-%d" % i, SigningKey(bytes([30 + i]) * 32)) for i in range(3)]
    for device in devices:
        ingest.enroll(device)
    sent = {device.dev: [device.next() for _ in range(4)] for device in devices}
    for device in devices[:2]:  # the third has no readings, so no head
        for raw in sent[device.dev][:3] + (sent[device.dev][3:] if device is devices[0] else []):
            assert ingest.send(raw).status == "accepted"
    expected = {device.dev: ingest.store.chain_head(device.dev) for device in devices}
    assert expected[devices[0].dev] == _head_from_readings(ingest.store, devices[0].dev)
    assert expected[devices[0].dev] is not None and expected[devices[0].dev].seq == 3  # type: ignore[union-attr]
    assert expected[devices[2].dev] is None
    db = ingest.store.db
    db.execute("DROP TABLE chain_heads")
    db.execute("UPDATE schema_version SET version = 4")
    ingest.store.close()
    upgraded = LocalIngest(tmp_path, location)
    try:
        store = upgraded.store
        assert int(store.db.execute("SELECT version FROM schema_version").fetchone()[0]) == SCHEMA_VERSION
        assert {device.dev: store.chain_head(device.dev) for device in devices} == expected
        # The upgraded heads are what the next reading is checked against.
        late = sent[devices[1].dev][3]
        other = Device(devices[1].dev, devices[1].key)  # the same key, a second history
        forks = [other.next(gen=7) for _ in range(4)]
        assert upgraded.send(forks[3], dev=devices[1].dev).reason == "CONFLICT"
        assert upgraded.send(late, dev=devices[1].dev).status == "accepted"
        assert store.chain_head(devices[1].dev) == _head_from_readings(store, devices[1].dev)
    finally:
        upgraded.store.close()


# ------------------------------------------------------------ one writer at a time


def test_writers_take_turns(location: str) -> None:
    first, second = Store(location), Store(location)
    order: list[str] = []
    first.begin()
    order.append("first began")

    def other() -> None:
        second.begin()  # waits for the first writer's commit
        order.append("second began")
        second.commit()

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.5)
    order.append("first commits")
    first.commit()
    thread.join(30)
    assert order == ["first began", "first commits", "second began"]
    first.close()
    second.close()


def test_an_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        Store("postgresql://nobody@/crev?host=%s&connect_timeout=2" % tmp_path)
    message = str(caught.value)
    assert message.startswith("cannot reach PostgreSQL at postgresql://nobody@/crev") and "\n" not in message


# ------------------------------------------------------------ a batch at a time (crev_ingest.integrate)


def _items(ingest: LocalIngest, dev: str, raws: list[bytes]) -> list[Item]:
    items: list[Item] = []
    topic = "crev/v1/%s/reading" % dev
    for raw in raws:
        try:
            checked: Reading | Rejected = ingest.ingestor.check_message(topic, raw)
        except Rejected as rejected:
            checked = rejected
        items.append((NOW * 1000, topic, raw, checked))
    return items


def test_a_batch_gives_what_one_message_at_a_time_gives(ingest: LocalIngest, tmp_path: Path) -> None:
    device = Device("dgc-conf-batch", SigningKey(bytes([24]) * 32))
    ingest.enroll(device)
    raws = [device.next() for _ in range(6)]
    other = Device("dgc-conf-batch", SigningKey(bytes([24]) * 32))  # the same key, another seq 1
    other.next()
    conflicting = other.next(gen=1)
    forged = resign({1: "not a reading"}, device.key)
    batch = [raws[0], raws[1], raws[3], raws[1], conflicting, raws[2], forged, raws[5]]
    outcomes = integrate(ingest.store, ingest.ledger, ingest.ingestor, _items(ingest, device.dev, batch))
    statuses = [(o.status, o.reason) for o in outcomes]
    assert (
        statuses
        == [
            ("accepted", None),
            ("accepted", None),
            ("accepted", None),
            ("duplicate", "DUPLICATE"),
            ("quarantined", "CONFLICT"),
            ("accepted", None),
            ("quarantined", statuses[6][1]),
            ("accepted", None),
        ]
        and statuses[6][1] != "CONFLICT"
    )
    store = ingest.store
    assert [r[0] for r in store.readings_between(device.dev, 0, 2**40)] == [0, 1, 2, 3, 5]
    assert store.open_gaps(device.dev) == [(device.dev, 4, 4)]
    assert store.stat("accepted") == 5 and store.stat("duplicates") == 1 and store.stat("quarantined") == 2
    fleet = store.db.execute("SELECT readings, quarantined FROM devices WHERE dev = ?", (device.dev,)).fetchone()
    assert (int(fleet[0]), int(fleet[1])) == (5, 2)
    assert int(store.db.execute("SELECT sum(readings) FROM daily").fetchone()[0]) == 5
    assert int(store.db.execute("SELECT count(*) FROM series").fetchone()[0]) == 4  # seq 0 has no energies
    # The same messages one at a time, into a second store of the same kind, give the same rows.
    twin_location = str(tmp_path / "twin.sqlite") if store.db.dialect == "sqlite" else None
    if twin_location is None:
        server: PostgresServer = ingest.twin_server  # type: ignore[attr-defined]
        twin_location = server.create_database()
    twin = LocalIngest(tmp_path, twin_location)
    twin.enroll(device)
    for raw in batch:
        twin.send(raw, dev=device.dev)
    query = "SELECT dev, seq, t0, t1, leaf_idx, gs FROM readings ORDER BY leaf_idx"
    assert [tuple(r) for r in twin.store.db.execute(query)] == [tuple(r) for r in store.db.execute(query)]
    assert merkle.root_of(store.leaf_count(), store.node) == merkle.root_of(twin.store.leaf_count(), twin.store.node)
    gaps = "SELECT dev, first_seq, last_seq, opened_ms, closed_ms FROM gaps"
    assert sorted(map(tuple, twin.store.db.execute(gaps))) == sorted(map(tuple, store.db.execute(gaps)))
    heads = "SELECT dev, seq, hash, channels FROM chain_heads"
    assert [tuple(map(_plain, r)) for r in store.db.execute(heads)] == [
        tuple(map(_plain, r)) for r in twin.store.db.execute(heads)
    ]
    assert store.chain_head(device.dev) == _head_from_readings(store, device.dev)
    # The gap at 2, opened and closed within the batch, is kept as history; the one at 4 is open.
    assert [(*row[1:3], row[4] is None) for row in sorted(map(tuple, store.db.execute(gaps)))] == [
        (2, 2, False),
        (4, 4, True),
    ]
    twin.store.close()


def test_a_batch_that_trips_a_bug_is_done_again_one_at_a_time(
    ingest: LocalIngest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device("dgc-conf-bug", SigningKey(bytes([25]) * 32))
    ingest.enroll(device)
    raws = [device.next() for _ in range(4)]
    store_reading = ingest.ingestor._store_reading

    def buggy(reading: Reading, raw: bytes, received_ms: int) -> None:
        if reading.seq == 2:
            raise RuntimeError("a bug that this reading trips")
        store_reading(reading, raw, received_ms)

    monkeypatch.setattr(ingest.ingestor, "_store_reading", buggy)
    outcomes = integrate(ingest.store, ingest.ledger, ingest.ingestor, _items(ingest, device.dev, raws))
    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None),
        ("accepted", None),
        ("quarantined", "INTERNAL_ERROR"),
        ("accepted", None),
    ]
    assert "storing them one at a time" in caplog.text
    assert [r[0] for r in ingest.store.readings_between(device.dev, 0, 2**40)] == [0, 1, 3]
    assert ingest.store.quarantine_counts() == {"INTERNAL_ERROR": 1}
    verify_ledger(ingest.store, LEDGER_KEY.public_key, ORIGIN)


def test_pending_keeps_each_reading_once_and_a_conflicting_one_beside_it(ingest: LocalIngest) -> None:
    device = Device("dgc-conf-pending", SigningKey(bytes([27]) * 32))
    raws = [device.next() for _ in range(3)]
    other = Device(device.dev, device.key)  # the same key, a second seq 0
    conflicting = other.next(gen=9)
    topic = "crev/v1/%s/reading" % device.dev
    store = ingest.store
    store.begin(lock=False)
    assert store.add_pending(device.dev, 0, 1, topic, raws[0])
    rows = [(device.dev, seq, 2, topic, raw) for seq, raw in ((0, raws[0]), (1, raws[1]), (1, raws[1]), (2, raws[2]))]
    assert store.add_pending_many([*rows, (device.dev, 0, 3, topic, conflicting)]) == [False, True, False, True, True]
    store.commit()
    waiting = store.pending_batch(10)
    assert [cose for _id, _ms, _topic, cose in waiting] == [raws[0], raws[1], raws[2], conflicting]
    store.begin()
    store.drop_pending([waiting[1][0], waiting[3][0]])
    store.commit()
    assert [cose for _id, _ms, _topic, cose in store.pending_batch(10)] == [raws[0], raws[2]]
    assert store.pending_count() == 2
