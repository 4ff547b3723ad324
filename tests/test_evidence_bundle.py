"""Evidence bundles: export from a real ledger, verify offline, and catch tampering.

Every tampering case checks the verifier names the right item (its position
in the bundle, and the seq or block height) and the right check number.
What exports from the store or reads it runs on both stores, SQLite and
PostgreSQL; what only changes and verifies bytes runs on the SQLite bundle.
"""

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bundle_support import DEV, START, AuditLedger, first, make_ledger, pack, parts, verify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import NOW

from crev import cbor, evidence, merkle
from crev.cose import sign1
from crev.keys import SigningKey
from crev.reading import Reading


@pytest.fixture(scope="module")
def audit_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditLedger]:
    ledger = make_ledger(tmp_path_factory.mktemp("bundle"), readings=30)
    yield ledger
    ledger.ingest.store.close()


class Bundle(bytes):
    def __repr__(self) -> str:  # keeps hypothesis's failure reports readable
        return "<bundle of %d bytes>" % len(self)


@pytest.fixture(scope="module")
def bundle(audit_ledger: AuditLedger, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("out") / "whole.bundle"
    audit_ledger.export(out)
    return Bundle(out.read_bytes())


@pytest.fixture
def exported(store_url: str | None, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[AuditLedger, bytes]:
    """The ledger and its whole bundle on each store: the module's on SQLite, one made afresh on PostgreSQL."""
    if store_url is None:
        return request.getfixturevalue("audit_ledger"), request.getfixturevalue("bundle")
    ledger = make_ledger(tmp_path, readings=30, location=store_url)
    request.addfinalizer(ledger.ingest.store.close)
    out = tmp_path / "whole.bundle"
    ledger.export(out)
    return ledger, Bundle(out.read_bytes())


def test_a_whole_range_verifies_with_totals_from_the_series_table(exported: tuple[AuditLedger, bytes]) -> None:
    audit_ledger, bundle = exported
    result = verify(bundle)
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    assert result.sequence is not None
    totals = result.sequence.totals
    # An independent source for the totals: the time series ingest wrote.
    row = audit_ledger.ingest.store.db.execute(
        "SELECT count(*), sum(gen_mwh), sum(import_mwh), sum(export_mwh), sum(self_mwh), sum(demand_mwh) "
        "FROM series WHERE dev = ?",
        (DEV,),
    ).fetchone()
    # seq 0 has no energies (NO_BASELINE): 30 readings, 29 series rows.
    assert totals.readings == 30 and row[0] == 29
    assert totals.energies == list(row[1:])
    assert totals.without_energies == 1 and totals.not_recomputed == 0
    assert result.sequence.gaps == []
    assert len(result.blocks.heights) >= 4, "small proof groups should list several blocks"


def test_a_middle_range_carries_both_neighbours(exported: tuple[AuditLedger, bytes], tmp_path: Path) -> None:
    audit_ledger, _bundle = exported
    out = tmp_path / "middle.bundle"
    summary = audit_ledger.export(out, START + 600, START + 1200)
    # Reading seq k spans [START + 60k, START + 60(k + 1)): seq 10..19 overlap the range.
    assert (summary.first_seq, summary.last_seq, summary.in_range, summary.readings) == (10, 19, 10, 12)
    result = verify(out.read_bytes())
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    assert result.sequence is not None
    assert result.sequence.totals.readings == 10 and result.sequence.ends_after_range
    assert result.sequence.totals.not_recomputed == 0, "seq 10 is recomputed from seq 9, its neighbour"


def test_the_parallel_path_gives_the_same_answer(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, readings=700, start=NOW - 60 * 800)
    out = tmp_path / "big.bundle"
    ledger.export(out, NOW - 60 * 800, NOW, group=64)  # 11 groups: enough tasks for the workers
    data = out.read_bytes()
    alone, parallel = verify(data, jobs=1), verify(data, jobs=2)
    assert alone.failure_count == parallel.failure_count == 0
    assert alone.sequence is not None and parallel.sequence is not None
    assert alone.sequence.totals.energies == parallel.sequence.totals.energies
    assert parallel.readings == 700
    # A changed reading late in the bundle is found by the workers, and named.
    value = parts(data)
    cose = value[5][650][2]
    value[5][650][2] = cose[:40] + bytes([cose[40] ^ 1]) + cose[41:]
    assert first(verify(pack(value), jobs=2)) == (evidence.INCLUSION, "reading", 650)
    # So is a flipped byte of a late group's packed readings, and of its proof nodes.
    groups = cbor.loads(data)[5]  # type: ignore[index]
    packed, nodes = groups[9][3], groups[9][1]
    at = _locate(data, packed) + len(packed) // 2
    assert first(verify(_flip(data, at, 1), jobs=2)) == (evidence.FORMAT, "proof group", 9)
    at = _locate(data, nodes) + 5
    assert first(verify(_flip(data, at, 1), jobs=2)) == (evidence.INCLUSION, "proof group", 9)


# ---------------------------------------------------------------- byte classes


def _flip(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def _locate(data: bytes, piece: bytes) -> int:
    at = data.find(piece)
    assert at >= 0 and data.find(piece, at + 1) < 0, "a piece of the bundle should occur once"
    return at


CLASSES = [
    "reading cose",
    "reading received_ms",
    "reading leaf tag",
    "proof nodes",
    "packed readings",
    "block header",
    "consistency proof",
    "key event",
    "ledger kid",
    "item head",
    "wrapper head",
]


def _group_of(bundle: bytes, index: int) -> tuple[int, list[Any]]:
    """(position, group) of the proof group that holds reading #index."""
    groups = cbor.loads(bundle)[5]  # type: ignore[index]
    for position, group in enumerate(groups):
        if index < group[2]:
            return position, group
        index -= group[2]
    raise AssertionError("no such reading")


@given(
    st.sampled_from(CLASSES),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
    st.integers(1, 255),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_changed_byte_of_any_class_fails_and_names_its_item(
    bundle: bytes, kind: str, pick: int, offset: int, mask: int
) -> None:
    value = parts(bundle)
    _magic, _version, meta, blocks, keys, readings, _groups = value
    index = pick % len(readings)
    tampered = None
    if kind in ("reading cose", "reading received_ms", "reading leaf tag", "item head", "wrapper head"):
        # Inside a group's packed readings: changed by someone who packs them again.
        encoded = cbor.dumps(readings[index])
        if kind == "reading cose":
            cose = readings[index][2]
            at = encoded.index(cose) + offset % len(cose)
        elif kind == "reading received_ms":
            at = 1 + len(cbor.dumps(readings[index][0])) + 1 + offset % 8  # inside the 9-byte uint
        elif kind == "reading leaf tag":
            at = len(encoded) - 1 - offset % 4
        else:
            at = 0
        changed = _flip(encoded, at, mask)
        position, _group = _group_of(bundle, index)
        if kind == "wrapper head":
            # The byte string each reading is wrapped in, inside its group's packed readings.
            raw = [cbor.dumps(cbor.dumps(r)) for r in readings]
            head = len(raw[index]) - len(encoded)
            raw[index] = _flip(raw[index], offset % head, mask)
            tampered = _repack_raw(value, raw)
            expected: tuple[int, str, int] = (evidence.FORMAT, "proof group", position)
        else:
            try:
                decoded = cbor.loads(changed)
            except Exception:
                decoded = None
            raw = [cbor.dumps(cbor.dumps(r)) for r in readings]
            raw[index] = cbor.dumps(changed)
            tampered = _repack_raw(value, raw)
            check = evidence.INCLUSION
            if kind == "item head" or not (isinstance(decoded, list) and len(decoded) == 4):
                check = evidence.FORMAT
            expected = (check, "reading", index)
    elif kind == "proof nodes":
        position, group = _group_of(bundle, index)
        nodes = group[1]
        at = _locate(bundle, nodes) + offset % len(nodes)
        expected = (evidence.INCLUSION, "proof group", position)
    elif kind == "packed readings":
        position, group = _group_of(bundle, index)
        packed = group[3]
        at = _locate(bundle, packed) + offset % len(packed)
        expected = (evidence.FORMAT, "proof group", position)
    elif kind == "block header":
        index = pick % len(blocks)
        header = blocks[index][1]
        at = _locate(bundle, header) + offset % len(header)
        expected = (evidence.BLOCKS, "block", index)
    elif kind == "consistency proof":
        proven = [i for i, block in enumerate(blocks) if block[2]]
        index = proven[pick % len(proven)]
        proof = blocks[index][2]
        item = cbor.dumps(blocks[index])
        at = _locate(bundle, item) + item.index(proof[pick % len(proof)]) + offset % 32
        expected = (evidence.CONSISTENCY, "block", index)
    elif kind == "key event":
        index = pick % len(keys)
        statement = keys[index][2]
        at = _locate(bundle, statement) + offset % len(statement)
        expected = (evidence.INCLUSION, "key event", index)
    else:  # ledger kid
        encoded_meta = cbor.dumps(meta)  # the kid also appears in every block header's COSE
        at = _locate(bundle, encoded_meta) + encoded_meta.index(meta[evidence.M_LEDGER_KID]) + offset % 8
        expected = (evidence.BLOCKS, "bundle", -1)
    result = verify(tampered if tampered is not None else _flip(bundle, at, mask))
    assert result.failure_count > 0
    assert first(result) == expected, result.failures[0].describe()


def _repack_raw(value: list[Any], raw: list[bytes]) -> bytes:
    """The bundle with its groups' packed readings made from ``raw`` (each a wrapped item), proofs unchanged."""
    original = cbor.loads(pack(value))[5]  # type: ignore[index]
    groups = []
    at = 0
    for height, nodes, count, _packed in original:
        groups.append([height, nodes, count, zlib.compress(b"".join(raw[at : at + count]))])
        at += count
    return cbor.dumps([*value[:5], groups])


# ---------------------------------------------------------------- structural tampering


def _rebuild(bundle: bytes, section: int, new: list[Any]) -> bytes:
    value = parts(bundle)
    value[section] = new
    return pack(value)


def test_a_dropped_reading_is_a_gap_with_its_seq(bundle: bytes) -> None:
    readings = parts(bundle)[5]
    dropped = readings[:12] + readings[13:]
    result = verify(_rebuild(bundle, 5, dropped))
    assert first(result) == (evidence.SEQUENCE, "reading", 12)
    failure = result.first_failure()
    assert failure is not None and failure.seq == 13 and "seq 12 missing" in failure.detail
    assert result.sequence is not None
    gap = result.sequence.gaps[0]
    assert (gap["first_seq"], gap["last_seq"]) == (12, 12)
    assert (gap["from_t"], gap["to_t"]) == (START + 60 * 12, START + 60 * 13)
    # An auditor who accepts known gaps still gets them reported.
    allowed = verify(_rebuild(bundle, 5, dropped), allow_gaps=True)
    assert allowed.failure_count == 0 and allowed.sequence is not None and len(allowed.sequence.gaps) == 1
    assert allowed.sequence.totals.not_recomputed == 1, "seq 13 has no predecessor to recompute from"


def test_a_dropped_first_reading_is_a_gap_too(audit_ledger: AuditLedger, tmp_path: Path) -> None:
    out = tmp_path / "middle.bundle"
    audit_ledger.export(out, START + 600, START + 1200)
    data = out.read_bytes()
    readings = parts(data)[5]
    result = verify(_rebuild(data, 5, readings[1:]))  # the neighbour before the range
    assert first(result) == (evidence.SEQUENCE, "reading", 0)
    assert result.sequence is not None and result.sequence.gaps[0]["first_seq"] == 9


def test_swapped_readings_fail_the_sequence_check(bundle: bytes) -> None:
    readings = parts(bundle)[5]
    swapped = [*readings[:7], readings[8], readings[7], *readings[9:]]
    result = verify(_rebuild(bundle, 5, swapped))
    check, item, position = first(result)
    assert (check, item, position) == (evidence.SEQUENCE, "reading", 7)
    assert any("out of order" in f.detail and f.position == 8 for f in result.failures)


def test_a_replaced_block_header_is_named_by_its_height(bundle: bytes) -> None:
    blocks = parts(bundle)[3]
    # A genuine header, signed by the ledger, of another height.
    replaced = [list(b) for b in blocks]
    replaced[1][1] = blocks[2][1]
    result = verify(_rebuild(bundle, 3, replaced))
    assert first(result) == (evidence.BLOCKS, "block", 1)
    failure = result.first_failure()
    assert failure is not None and failure.height == blocks[1][0]
    # A header of the same height and size, but signed by another key.
    forged = [list(b) for b in blocks]
    header = cbor.loads(sign1_payload(blocks[1][1]))
    forged[1][1] = sign1(cbor.dumps(header), SigningKey(bytes([99]) * 32))
    assert first(verify(_rebuild(bundle, 3, forged))) == (evidence.BLOCKS, "block", 1)


def sign1_payload(signed: bytes) -> bytes:
    value = cbor.loads(signed)
    assert isinstance(value, cbor.Tag) and isinstance(value.value, list)
    payload = value.value[2]
    assert isinstance(payload, bytes)
    return payload


def test_a_proof_from_another_tree_size_fails(exported: tuple[AuditLedger, bytes]) -> None:
    _audit_ledger, bundle = exported
    value = cbor.loads(bundle)
    assert isinstance(value, list)
    blocks, groups = value[3], value[5]
    position = 1
    height = groups[position][0]
    other = next(b[0] for b in blocks if b[0] > height)  # a listed block of a bigger tree
    groups[position][0] = other
    result = verify(cbor.dumps(value))
    assert first(result) == (evidence.INCLUSION, "proof group", position)
    failure = result.first_failure()
    assert failure is not None and failure.height == other
    # A group whose nodes lack one, or carry one too many, is named with what is wrong.
    value = cbor.loads(bundle)
    assert isinstance(value, list)
    value[5][position][1] = value[5][position][1][:-32]
    failure = verify(cbor.dumps(value)).first_failure()
    assert failure is not None and (failure.item, failure.position) == ("proof group", position)
    assert "is lacking" in failure.detail and "node" in failure.detail
    value = cbor.loads(bundle)
    assert isinstance(value, list)
    value[5][position][1] += bytes(32)
    failure = verify(cbor.dumps(value)).first_failure()
    assert failure is not None and "carries" in failure.detail


def test_a_one_leaf_multiproof_is_its_audit_path(exported: tuple[AuditLedger, bytes]) -> None:
    audit_ledger, _bundle = exported
    store = audit_ledger.ingest.store
    size = store.last_block()[2]  # type: ignore[index]
    for index in (0, 5, size - 1):
        path = merkle.inclusion_path(index, size, store.node)
        assert sorted(merkle.multiproof([index], size, store.node)) == sorted(path)
    leaves = [1, 2, 9]
    nodes = b"".join(merkle.multiproof(leaves, size, store.node))
    hashes = [store.node(0, i) for i in leaves]
    assert merkle.multiproof_root(leaves, hashes, size, nodes) == (merkle.root_of(size, store.node), len(nodes))


def test_the_wrong_ledger_key_is_refused_first(bundle: bytes) -> None:
    result = verify(bundle, key=SigningKey(bytes([98]) * 32).public_key)
    assert first(result) == (evidence.BLOCKS, "bundle", -1)
    assert result.failure_count == 1, "nothing is checked against the wrong key"


def test_a_truncated_bundle_names_the_item_it_ends_in(bundle: bytes) -> None:
    position, group = _group_of(bundle, 20)
    cut = _locate(bundle, group[3]) + 10
    result = verify(bundle[:cut])
    assert first(result) == (evidence.FORMAT, "proof group", position)
    assert "ends inside" in result.failures[0].detail
    assert first(verify(b"not a bundle at all")) == (evidence.FORMAT, "bundle", -1)
    assert first(verify(bundle + b"\x00")) == (evidence.FORMAT, "bundle", -1)


# ---------------------------------------------------------------- keys


def test_a_reading_by_an_unenrolled_key_in_the_ledger_fails_check_4(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_ledger(tmp_path, readings=10, location=store_url)
    stranger = SigningKey(bytes([77]) * 32)
    device = ledger.device
    t1 = device.t1 + 60
    reading = device.head.next_reading(DEV, t1, 1, device.channels(), "crev-test/1", t0=t1 - 60)
    ledger.append_unchecked(reading.sign(stranger))  # a misbehaving ingest took it
    ledger.seal()
    out = tmp_path / "b.bundle"
    ledger.export(out)
    result = verify(out.read_bytes())
    assert first(result) == (evidence.SIGNATURE, "reading", 10)
    failure = result.first_failure()
    assert failure is not None and failure.seq == 10 and "not enrolled" in failure.detail


def test_a_reading_signed_after_revocation_fails_but_one_before_passes(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_ledger(tmp_path, readings=10, location=store_url)
    device = ledger.device
    revoked_at = device.t1 + 120  # after the next reading's t1, before the one after
    ledger.ingest.revoke(device, revoked_at)
    before = device.next()  # t1 = revoked_at - 60: backfilled after the revocation, still valid
    after = device.next()  # t1 = revoked_at: signed when the key was no longer valid
    ledger.append_unchecked(before)
    ledger.append_unchecked(after)
    ledger.seal()
    out = tmp_path / "b.bundle"
    ledger.export(out)
    result = verify(out.read_bytes())
    assert result.failure_count == 1
    assert first(result) == (evidence.SIGNATURE, "reading", 11)
    failure = result.first_failure()
    assert failure is not None and "revoked" in failure.detail and failure.seq == 11


def test_a_dropped_key_event_leaves_readings_unenrolled(bundle: bytes) -> None:
    result = verify(_rebuild(bundle, 4, []))
    assert first(result) == (evidence.SIGNATURE, "reading", 0)


def test_a_key_event_of_another_device_is_refused(exported: tuple[AuditLedger, bytes]) -> None:
    audit_ledger, bundle = exported
    keys = parts(bundle)[4]
    store = audit_ledger.ingest.store
    other_leaf, other_data = store.key_event_leaves("dgc-audit-0002")[0]
    leaf = cbor.loads(other_data)
    assert isinstance(leaf, list)
    received, statement = leaf[1], leaf[2]
    size = store.last_block()
    assert size is not None
    height, _hash, tree_size = size
    path = merkle.inclusion_path(other_leaf, tree_size, store.node)
    assert parts(bundle)[3][-1][0] == height, "the last listed block is the newest"
    swapped = [*keys, [other_leaf, received, statement, height, path]]
    assert first(verify(_rebuild(bundle, 4, swapped))) == (evidence.SIGNATURE, "key event", 1)


# ---------------------------------------------------------------- export errors


def test_export_refuses_unsealed_readings_and_empty_ranges(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_ledger(tmp_path, readings=5, location=store_url)
    out = tmp_path / "b.bundle"
    with pytest.raises(Exception, match="no readings of"):
        ledger.export(out, NOW + 3600, NOW + 7200)
    with pytest.raises(Exception, match="not enrolled"):
        ledger.export(out, dev="dgc-nobody-0001")
    assert ledger.ingest.send(ledger.device.next()).status == "accepted"  # 6 leaves short of a block
    with pytest.raises(Exception, match="not sealed"):
        ledger.export(out)
    assert not out.exists() and not list(tmp_path.glob("*.partial")), "no half-written bundle is left"


def test_reading_helpers_agree_with_the_bundle(bundle: bytes) -> None:
    readings = parts(bundle)[5]
    seqs = [Reading.from_cose(r[2]).seq for r in readings]
    assert seqs == list(range(30))


def test_key_events_out_of_ledger_order_are_refused(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_ledger(tmp_path, readings=3, location=store_url)
    ledger.ingest.revoke(ledger.device, NOW - 60)
    ledger.seal()
    out = tmp_path / "b.bundle"
    ledger.export(out)
    data = out.read_bytes()
    assert verify(data).failure_count == 0
    keys = parts(data)[4]
    assert len(keys) == 2, "an enrolment and a revocation"
    # Replayed revocation-first, the key would look valid forever after: refused.
    assert first(verify(_rebuild(data, 4, [keys[1], keys[0]]))) == (evidence.FORMAT, "key event", 1)


def test_the_origin_is_held_against_the_signed_checkpoint(bundle: bytes) -> None:
    """The block headers do not name the ledger; the newest block's signed checkpoint does."""
    assert not verify(bundle).failures
    renamed = parts(bundle)
    renamed[2][evidence.M_ORIGIN] = "crev.other/ledger"
    assert first(verify(pack(renamed))) == (evidence.BLOCKS, "bundle", -1)
    forged = parts(bundle)
    note = forged[2][evidence.M_CHECKPOINT]
    forged[2][evidence.M_CHECKPOINT] = note.replace("\n", "\n1", 1)  # another size, the same signature
    assert first(verify(pack(forged))) == (evidence.BLOCKS, "bundle", -1)


def test_a_version_1_bundle_still_verifies_and_its_paths_are_checked(exported: tuple[AuditLedger, bytes]) -> None:
    """Auditors may hold bundles of version 1: one audit path per reading, readings not grouped."""
    audit_ledger, bundle = exported
    store = audit_ledger.ingest.store
    value = parts(bundle)
    height, size = value[3][-1][0], value[6]["sizes"][value[3][-1][0]]
    items = [[r[0], r[1], r[2], height, merkle.inclusion_path(r[0], size, store.node)] for r in value[5]]
    old = [value[0], 1, *value[2:5], [cbor.dumps(item) for item in items]]
    result = verify(cbor.dumps(old))
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    assert result.readings == len(items) == 30
    items[7][4][0] = bytes(32)
    old[5] = [cbor.dumps(item) for item in items]
    assert first(verify(cbor.dumps(old))) == (evidence.INCLUSION, "reading", 7)
    assert first(verify(cbor.dumps([value[0], 3, *old[2:]]))) == (evidence.FORMAT, "bundle", -1)
