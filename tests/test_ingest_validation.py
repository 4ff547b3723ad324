"""Hostile input: every case of SPEC §5 is quarantined with its reason code."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import NOW, Device, LocalIngest, resign

from crev import cbor
from crev.cose import sig_structure
from crev.keys import SigningKey

A = SigningKey(bytes([1]) * 32)
B = SigningKey(bytes([2]) * 32)


@pytest.fixture
def ingest(tmp_path: Path) -> LocalIngest:
    return LocalIngest(tmp_path)


def enrolled(ingest: LocalIngest, name: str = "dgc-site-a001", key: SigningKey = A) -> Device:
    device = Device(name, key)
    ingest.enroll(device)
    return device


def quarantined(ingest: LocalIngest) -> list[tuple[str, str, bytes]]:
    rows = ingest.store.db.execute("SELECT reason, topic, raw FROM quarantine ORDER BY id").fetchall()
    return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]


def test_good_readings_are_accepted_and_gaps_tracked(ingest: LocalIngest) -> None:
    device = enrolled(ingest)
    first, second = device.next(), device.next()
    third = device.next()
    fourth = device.next()
    assert ingest.send(first).status == "accepted"
    assert ingest.send(second).status == "accepted"
    assert ingest.send(fourth).status == "accepted"
    assert ingest.store.open_gaps(device.dev) == [(device.dev, 2, 2)]
    assert ingest.send(third).status == "accepted"  # late backfill closes the gap
    assert ingest.store.open_gaps(device.dev) == []
    assert ingest.store.db.execute("SELECT count(*) FROM series").fetchone()[0] == 3  # seq 0 has no baseline


@pytest.mark.parametrize(
    "case",
    [
        "forged_signature",
        "unknown_key",
        "revoked_key",
        "conflict",
        "non_canonical",
        "malformed",
        "oversized",
        "future_timestamp",
        "device_mismatch",
        "bad_alg",
        "bad_schema",
        "mismatch_recompute",
        "broken_prev",
    ],
)
def test_hostile_input_is_quarantined_with_its_reason(ingest: LocalIngest, case: str) -> None:
    device = enrolled(ingest)
    assert ingest.send(device.next()).status == "accepted"
    expected = case.upper()
    topic = None
    raw: bytes
    if case == "forged_signature":
        forged = bytearray(device.next())
        forged[-1] ^= 1
        raw, expected = bytes(forged), "BAD_SIGNATURE"
    elif case == "unknown_key":
        raw = Device(device.dev, B).next()
    elif case == "revoked_key":
        ingest.revoke(device, device.t1 + 30)
        raw = device.next()
    elif case == "conflict":
        device.next(advance=False)
        raw = device.next(gen=1, advance=False)  # same seq, other bytes
        assert ingest.send(device.next(advance=False)).status == "accepted"
    elif case == "non_canonical":
        # Write seq (key 2, a small number) in a two-byte form: valid CBOR, not deterministic.
        payload = _payload(device.next(advance=False))
        at = payload.index(bytes([0x02, 0x01]))
        raw = resign({}, A, payload[: at + 1] + bytes([0x18, 0x01]) + payload[at + 2 :])
    elif case == "malformed":
        raw = b"\x00not a reading"
    elif case == "oversized":
        raw = b"\xd2" + b"\x00" * 20000
        expected = "MALFORMED"
    elif case == "future_timestamp":
        device.t1 = NOW + 3600
        raw = device.next()
    elif case == "device_mismatch":
        enrolled(ingest, "dgc-site-b002", B)
        raw = device.next()
        topic = "crev/v1/dgc-site-b002/reading"
    elif case == "bad_alg":
        fields = cbor.loads(_payload(device.next(advance=False)))
        raw = _with_alg(fields, -7)
    elif case == "bad_schema":
        raw = resign({0: 1, 1: device.dev}, A)
    elif case == "mismatch_recompute":
        reading_bytes = device.next(advance=False)
        fields = cbor.loads(_payload(reading_bytes))
        assert isinstance(fields, dict)
        generation = fields[7][0][3]
        fields[7] = [
            [0, "PV-" + device.dev, 1, generation + 5000],
            fields[7][1],
            fields[7][2],
        ]  # counters disagree with e
        raw = resign(fields, A)
    else:  # broken_prev
        fields = cbor.loads(_payload(device.next(advance=False)))
        assert isinstance(fields, dict)
        fields[3] = bytes(32)
        raw, expected = resign(fields, A), "CONFLICT"
    outcome = ingest.send(raw, topic=topic or "crev/v1/%s/reading" % device.dev)
    assert outcome.status == "quarantined"
    assert outcome.reason == expected, outcome.detail
    assert quarantined(ingest)[-1][0] == expected
    assert quarantined(ingest)[-1][2] == raw, "the raw bytes are kept"
    if expected == "CONFLICT":
        assert ingest.store.db.execute("SELECT count(*) FROM alarms WHERE kind = 'CONFLICT'").fetchone()[0] == 1


def _payload(cose: bytes) -> bytes:
    message = cbor.loads(cose)
    assert isinstance(message, cbor.Tag) and isinstance(message.value, list)
    payload = message.value[2]
    assert isinstance(payload, bytes)
    return payload


def _with_alg(fields: object, alg: int) -> bytes:
    protected = cbor.dumps({1: alg, 4: A.kid})
    body = cbor.dumps(fields)
    return cbor.dumps(cbor.Tag(18, [protected, {}, body, A.sign(sig_structure(protected, body))]))


def test_replay_is_a_counted_duplicate_not_stored_again(ingest: LocalIngest) -> None:
    device = enrolled(ingest)
    raw = device.next()
    assert ingest.send(raw).status == "accepted"
    outcome = ingest.send(raw)
    assert (outcome.status, outcome.reason) == ("duplicate", "DUPLICATE")
    assert ingest.store.stat("duplicates") == 1
    assert ingest.store.db.execute("SELECT count(*) FROM readings").fetchone()[0] == 1
    assert quarantined(ingest) == []


def test_a_reading_signed_before_revocation_is_still_accepted(ingest: LocalIngest) -> None:
    device = enrolled(ingest)
    early = device.next()
    ingest.revoke(device, device.t1 + 1)
    assert ingest.send(early).status == "accepted"
    assert ingest.send(device.next()).reason == "REVOKED_KEY"


@st.composite
def hostile_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["random", "mutated", "resigned"]))
    device = Device("dgc-site-a001", A, t1=NOW - draw(st.integers(0, 10**6)))
    good = device.next(
        gen=draw(st.integers(0, 10**9)), imp=draw(st.integers(0, 10**9)), exp=draw(st.integers(0, 10**9))
    )
    if kind == "random":
        raw = draw(st.binary(max_size=600))
    elif kind == "mutated":
        mutated = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            mutated[draw(st.integers(0, len(mutated) - 1))] = draw(st.integers(0, 255))
        raw = bytes(mutated)
    else:
        payload = bytearray(_payload(good))
        payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
        raw = resign({}, A, bytes(payload))
    topic = draw(st.sampled_from(["crev/v1/dgc-site-a001/reading", "crev/v1/dgc-other-9/reading", "crev/x"]))
    return topic, raw


@given(hostile_payloads())
@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_ten_thousand_hostile_payloads_never_crash_ingest(
    shared_ingest: LocalIngest, message: tuple[str, bytes]
) -> None:
    topic, raw = message
    before = _total(shared_ingest)
    outcome = shared_ingest.send(raw, topic=topic)
    assert outcome.status in ("accepted", "duplicate", "quarantined")
    after = _total(shared_ingest)
    assert after == before + (0 if outcome.status == "duplicate" else 1), "each payload is stored or quarantined"


def _total(ingest: LocalIngest) -> int:
    db = ingest.store.db
    return int(db.execute("SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM quarantine)").fetchone()[0])


@pytest.fixture(scope="module")
def shared_ingest(tmp_path_factory: pytest.TempPathFactory) -> LocalIngest:
    ingest = LocalIngest(tmp_path_factory.mktemp("fuzz"))
    ingest.enroll(Device("dgc-site-a001", A))
    ingest.store.db.execute("PRAGMA synchronous=OFF")  # 10,000 fsyncs would only measure the disk
    return ingest
