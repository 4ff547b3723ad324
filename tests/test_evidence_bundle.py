"""Evidence bundles: export from a real ledger, verify offline, and catch tampering.

Every tampering case checks the verifier names the right item (its position
in the bundle, and the seq or block height) and the right check number.
What exports from the store or reads it runs on both stores, SQLite and
PostgreSQL; what only changes and verifies bytes runs on the SQLite bundle.
"""

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
    ledger.export(out, NOW - 60 * 800, NOW, group=1024)
    data = out.read_bytes()
    alone, parallel = verify(data, jobs=1), verify(data, jobs=2)
    assert alone.failure_count == parallel.failure_count == 0
    assert alone.sequence is not None and parallel.sequence is not None
    assert alone.sequence.totals.energies == parallel.sequence.totals.energies
    assert parallel.readings == 700
    # A flipped byte late in the bundle is found by the workers, and named.
    cose = parts(data)[5][650][2]
    at = data.index(cose) + 40
    tampered = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    assert first(verify(tampered, jobs=2)) == (evidence.INCLUSION, "reading", 650)


# ---------------------------------------------------------------- byte classes


def _flip(data: bytes, at: int, mask: int) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


def _locate(data: bytes, piece: bytes) -> int:
    at = data.find(piece)
    assert at >= 0 and data.find(piece, at + 1) < 0, "a piece of the bundle should occur once"
    return at


CLASSES = [
    "reading cose",
    "reading proof",
    "block header",
    "consistency proof",
    "key event",
    "ledger kid",
    "item head",
    "wrapper head",
]


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
    _magic, _version, meta, blocks, keys, readings = parts(bundle)
    if kind == "reading cose":
        index = pick % len(readings)
        cose = readings[index][2]
        at = _locate(bundle, cose) + offset % len(cose)
        expected: tuple[int, str, int] = (evidence.INCLUSION, "reading", index)
    elif kind == "reading proof":
        index = pick % len(readings)
        path = readings[index][4]
        node = path[pick % len(path)]
        at = _locate(bundle, cbor.dumps(readings[index])) + cbor.dumps(readings[index]).index(node) + offset % 32
        expected = (evidence.INCLUSION, "reading", index)
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
    elif kind == "ledger kid":
        encoded_meta = cbor.dumps(meta)  # the kid also appears in every block header's COSE
        at = _locate(bundle, encoded_meta) + encoded_meta.index(meta[evidence.M_LEDGER_KID]) + offset % 8
        expected = (evidence.BLOCKS, "bundle", -1)
    elif kind == "item head":
        index = pick % len(readings)
        at = _locate(bundle, cbor.dumps(readings[index]))
        expected = (evidence.FORMAT, "reading", index)
    else:  # the byte string each reading is wrapped in
        index = pick % len(readings)
        wrapped = cbor.dumps(cbor.dumps(readings[index]))
        at = _locate(bundle, wrapped) + offset % (len(wrapped) - len(cbor.dumps(readings[index])))
        expected = (evidence.FORMAT, "reading", index)
    result = verify(_flip(bundle, at, mask))
    assert result.failure_count > 0
    assert first(result) == expected, result.failures[0].describe()


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
    audit_ledger, bundle = exported
    blocks = parts(bundle)[3]
    readings = parts(bundle)[5]
    index = 3
    leaf_index, _received, _cose, height, _path = readings[index]
    sizes = {b[0]: cbor.loads(sign1_payload(b[1]))[3] for b in blocks}  # type: ignore[index]
    other = next(size for h, size in sizes.items() if h != height and size > leaf_index)
    wrong = [list(r) for r in readings]
    wrong[index][4] = merkle.inclusion_path(leaf_index, other, audit_ledger.ingest.store.node)
    assert wrong[index][4] != readings[index][4]
    result = verify(_rebuild(bundle, 5, wrong))
    assert first(result) == (evidence.INCLUSION, "reading", index)


def test_the_wrong_ledger_key_is_refused_first(bundle: bytes) -> None:
    result = verify(bundle, key=SigningKey(bytes([98]) * 32).public_key)
    assert first(result) == (evidence.BLOCKS, "bundle", -1)
    assert result.failure_count == 1, "nothing is checked against the wrong key"


def test_a_truncated_bundle_names_the_item_it_ends_in(bundle: bytes) -> None:
    readings = parts(bundle)[5]
    cut = _locate(bundle, readings[20][2]) + 10
    result = verify(bundle[:cut])
    assert first(result) == (evidence.FORMAT, "reading", 20)
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
