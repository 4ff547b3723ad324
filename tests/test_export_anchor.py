"""Which block proves an exported bundle, when the witnesses have not yet cosigned the newest one.

A bundle is proven by the ledger's newest block, unless the witnesses have
not answered for it yet and the newest block they did cosign already holds
all the bundle needs: then by that one, so the bundle carries their
cosignatures. A bundle that does need the newest block goes out without
them, and the summary says which block they have reached.
"""

from pathlib import Path

from bundle_support import START, make_ledger, parts

from crev import evidence, note
from crev.keys import SigningKey
from crev_ingest.witnessing import cosignatures

WITNESS_KEY = SigningKey(bytes([91]) * 32)
WITNESS = note.VerifierKey("witness.test", note.SIG_COSIGNATURE_V1, WITNESS_KEY.public_key)
LATER = 2**40  # every reading of the ledger is before it


def test_a_bundle_is_proven_by_the_newest_cosigned_block_that_holds_it(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path, readings=5)
    store = ledger.ingest.store
    # The witness cosigns block 1, as ingest's witnessing thread records it.
    height, _hash, size = store.last_block()  # type: ignore[misc]
    line = note.cosign_v1(note.parse_note(store.checkpoint(height)).text, WITNESS.name, WITNESS_KEY, 1_800_000_000)
    with store.transaction():
        store.db.execute(
            "INSERT INTO cosignatures (height, witness, size, timestamp, line) VALUES (?, ?, ?, ?, ?)",
            (height, WITNESS.name, size, 1_800_000_000, line.line()),
        )
    # Block 2 holds only the other device's readings, and no witness has cosigned it yet.
    for _ in range(3):
        assert ledger.ingest.send(ledger.other.next()).status == "accepted"
    ledger.seal()
    assert store.last_block()[0] == height + 1  # type: ignore[index]

    cosigned = ledger.export(tmp_path / "cosigned.cbor", START, LATER)
    assert (cosigned.cosignatures, cosigned.cosigned_height) == (1, None)
    checkpoint = parts((tmp_path / "cosigned.cbor").read_bytes())[2][evidence.M_CHECKPOINT]
    assert note.cosigners(checkpoint, [WITNESS]) == [(WITNESS.name, 1_800_000_000)]
    assert note.parse_checkpoint(note.parse_note(checkpoint).text).size == size

    # A reading of DEV in block 3: only block 3 proves it, which the witness has not cosigned.
    assert ledger.ingest.send(ledger.device.next()).status == "accepted"
    ledger.seal()
    newest = ledger.export(tmp_path / "newest.cbor", START, LATER)
    assert (newest.cosignatures, newest.cosigned_height) == (0, height)
    checkpoint = parts((tmp_path / "newest.cbor").read_bytes())[2][evidence.M_CHECKPOINT]
    assert note.cosigners(checkpoint, [WITNESS]) == []
    assert note.parse_checkpoint(note.parse_note(checkpoint).text).size == store.last_block()[2]  # type: ignore[index]
    assert newest.in_range == cosigned.in_range + 1
    assert cosignatures(store, height) == [line.line()]
