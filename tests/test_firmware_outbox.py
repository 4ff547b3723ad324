"""The firmware's flash outbox under power cuts, on real MicroPython.

tests/micropython/outbox_powercut.py cuts the power at every change the
outbox makes to the filesystem (each append, each temporary write and
rename, each segment removal), once before the bytes land and once halfway
through them, then boots again from what is on the filesystem. The
filesystem is MicroPython's own; only the power cut is simulated.
"""

import hashlib
import json
from typing import Any

import pytest
from support import ROOT, run_micropython

from crev.reading import ZERO_HASH, Reading, verify_reading


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    out = run_micropython(ROOT / "tests" / "micropython" / "outbox_powercut.py")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _chain(published: list[str]) -> dict[int, bytes]:
    from crev.keys import SigningKey

    public = SigningKey(bytes([5]) * 32).public_key
    by_seq: dict[int, bytes] = {}
    for hex_cose in published:
        cose = bytes.fromhex(hex_cose)
        reading = verify_reading(cose, public)
        if reading.seq in by_seq:
            assert by_seq[reading.seq] == cose, "seq %d published with two different contents" % reading.seq
        by_seq[reading.seq] = cose
    return by_seq


def test_every_cut_point_is_exercised(runs: list[dict[str, Any]]) -> None:
    baseline = runs[0]
    assert baseline["cut_at"] == 0 and baseline["changes"] >= 17
    cuts = [(r["cut_at"], r["torn"]) for r in runs[1:] if "cut_at" in r]
    assert cuts == [(k, t) for k in range(1, baseline["changes"] + 1) for t in (0, 1)]
    assert any(r["boots"] == 2 for r in runs[1:] if "cut_at" in r)


def test_no_cut_ever_reuses_a_seq_or_breaks_the_chain(runs: list[dict[str, Any]]) -> None:
    for run in (r for r in runs if "cut_at" in r):
        where = "cut at change %d (%s)" % (run["cut_at"], "torn" if run["torn"] else "clean")
        by_seq = _chain(run["published"])
        assert sorted(by_seq) == list(range(9)), where
        previous = ZERO_HASH
        for seq in range(9):
            reading = Reading.from_cose(by_seq[seq])
            assert reading.prev == previous, where
            previous = hashlib.sha256(by_seq[seq]).digest()
        assert run["next_seq"] == 9, where
        # Everything after the last acknowledgement is still on flash, to be sent again.
        assert run["acked"] == 7 and run["pending"] == [8], where


def test_a_reboot_marks_the_next_reading_restarted(runs: list[dict[str, Any]]) -> None:
    rebooted = [r for r in runs[1:] if "cut_at" in r and r["boots"] == 2]
    assert rebooted
    flagged = 0
    for run in rebooted:
        flags = [Reading.from_cose(bytes.fromhex(c)).flags for c in run["published"]]
        flagged += any(f & 32 for f in flags)
    assert flagged == len(rebooted), "each boot after a cut flags the next new reading RESTARTED"


def test_a_full_ring_refuses_instead_of_dropping(runs: list[dict[str, Any]]) -> None:
    full = runs[-1]
    assert full["full_after"] == 9 and "full" in full["refused"]
    assert full["full_after_ack"] is False, "acknowledgements free whole segments"


def test_a_cut_while_a_torn_record_is_cut_off_loses_nothing(runs: list[dict[str, Any]]) -> None:
    recuts = [r for r in runs if "recovery_cut" in r]
    assert sorted((r["recovery_cut"], r["torn"]) for r in recuts) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for run in recuts:
        where = "cut at change %d of the recovery (%s)" % (run["recovery_cut"], "torn" if run["torn"] else "clean")
        assert run["torn_append"] and run["cut"] and run["recovery_changes"] >= run["recovery_cut"], where
        # The two whole readings are kept, the torn third is gone, and the chain goes on after them.
        assert run["after_cut"] == {"next_seq": 2, "pending": [0, 1]}, where
        assert run["after_append"] == [0, 1, 2], where
        assert not any(name.endswith(".tmp") for name in run["files"]), where
