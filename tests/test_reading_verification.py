"""Reason codes of SPEC §5 steps (1), (2), (4) and (5), and COSE interop with pycose."""

import pytest
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

from crev import cbor, dgcc
from crev.cose import sig_structure, sign1
from crev.errors import MisuseError, ReadingError
from crev.keys import SigningKey, key_id
from crev.reading import ZERO_HASH, ChainHead, Reading, verify_reading

SEED = bytes(range(32))
KEY = SigningKey(SEED)
OTHER = SigningKey(bytes(32))
CHANNELS = [(dgcc.ROLE_GENERATION, "PV-1", dgcc.SOURCE_SOLAR, 5000), (dgcc.ROLE_IMPORT, "G-1", 0, 100)]


def first_reading() -> Reading:
    return ChainHead().next_reading("dgc-test-0001", 1_790_000_060, 1, CHANNELS, "crev-test/1", t0=1_790_000_000)


def envelope(protected: bytes, payload: bytes, key: SigningKey = KEY, unprotected: object = None) -> bytes:
    signature = key.sign(sig_structure(protected, payload))
    return cbor.dumps(cbor.Tag(18, [protected, {} if unprotected is None else unprotected, payload, signature]))


def reason(raw: bytes, public_key: bytes = KEY.public_key) -> str:
    with pytest.raises(ReadingError) as caught:
        verify_reading(raw, public_key)
    return caught.value.code


def test_good_reading_verifies_and_parses() -> None:
    cose = first_reading().sign(KEY)
    reading = verify_reading(cose, KEY.public_key)
    assert reading.flags == dgcc.NO_BASELINE
    assert reading.energies is None
    assert reading.cose is not None and reading.cose.kid == key_id(KEY.public_key)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        cbor.dumps([1, 2, 3, 4]),
        cbor.dumps(cbor.Tag(17, [b"", {}, b"", b""])),
        cbor.dumps(cbor.Tag(18, [b""])),
    ],
    ids=["empty", "int", "untagged-array", "wrong-tag", "short-array"],
)
def test_not_a_cose_sign1_is_malformed(raw: bytes) -> None:
    assert reason(raw) == "MALFORMED"


def test_unprotected_header_must_be_empty() -> None:
    payload = first_reading().to_payload()
    assert reason(envelope(cbor.dumps({1: -8, 4: KEY.kid}), payload, unprotected={4: KEY.kid})) == "MALFORMED"


def test_non_deterministic_envelope_is_malformed() -> None:
    # Same signed content, but the payload length written in a longer form:
    # a second byte form of one reading must not be accepted.
    good = first_reading().sign(KEY)
    payload = first_reading().to_payload()
    position = good.index(payload) - 2  # 0x58 NN header of the payload bstr
    assert good[position] == 0x58
    longer = good[:position] + bytes([0x59, 0x00]) + good[position + 1 :]
    assert reason(longer) == "MALFORMED"


@pytest.mark.parametrize("alg", [-7, -35, 1, "EdDSA"])
def test_other_algorithms_are_bad_alg(alg: object) -> None:
    raw = envelope(cbor.dumps({1: alg, 4: KEY.kid}), first_reading().to_payload())
    assert reason(raw) == "BAD_ALG"


def test_rfc9864_ed25519_algorithm_is_accepted() -> None:
    raw = envelope(cbor.dumps({1: -19, 4: KEY.kid}), first_reading().to_payload())
    assert verify_reading(raw, KEY.public_key).seq == 0


def test_wrong_key_is_bad_signature() -> None:
    assert reason(first_reading().sign(OTHER), KEY.public_key) == "BAD_SIGNATURE"


