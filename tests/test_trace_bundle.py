"""Trace bundles (SPEC §10): a retirement traced to its readings, verified offline, and forgeries caught.

Every tampering case checks the verifier names the right item (entry or
reading, by its position in the bundle) and the right check number of
``crev.trace``. The forgeries are what a registry holding the ledger key
could sign: each is a validly signed ledger leaf that says something false.

What exports from the store or audits it (the honest trace, the forgeries)
runs on both stores; what only verifies bytes runs on the SQLite trace.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import LEDGER_KEY, NOW
from trace_support import (
    ACCOUNT,
    ACCOUNT_KEY,
    BASE,
    BENEFICIARY,
    FACTOR_MG,
    PLACE,
    PURPOSE,
    SITE,
    Traced,
    entry_position,
    first,
    make_retired,
    make_traced,
    pack,
    parts,
    verify,
)

from crev import cbor, trace
from crev.keys import SigningKey
from crev.ledger_format import LEAF_KEY_EVENT
from crev.reading import Reading
from crev.registry_format import LEAF_ISSUANCE, LEAF_RETIREMENT, Issuance
from crev_cli.trace_verify import build_trace_report, render_trace_text
from crev_ingest import LedgerError
from crev_ingest.audit import verify_ledger
from crev_market.registry import sign_retirement

CREV = Path(sys.executable).parent / "crev"

# The prelude of a Python process in which every socket and every SQLite connection is refused.
GUARD = """
import socket, sqlite3, sys

def refuse(*args, **kwargs):
    raise RuntimeError("offline verification touched the network or a database")

socket.socket.__init__ = refuse  # the class stays a class, so ssl and friends still import
for name in ("socketpair", "create_connection", "create_server", "getaddrinfo"):
    setattr(socket, name, refuse)
sqlite3.connect = refuse
"""
OFFLINE = GUARD + "\nfrom crev_cli.main import main\nsys.exit(main(sys.argv[1:]))\n"


class Bundle(bytes):
    def __repr__(self) -> str:  # keeps hypothesis's failure reports readable
        return "<trace bundle of %d bytes>" % len(self)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    made = make_retired(tmp_path_factory.mktemp("trace"))
    yield made
    made.ingest.store.close()


@pytest.fixture(scope="module")
def bundle_path(traced: Traced, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "retirement.trace"
    summary = traced.export(out)
    assert summary.grams == 1500 and summary.bytes == out.stat().st_size
    return out


@pytest.fixture(scope="module")
def bundle(bundle_path: Path) -> bytes:
    return Bundle(bundle_path.read_bytes())


@pytest.fixture
def exported(store_url: str | None, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Traced, bytes]:
    """The retired ledger and its trace on each store: the module's on SQLite, one made afresh on PostgreSQL."""
    if store_url is None:
        return request.getfixturevalue("traced"), request.getfixturevalue("bundle")
    made = make_retired(tmp_path, location=store_url)
    request.addfinalizer(made.ingest.store.close)
    out = tmp_path / "retirement.trace"
    summary = made.export(out)
    assert summary.grams == 1500 and summary.bytes == out.stat().st_size
    return made, Bundle(out.read_bytes())


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


# ---------------------------------------------------------------- a trace that holds


