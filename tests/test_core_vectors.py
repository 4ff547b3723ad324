"""The shared core vectors on CPython (both Ed25519 backends) and on real MicroPython.

Expected DGC-C values, CBOR encodings and Ed25519 signatures come from the
vector file (worked out by hand, RFC 8949 Appendix A and RFC 8032 §7.1).
MicroPython must reproduce CPython's output byte for byte.
"""

import json
from typing import Any

import pytest
import runner
from support import ROOT, RUNNER_MODULE, VECTORS, load_vectors, run_micropython

from crev.keys import BACKENDS

# The core's own decoder, not ingest's fast path, which another test module may have installed.
pytestmark = pytest.mark.usefixtures("pure_cbor")


DOC = load_vectors()
READINGS = DOC["readings"]


def _results(backend: str) -> dict[str, Any]:
    # JSON round trip so tuples compare equal to MicroPython's JSON lists.
    return {case_id: json.loads(json.dumps(result)) for case_id, result in runner.run_all(DOC, backend)}


@pytest.fixture(scope="module")
def cpython_results() -> dict[str, Any]:
    return _results("cryptography")


@pytest.fixture(scope="module")
def micropython_results() -> dict[str, Any]:
    out = run_micropython(
        ROOT / "tests" / "micropython" / "vectors_main.py",
        {"/vectors/runner.py": RUNNER_MODULE, "/vectors/core_vectors.json": VECTORS},
    )
    results = {}
    for line in out.splitlines():
        case_id, result = json.loads(line)
        results[case_id] = result
    return results


def _all_case_ids() -> list[str]:
    return [case_id for case_id, _ in runner.run_all(DOC, "pure")]


def test_vector_suite_is_large_enough() -> None:
    assert len(READINGS) >= 20
    flags_seen = 0
    for case in READINGS:
        flags_seen |= case["expect"]["flags"]
    assert flags_seen == 63, "every flag bit must be covered by some vector"


@pytest.mark.parametrize("case", READINGS, ids=[c["name"] for c in READINGS])
def test_reading_rules(case: dict[str, Any], cpython_results: dict[str, Any]) -> None:
    result = cpython_results["reading-" + case["name"]]
    assert result["e"] == case["expect"]["e"]
    assert result["gs"] == case["expect"]["gs"]
    assert result["flags"] == case["expect"]["flags"]
    if case["head"]["last_t1"] is not None:
        assert result["t0"] == case["head"]["last_t1"], "t0 must be the previous reading's t1"


@pytest.mark.parametrize("case", DOC["cbor_encode"], ids=[c["name"] for c in DOC["cbor_encode"]])
def test_cbor_encoding(case: dict[str, Any], cpython_results: dict[str, Any]) -> None:
    result = cpython_results["cbor-encode-" + case["name"]]
    assert result["hex"] == case["hex"]
    assert result["reencoded"] == case["hex"]


@pytest.mark.parametrize("case", DOC["cbor_reject"], ids=[c["name"] for c in DOC["cbor_reject"]])
def test_cbor_rejection(case: dict[str, Any], cpython_results: dict[str, Any]) -> None:
    assert cpython_results["cbor-reject-" + case["name"]]["code"] == case["code"]


@pytest.mark.parametrize("case", DOC["float32"], ids=[c["name"] for c in DOC["float32"]])
def test_float32_registers(case: dict[str, Any], cpython_results: dict[str, Any]) -> None:
    assert cpython_results["float32-" + case["name"]]["mwh"] == str(case["expect"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", DOC["ed25519"], ids=[c["name"] for c in DOC["ed25519"]])
def test_ed25519_rfc8032(case: dict[str, Any], backend: str) -> None:
    result = _results(backend)["ed25519-" + case["name"]]
    assert result["public"] == case["public"]
    assert result["signature"] == case["signature"]
    assert result["verifies"] is True
    assert result["tampered_verifies"] is False
    assert result["other_message_verifies"] is False


def test_both_cpython_backends_produce_identical_bytes(cpython_results: dict[str, Any]) -> None:
    assert "cryptography" in BACKENDS, "CPython must have the cryptography backend installed"
    pure = _results("pure")
    assert pure.keys() == cpython_results.keys()
    for case_id, result in cpython_results.items():
        assert pure[case_id] == result, case_id


@pytest.mark.parametrize("case_id", _all_case_ids(), ids=lambda case_id: "micropython-" + case_id)
def test_micropython_matches_cpython(
    case_id: str, micropython_results: dict[str, Any], cpython_results: dict[str, Any]
) -> None:
    assert micropython_results.get(case_id) == cpython_results[case_id]
