"""The ECHONET Lite, smart-meter and SKSTACK vectors (tests/vectors/echonet) on
CPython and on real MicroPython, which must agree result for result."""

import json
from pathlib import Path
from typing import Any

import pytest
from echonet import runner_echonet
from support import ROOT, run_micropython

FOLDER = ROOT / "tests" / "vectors" / "echonet"

FRAMES: dict[str, Any] = json.loads((FOLDER / "frames.json").read_text())
METER: dict[str, Any] = json.loads((FOLDER / "smartmeter.json").read_text())
LINES: list[dict[str, Any]] = json.loads((FOLDER / "skstack.json").read_text())


def _normal(value: Any) -> Any:
    # A JSON round trip, so that tuples and lists compare equal.
    return json.loads(json.dumps(value))


@pytest.mark.parametrize("case", FRAMES["valid"], ids=[c["name"] for c in FRAMES["valid"]])
def test_valid_frame(case: dict[str, Any]) -> None:
    result = runner_echonet.frame_result(case["hex"])
    assert "error" not in result, result
    assert result["tid"] == case["tid"]
    assert result["seoj"] == case["seoj"].lower()
    assert result["deoj"] == case["deoj"].lower()
    assert result["esv"] == case["esv"]
    assert result["props"] == [[epc, edt.lower()] for epc, edt in case["props"]]
    assert result["encoded"] == case["hex"].lower(), "decode then encode must give the same bytes"


@pytest.mark.parametrize("case", FRAMES["invalid"], ids=[c["name"] for c in FRAMES["invalid"]])
def test_invalid_frame(case: dict[str, Any]) -> None:
    assert runner_echonet.frame_result(case["hex"]) == {"error": case["code"]}


def test_smartmeter_vectors() -> None:
    results = runner_echonet.smartmeter_results(METER)
    expected: list[Any] = []
    for case in METER["scale"]:
        numerator, denominator = {0: (1, 1), 1: (1, 10), 2: (1, 100), 3: (1, 1000), 4: (1, 10000)}.get(
            case["unit"], (10 ** (case["unit"] - 9), 1)
        )
        expected.append(["scale", case["mwh"], case["coefficient"] * 10**6 * numerator // denominator])
    for case in METER["delta"]:
        expected.append(["delta", case["steps"], case["mwh"]])
    for case in METER["errors"]:
        expected.append(["error", {"error": case["code"]}])
    for case in METER["fixed"]:
        expected.append(["fixed", case["t"], case["raw"], case["edt"].lower()])
    for case in METER["history2"]:
        expected.append(["history2", case["points"]])
    for case in METER["history1"]:
        expected.append(["history1", case["day"], case["values"], case["first_t"], 47 * 1800])
    assert _normal(results) == _normal(expected)


@pytest.mark.parametrize("case", LINES, ids=[c["name"] for c in LINES])
def test_skstack_lines(case: dict[str, Any]) -> None:
    for chunk in (0, 1, 7):
        assert _normal(runner_echonet.skstack_result(case, chunk)) == _normal(case["expect"]), "chunk %d" % chunk


@pytest.mark.parametrize("model", ["bp35a1", "bp35c0"])
def test_driver_transcript(model: str) -> None:
    steps = runner_echonet.driver_transcript(model)
    written = bytes.fromhex("".join(step[0] for step in steps))
    events = [event for step in steps for event in step[1]]
    assert written.startswith(b"SKRESET\r\nSKSREG SFE 0\r\nROPT\r\n")
    assert written.count(b"SKSENDTO") == 2
    # The RX comes 50 ms after EVENT 33, within the 100 ms backoff before sends resume.
    assert [e[0] for e in events] == ["JOINED", "BLOCKED", "RESUMED", "BLOCKED", "RX", "RESUMED"]
    assert events[-2] == ["RX", "1081"]
    assert steps[-1][2] == "READY"


def test_micropython_agrees_with_cpython(tmp_path: Path) -> None:
    files = {
        "/vectors/" + name: FOLDER / name
        for name in ("runner_echonet.py", "frames.json", "smartmeter.json", "skstack.json")
    }
    out = run_micropython(FOLDER / "micropython_main.py", files)
    on_micropython = [json.loads(line) for line in out.splitlines()]
    on_cpython = _normal(runner_echonet.run_all(FRAMES, METER, LINES))
    assert len(on_micropython) == len(on_cpython)
    for mp_result, cp_result in zip(on_micropython, on_cpython, strict=True):
        assert mp_result == cp_result, cp_result[1]