def test_a_trace_verifies_and_names_what_is_behind_the_retirement(exported: tuple[Traced, bytes]) -> None:
    traced, bundle = exported
    result = verify(bundle)
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    report = build_trace_report(result)
    assert report["ok"] and report["result"] == "pass" and report["failure"] is None
    assert all(check["status"] == "ok" for check in report["checks"])
    traced_report = report["trace"]
    assert traced_report["retirement"] == traced.retirement == report["bundle"]["retirement"]
    assert (traced_report["account"], traced_report["account_name"]) == (ACCOUNT, "Owner One")
    assert (traced_report["beneficiary"], traced_report["purpose"], traced_report["year"]) == (
        BENEFICIARY,
        PURPOSE,
        2026,
    )
    assert traced_report["grams"] == 1500 == sum(lot["grams"] for lot in traced_report["lots"])
    assert traced_report["sites"] == [SITE] and traced_report["places"] == [PLACE]
    assert traced_report["types"] == ["solar"]
    devs = [d.dev for d in traced.devices]
    assert traced_report["meters"] == sorted(["PV-" + dev for dev in devs] + ["G-" + dev for dev in devs])
    # An independent account of the lots: the store's rows, and the retirement it recorded.
    store = traced.ingest.store
    retired = store.db.execute(
        "SELECT i.slot, l.type, l.grams, l.self_mwh, i.leaf_idx, l.lot_index FROM lots l "
        "JOIN issuances i ON i.leaf_idx = l.issuance_leaf"
    ).fetchall()
    by_lot = {"%d.%d" % (row[4], row[5]): row for row in retired}
    for lot in traced_report["lots"]:
        slot, type_path, _issued, self_mwh, _leaf, _index = by_lot[lot["lot"]]
        assert (lot["slot"], lot["type"], lot["self_mwh"]) == (slot, type_path, self_mwh)
        assert lot["factor_mg_per_kwh"] == FACTOR_MG and lot["readings"] == 30
        assert lot["meters"] == sorted(["PV-" + lot["dev"], "G-" + lot["dev"]])
    # Oldest slot first: the first three slots of both devices, 30 readings each, in part.
    assert traced_report["slots"] == [BASE, BASE + 1800, BASE + 3600]
    assert report["readings"] == 30 * len(traced_report["lots"]) == traced_report["readings"]
    assert report["self_mwh"] == sum(lot["self_mwh"] for lot in traced_report["lots"])
    # Every reading in the bundle is one of the traced devices', sorted by device then leaf.
    readings = parts(bundle)[5]
    keys = [(Reading.from_cose(r[2]).dev, r[0]) for r in readings]
    assert keys == sorted(keys) and {k[0] for k in keys} == set(devs)
    text = render_trace_text(report)
    assert "RESULT: PASS" in text and "for      Bene" in text and "Japan/Tokyo" in text


