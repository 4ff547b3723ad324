"""Smart-meter reconciliation in the portable core (crev.reconcile, SPEC §13):
the hand-made vectors on CPython and on real MicroPython, and the verdicts
from signed readings."""

import json
from typing import Any

import pytest
from reconcile import runner_reconcile
from support import ROOT, run_micropython

from crev import reconcile
from crev.errors import MisuseError
from crev.reading import ChainHead, Reading

FOLDER = ROOT / "tests" / "vectors" / "reconcile"
DOC: dict[str, Any] = json.loads((FOLDER / "reconcile.json").read_text())
S = 1_790_001_000


@pytest.mark.parametrize("case", DOC["cases"], ids=[c["name"] for c in DOC["cases"]])
def test_vector(case: dict[str, Any]) -> None:
    slot_t0, verdict, grid, smart, tolerance, detail = runner_reconcile.case_result(case)
    assert slot_t0 == case["slot_t0"]
    assert [verdict, grid, smart, tolerance] == case["expect"], detail
    assert (detail == "") == (verdict == reconcile.OK), "every verdict but OK says why"


def test_micropython_agrees_with_cpython() -> None:
    files = {"/vectors/" + name: FOLDER / name for name in ("runner_reconcile.py", "reconcile.json")}
    out = run_micropython(FOLDER / "micropython_main.py", files)
    on_micropython = [json.loads(line) for line in out.splitlines()]
    assert on_micropython == json.loads(json.dumps(runner_reconcile.run_all(DOC)))
    assert len(on_micropython) == len(DOC["cases"])


def test_slot_of() -> None:
    assert reconcile.slot_of(S + 1) == S
    assert reconcile.slot_of(S + 1800) == S, "a slot is (S, S+1800]"
    assert reconcile.slot_of(S + 1801) == S + 1800


def test_params_are_checked() -> None:
    for bad in ({"basis_points": -1}, {"basis_points": 10001}, {"step_mwh": 0}, {"digits": 9}, {"steps": True}):
        with pytest.raises(MisuseError):
            reconcile.Params(**bad)
    assert reconcile.Params(digits=6, step_mwh=100_000).modulus_mwh == 10**11
    assert reconcile.Params().tolerance(0) == 200_000, "the default: two 0.1 kWh steps"
    with pytest.raises(MisuseError):
        reconcile.reconcile_slot(S + 60, [], None, None, reconcile.Params())
    with pytest.raises(MisuseError):
        reconcile.reconcile_slot(S, [], ["SM-1", S + 1800, 0, 0], None, reconcile.Params())


def _readings(drift_pct: float, import_per_min: int = 20_000) -> list[Reading]:
    """Two slots and a bit of one device, one reading a minute, each carrying the latest
    fixed-time values of a smart meter counting ``drift_pct`` % more than the grid meter."""
    head = ChainHead()
    grid_import = 0
    sm_import = 7_000_000
    latest = None
    out = []
    for minute in range(1, 62):
        t1 = S + 60 * minute
        channels = [(0, "PV-1", 1, 10_000 * minute), (1, "G-1", 0, grid_import), (2, "G-1", 0, 0)]
        if (t1 - 60) % 1800 == 0:  # the push of the mark before arrives a minute later
            latest = ["SM-7", t1 - 60, sm_import // 1000 * 1000, 0]
        reading = head.next_reading("dgc-test-0001", t1, 1, channels, "t/1", t0=t1 - 60, smart_meter=latest)
        out.append(reading)
        head = head.advance(reading, reading.to_payload())
        grid_import += import_per_min
        sm_import += import_per_min * (1000 + int(drift_pct * 10)) // 1000
    return out


@pytest.mark.parametrize(("drift", "verdict"), [(0.5, reconcile.OK), (3.0, reconcile.SMART_METER_MISMATCH)])
def test_verdicts_from_readings(drift: float, verdict: str) -> None:
    readings = _readings(drift)
    params = reconcile.Params(step_mwh=1000, digits=8)
    verdicts = reconcile.reconcile_readings(list(reversed(readings)), params)
    # The first reading has no baseline, so the first slot is unchecked; the second is complete.
    assert [v.verdict for v in verdicts] == [reconcile.UNCHECKED, verdict]
    second = verdicts[1]
    assert second.slot_t0 == S + 1800
    assert second.grid == (600_000, 0)
    assert second.smart is not None and abs(second.smart[0] - 600_000 * (100 + drift) / 100) <= 1000
    assert second.meter_id == "SM-7"