def test_non_canonical_payload_is_rejected_after_the_signature() -> None:
    fields = first_reading().to_map()
    canonical = cbor.dumps(fields)
    # Re-encode seq (0) in a two-byte form: valid CBOR, not deterministic.
    seq_at = canonical.index(bytes([0x02, 0x00]))
    sloppy = canonical[: seq_at + 1] + bytes([0x18, 0x00]) + canonical[seq_at + 2 :]
    assert reason(envelope(cbor.dumps({1: -8, 4: KEY.kid}), sloppy)) == "NON_CANONICAL"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update({1: "Bad_Device"}), "dev"),
        (lambda m: m.update({0: 2}), "version"),
        (lambda m: m.pop(11), "lacks key 11"),
        (lambda m: m.update({13: 1}), "unknown key"),
        (lambda m: m.update({12: 1}), "sm must be"),
        (lambda m: m.update({12: ["SM-1", 1_790_000_000, 5]}), "sm must be"),
        (lambda m: m.update({12: ["", 1_789_999_200, 5, 0]}), "meter_id"),
        (lambda m: m.update({12: [7, 1_789_999_200, 5, 0]}), "meter_id"),
        (lambda m: m.update({12: ["SM-1", 1_790_000_000, 5, 0]}), "30-minute mark"),
        (lambda m: m.update({12: ["SM-1", -1800, 5, 0]}), "30-minute mark"),
        (lambda m: m.update({12: ["SM-1", 1_789_999_200, -5, 0]}), "unsigned"),
        (lambda m: m.update({12: ["SM-1", 1_789_999_200, 5, True]}), "unsigned"),
        (lambda m: m.update({5: m[4]}), "t1 must be after t0"),
        (lambda m: m.update({3: b"\x01" * 32}), "zero bytes at seq 0"),
        (lambda m: m.update({10: 128 | 8}), "unknown bits"),
        (lambda m: m.update({10: 0}), "absent without"),
        (lambda m: m.update({7: [[3, "B-1", 0, 5]]}), "role"),
        (lambda m: m.update({7: [[0, "PV-1", 0, 5]]}), "renewable source"),
        (lambda m: m.update({7: []}), "1..32 channels"),
    ],
)
def test_schema_violations_are_bad_schema(change: object, expected: str) -> None:
    fields = first_reading().to_map()
    change(fields)  # type: ignore[operator]
    raw = envelope(cbor.dumps({1: -8, 4: KEY.kid}), cbor.dumps(fields))
    with pytest.raises(ReadingError) as caught:
        verify_reading(raw, KEY.public_key)
    assert caught.value.code == "BAD_SCHEMA"
    assert expected in caught.value.detail


def test_smart_meter_values_round_trip() -> None:
    sm = ["SM0000000001", 1_789_999_200, 12_300_000, 400_000]
    reading = ChainHead().next_reading(
        "dgc-test-0001", 1_790_000_060, 1, CHANNELS, "crev-test/1", t0=1_790_000_000, smart_meter=sm
    )
    raw = reading.sign(KEY)
    back = verify_reading(raw, KEY.public_key)
    assert back.smart_meter == sm
    assert back.cose is not None
    payload = cbor.loads(back.cose.payload)
    assert isinstance(payload, dict) and payload[12] == sm
    assert back.describe()["smart_meter"] == {
        "meter_id": "SM0000000001",
        "t": 1_789_999_200,
        "import_mwh": 12_300_000,
        "export_mwh": 400_000,
    }
    assert "smart_meter" not in first_reading().describe()
    assert 12 not in first_reading().to_map(), "key 12 is optional and absent without a smart meter"


def test_inconsistent_energies_are_bad_schema() -> None:
    head = ChainHead(5, b"\x07" * 32, 1_790_000_000, CHANNELS)
    after = [(0, "PV-1", 1, 6000), (1, "G-1", 0, 300)]
    fields = head.next_reading("dgc-test-0001", 1_790_000_060, 1, after, "crev-test/1").to_map()
    assert fields[8] == [1000, 200, 0, 1000, 1200]
    for bad_e, bad_gs in (
        [[1000, 200, 0, 1000, 1300], None],
        [None, [["PV-1", 999]]],
        [[1000, 200, 0, 900, 1100], None],
    ):
        tampered = dict(fields)
        if bad_e is not None:
            tampered[8] = bad_e
        if bad_gs is not None:
            tampered[9] = bad_gs
        raw = envelope(cbor.dumps({1: -8, 4: KEY.kid}), cbor.dumps(tampered))
        assert reason(raw) == "BAD_SCHEMA"


def test_chain_links_and_refuses_time_going_backwards() -> None:
    first = first_reading()
    cose = first.sign(KEY)
    head = ChainHead().advance(first, cose)
    assert head.next_seq == 1
    assert head.prev_hash != ZERO_HASH
    assert ChainHead.after(cose).prev_hash == head.prev_hash
    second = head.next_reading("dgc-test-0001", 1_790_000_120, 1, CHANNELS, "crev-test/1")
    assert second.t0 == first.t1 and second.prev == head.prev_hash
    with pytest.raises(MisuseError):
        head.next_reading("dgc-test-0001", first.t1, 1, CHANNELS, "crev-test/1")
    with pytest.raises(MisuseError):
        head.next_reading("dgc-test-0001", 1_790_000_120, 1, CHANNELS, "crev-test/1", adapter_flags=dgcc.COUNTER_RESET)


def test_pycose_verifies_our_readings() -> None:
    cose = first_reading().sign(KEY)
    decoded = Sign1Message.decode(cose)
    decoded.key = OKPKey(crv=Ed25519, x=KEY.public_key)
    assert decoded.verify_signature()


def test_we_verify_pycose_messages() -> None:
    message = Sign1Message(phdr={Algorithm: EdDSA, KID: KEY.kid}, payload=first_reading().to_payload())
    message.key = OKPKey(crv=Ed25519, d=SEED, x=KEY.public_key)
    raw = message.encode()
    assert raw == sign1(first_reading().to_payload(), KEY)
    assert verify_reading(raw, KEY.public_key).dev == "dgc-test-0001"