def test_the_cli_verifies_a_trace_as_json_and_as_text(bundle_path: Path) -> None:
    key = LEDGER_KEY.public_key.hex()
    done = _run([str(CREV), "audit", "verify", str(bundle_path), "--ledger-key", key, "--json"], bundle_path.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {"ok", "readings", "self_mwh", "gaps", "failure"} <= set(report)
    assert report["ok"] is True and report["failure"] is None and report["gaps"] == []
    assert report["readings"] == 150 and report["self_mwh"] > 0 and report["kind"] == "trace"
    assert report["trace"]["beneficiary"] == BENEFICIARY and report["trace"]["grams"] == 1500
    text = _run([str(CREV), "audit", "verify", str(bundle_path), "--ledger-key", key], bundle_path.parent)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "RESULT: PASS" in text.stdout and "Retired    1.500 kg-CO2 (1500 g)" in text.stdout
    assert "for      Bene" in text.stdout and "sites    site-1" in text.stdout
    assert "meters   G-dgc-a-0000, G-dgc-a-0001, PV-dgc-a-0000, PV-dgc-a-0001" in text.stdout


def test_the_cli_exits_1_on_a_tampered_trace_and_names_the_entry(bundle: bytes, tmp_path: Path) -> None:
    entries = parts(bundle)[4]
    data = entries[-1][3]  # the retirement
    at = bundle.index(data) + len(data) // 2
    bad = tmp_path / "bad.trace"
    bad.write_bytes(bundle[:at] + bytes([bundle[at] ^ 1]) + bundle[at + 1 :])
    key = LEDGER_KEY.public_key.hex()
    done = _run([str(CREV), "audit", "verify", str(bad), "--ledger-key", key, "--json"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["failure"]["check"] == trace.INCLUSION
    assert report["failure"]["item"] == "entry" and report["failure"]["position"] == len(entries) - 1
    text = _run([str(CREV), "audit", "verify", str(bad), "--ledger-key", key], tmp_path)
    assert text.returncode == 1 and "RESULT: FAIL" in text.stdout and "check 3 (inclusion proofs)" in text.stdout


def test_a_trace_verifies_with_network_and_databases_refused(bundle_path: Path) -> None:
    key = LEDGER_KEY.public_key.hex()
    command = [sys.executable, "-c", OFFLINE, "audit", "verify", str(bundle_path), "--ledger-key", key]
    done = _run(command, bundle_path.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT: PASS" in done.stdout and "for      Bene" in done.stdout
    # The guard bites: opening the ledger store is refused in such a process.
    control = _run(
        [
            sys.executable,
            "-c",
            GUARD + "\nimport pathlib\nfrom crev_ingest.store import Store\nStore(pathlib.Path(sys.argv[1]))\n",
            "x.sqlite",
        ],
        bundle_path.parent,
    )
    assert control.returncode != 0 and "touched the network or a database" in control.stderr


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
    "issuance data",
    "retirement data",
    "event data",
    "entry proof",
    "block header",
    "ledger kid",
    "reading item head",
    "reading wrapper head",
    "entry head",
    "bundle head",
]


def _pick_entry(entries: list[Any], pick: int, types: tuple[int, ...]) -> int:
    chosen = [i for i, entry in enumerate(entries) if entry[1] in types]
    assert chosen, "the trace has entries of types %s" % (types,)
    return chosen[pick % len(chosen)]


@given(
    st.sampled_from(CLASSES),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
    st.integers(1, 255),
)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_changed_byte_of_any_class_fails_and_names_its_item(
    bundle: bytes, kind: str, pick: int, offset: int, mask: int
) -> None:
    _magic, _version, meta, blocks, entries, readings = parts(bundle)
    expected: tuple[int, str, int]
    if kind == "reading cose":
        index = pick % len(readings)
        cose = readings[index][2]
        at = _locate(bundle, cose) + offset % len(cose)
        expected = (trace.INCLUSION, "reading", index)
    elif kind == "reading proof":
        index = pick % len(readings)
        item = cbor.dumps(readings[index])
        path = readings[index][4]
        at = _locate(bundle, item) + item.index(path[pick % len(path)]) + offset % 32
        expected = (trace.INCLUSION, "reading", index)
    elif kind in ("issuance data", "retirement data", "event data"):
        types = {"issuance data": (LEAF_ISSUANCE,), "retirement data": (LEAF_RETIREMENT,)}.get(
            kind, (LEAF_KEY_EVENT, 4, 5)
        )
        index = _pick_entry(entries, pick, types)
        item = cbor.dumps(entries[index])
        data = entries[index][3]
        at = _locate(bundle, item) + item.index(data) + offset % len(data)
        expected = (trace.INCLUSION, "entry", index)
    elif kind == "entry proof":
        proven = [i for i, entry in enumerate(entries) if entry[5]]
        index = proven[pick % len(proven)]
        item = cbor.dumps(entries[index])
        path = entries[index][5]
        at = _locate(bundle, item) + item.index(path[pick % len(path)]) + offset % 32
        expected = (trace.INCLUSION, "entry", index)
    elif kind == "block header":
        index = pick % len(blocks)
        header = blocks[index][1]
        at = _locate(bundle, header) + offset % len(header)
        expected = (trace.BLOCKS, "block", index)
    elif kind == "ledger kid":
        encoded_meta = cbor.dumps(meta)  # the kid also appears in the block header's COSE
        at = _locate(bundle, encoded_meta) + encoded_meta.index(meta[trace.T_LEDGER_KID]) + offset % 8
        expected = (trace.BLOCKS, "bundle", -1)
    elif kind == "reading item head":
        index = pick % len(readings)
        at = _locate(bundle, cbor.dumps(readings[index]))
        expected = (trace.FORMAT, "reading", index)
    elif kind == "reading wrapper head":  # the byte string each reading is wrapped in
        index = pick % len(readings)
        wrapped = cbor.dumps(cbor.dumps(readings[index]))
        at = _locate(bundle, wrapped) + offset % (len(wrapped) - len(cbor.dumps(readings[index])))
        expected = (trace.FORMAT, "reading", index)
    elif kind == "entry head":  # an entry's array head: [leaf, type, received_ms, data, height, path]
        index = pick % len(entries)
        at = _locate(bundle, cbor.dumps(entries[index]))
        expected = (trace.FORMAT, "entry", index)
    else:  # the outer array head, the magic and the version
        prefix = cbor.encode_head(4, 6) + cbor.dumps(trace.MAGIC) + cbor.dumps(trace.VERSION)
        assert bundle.startswith(prefix)
        at = offset % len(prefix)
        expected = (trace.FORMAT, "bundle", -1)
    result = verify(_flip(bundle, at, mask))
    assert result.failure_count > 0, "a changed byte at %d (%s) went unnoticed" % (at, kind)
    assert first(result) == expected, result.failures[0].describe()


def test_the_wrong_ledger_key_is_refused_first(bundle: bytes) -> None:
    result = verify(bundle, key=SigningKey(bytes([98]) * 32).public_key)
    assert first(result) == (trace.BLOCKS, "bundle", -1)
    assert result.failure_count == 1, "nothing is checked against the wrong key"


def test_a_truncated_trace_names_the_item_it_ends_in(bundle: bytes) -> None:
    readings = parts(bundle)[5]
    cut = _locate(bundle, readings[20][2]) + 10
    result = verify(bundle[:cut])
    assert first(result) == (trace.FORMAT, "reading", 20)
    assert first(verify(b"not a bundle at all")) == (trace.FORMAT, "bundle", -1)
    assert first(verify(bundle + b"\x00")) == (trace.FORMAT, "bundle", -1)


# ---------------------------------------------------------------- structural surgery on the bundle


def _rebuild(bundle: bytes, section: int, new: list[Any]) -> bytes:
    value = parts(bundle)
    value[section] = new
    return pack(value)


def test_the_bundle_helpers_round_trip(bundle: bytes) -> None:
    assert pack(parts(bundle)) == bundle


def test_a_removed_covered_reading_fails_check_6_at_its_issuance(bundle: bytes) -> None:
    _magic, _version, _meta, _blocks, entries, readings = parts(bundle)
    removed = readings[40]
    result = verify(_rebuild(bundle, 5, readings[:40] + readings[41:]))
    check, item, position = first(result)
    assert (check, item) == (trace.COVERAGE, "entry"), result.failures[0].describe()
    assert entries[position][1] == LEAF_ISSUANCE
    issuance = Issuance.parse(entries[position][3], LEDGER_KEY.public_key)
    assert removed[0] in issuance.readings, "the failure names the issuance that covers the removed reading"
    failure = result.failures[0]
    assert failure.leaf == entries[position][0]  # type: ignore[attr-defined]
    assert "reading leaf %d" % removed[0] in failure.detail


def test_a_removed_issuance_leaves_its_readings_uncovered(bundle: bytes) -> None:
    entries = parts(bundle)[4]
    index = next(i for i, entry in enumerate(entries) if entry[1] == LEAF_ISSUANCE)
    result = verify(_rebuild(bundle, 4, entries[:index] + entries[index + 1 :]))
    assert first(result)[0] == trace.COVERAGE and first(result)[1] == "reading", result.failures[0].describe()


def test_a_dropped_retirement_entry_fails_check_9(bundle: bytes) -> None:
    entries = parts(bundle)[4]
    result = verify(_rebuild(bundle, 4, entries[:-1]))
    assert first(result) == (trace.GRAMS, "bundle", -1), result.failures[0].describe()


# ---------------------------------------------------------------- forgeries a registry could sign


def test_a_retirement_signed_by_another_key_fails_check_4(
    tmp_path: Path, store_url: str | None, request: pytest.FixtureRequest
) -> None:
    ledger = make_traced(tmp_path, location=store_url)
    ledger.registry.issue(ledger.ms)
    prepared = ledger.prepare()
    stranger = SigningKey(bytes([66]) * 32)
    leaf = ledger.record_retirement_unchecked(sign_retirement(prepared, stranger))
    out = tmp_path / "forged.trace"
    ledger.export(out)
    data = out.read_bytes()
    result = verify(data)
    position = entry_position(data, leaf)
    assert position == len(parts(data)[4]) - 1, "the retirement is the last entry"
    assert first(result) == (trace.SIGNATURE, "entry", position), result.failures[0].describe()
    assert result.failures[0].leaf == leaf and "not signed by the key of account" in result.failures[0].detail  # type: ignore[attr-defined]
    assert "leaf %d" % leaf in result.failures[0].describe()
    # The same retirement signed by the account's own key, recorded the same way, verifies.
    again = make_traced(
        tmp_path / "honest", location=request.getfixturevalue("postgres").create_database() if store_url else None
    )
    again.registry.issue(again.ms)
    again.record_retirement_unchecked(sign_retirement(again.prepare(), ACCOUNT_KEY))
    honest = tmp_path / "honest.trace"
    again.export(honest)
    assert verify(honest.read_bytes()).failure_count == 0


def _raise_first_grams(lots: list[list[Any]]) -> list[list[Any]]:
    return [[lots[0][0], lots[0][1], lots[0][2], lots[0][3] + 1, lots[0][4]], *lots[1:]]


def test_an_issuance_with_one_gram_too_many_fails_check_8(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_traced(tmp_path, location=store_url)
    dev = ledger.devices[0].dev
    forged = ledger.issue_by_hand(dev, BASE, lots=_raise_first_grams)
    ledger.registry.issue(ledger.ms)  # the rest, honestly, carrying on from the forged lot's carry
    ledger.retire(1500)  # oldest slot first: the forged lot is among those retired
    out = tmp_path / "forged.trace"
    ledger.export(out)
    data = out.read_bytes()
    result = verify(data)
    assert first(result) == (trace.ISSUANCE, "entry", entry_position(data, forged)), result.failures[0].describe()
    assert result.failures[0].leaf == forged and "do not follow" in result.failures[0].detail  # type: ignore[attr-defined]
    # The honest ledger's audit catches it too.
    with pytest.raises(LedgerError, match="leaf %d" % forged):
        verify_ledger(ledger.ingest.store, LEDGER_KEY.public_key, "crev.test/ledger")


def test_a_reading_left_out_of_an_issuance_that_still_counts_it_fails_check_8(
    tmp_path: Path, store_url: str | None
) -> None:
    ledger = make_traced(tmp_path, location=store_url)
    dev = ledger.devices[0].dev
    rows = ledger.slot_readings(dev, BASE)
    left_out = rows[10][0]
    # The lots are computed from all 30 readings of the slot; the list names 29.
    forged = ledger.issue_by_hand(dev, BASE, covered=lambda leaves: [leaf for leaf in leaves if leaf != left_out])
    ledger.registry.issue(ledger.ms)
    ledger.retire(1500)
    out = tmp_path / "forged.trace"
    ledger.export(out)
    data = out.read_bytes()
    result = verify(data)
    assert first(result) == (trace.ISSUANCE, "entry", entry_position(data, forged)), result.failures[0].describe()
    assert "do not follow from its 29 readings" in result.failures[0].detail
    readings = [r[0] for r in parts(data)[5]]
    assert left_out not in readings, "the left-out reading is in no issuance, so not in the trace"


def test_a_second_issuance_of_an_issued_reading_fails_the_ledger_audit(tmp_path: Path, store_url: str | None) -> None:
    ledger = make_traced(tmp_path, location=store_url)
    ledger.registry.issue(ledger.ms)
    counts, _state = verify_ledger(ledger.ingest.store, LEDGER_KEY.public_key, "crev.test/ledger")
    assert counts["issuances"] == 6
    dev = ledger.devices[1].dev
    # A supplement of a slot issued already, naming its readings again: validly signed, still false.
    twice = ledger.issue_by_hand(dev, BASE + 1800)
    with pytest.raises(LedgerError, match=r"leaf %d \(issuance\).*issued twice" % twice):
        verify_ledger(ledger.ingest.store, LEDGER_KEY.public_key, "crev.test/ledger")


def test_now_is_after_every_reading() -> None:
    # The recipe's readings end before the slot that holds NOW: ingest would refuse later ones.
    assert BASE + 100 * 60 <= NOW


def test_a_changed_origin_in_meta_is_detected(bundle: bytes) -> None:
    meta = cbor.dumps(parts(bundle)[2])
    at = _locate(bundle, meta) + meta.index(b"crev.test") + 1  # "crev" -> "csev": still valid text
    assert verify(_flip(bundle, at, 1)).failure_count > 0


@pytest.mark.slow
def test_worker_processes_give_the_same_answer(tmp_path: Path) -> None:
    """Enough readings (2 × 320) that `--jobs 2` hands batches to worker processes."""
    import io

    from ingest_support import Device, LocalIngest
    from trace_support import ACCOUNT, ACCOUNT_KEY, FACTOR_MG, PLACE, SITE, Traced

    from crev_cli.trace_verify import verify_trace
    from crev_market.registry import Registry

    ingest = LocalIngest(tmp_path)
    start = (NOW // 1800) * 1800 - 12 * 3600  # 320 one-minute readings end well before now
    devices = [Device("dgc-a-000%d" % i, SigningKey(bytes([3 + i]) * 32), t1=start) for i in range(2)]
    for device in devices:
        ingest.enroll(device)
    for _ in range(320):
        for device in devices:
            assert ingest.send(device.next()).status == "accepted"
    ledger = Traced(ingest, Registry(ingest.store, ingest.ledger, FACTOR_MG, "default"), devices)
    ledger.seal()
    ledger.registry.add_account(ACCOUNT, "Owner One", ACCOUNT_KEY.public_key, True, ledger.ms)
    ledger.registry.add_site(SITE, ACCOUNT, PLACE, [d.dev for d in devices], {}, None, None, None, ledger.ms)
    ledger.registry.issue(ledger.ms)
    ledger.retire(sum(lot[7] for lot in ingest.store.holdings(ACCOUNT)))  # every lot: every reading traced
    out = tmp_path / "big.trace"
    ledger.export(out)
    data = out.read_bytes()
    alone = verify_trace(io.BytesIO(data), LEDGER_KEY.public_key, 1)
    parallel = verify_trace(io.BytesIO(data), LEDGER_KEY.public_key, 2)
    assert alone.failure_count == parallel.failure_count == 0
    assert alone.readings == parallel.readings > 512 and alone.trace == parallel.trace
    value = parts(data)
    value[5][-100][2] = value[5][-100][2][:-1] + bytes([value[5][-100][2][-1] ^ 1])  # a reading's signature
    tampered = pack(value)
    one = verify_trace(io.BytesIO(tampered), LEDGER_KEY.public_key, 1)
    two = verify_trace(io.BytesIO(tampered), LEDGER_KEY.public_key, 2)
    assert first(one) == first(two) == (trace.INCLUSION, "reading", len(value[5]) - 100)
