"""The C2SP and Go sumdb/note vectors (tests/vectors/c2sp) on CPython and on real MicroPython."""

import json
from pathlib import Path
from typing import Any

import pytest
from c2sp import note_runner
from support import ROOT, run_micropython

VECTOR_DIR = ROOT / "tests" / "vectors" / "c2sp"
VECTORS = VECTOR_DIR / "note_vectors.json"
DOC: dict[str, Any] = json.loads(VECTORS.read_text())

MICROPYTHON_MAIN = """\
import json
import sys

sys.path.append("/vectors")
import note_runner

with open("/vectors/note_vectors.json") as f:
    doc = json.load(f)
for case_id, result in note_runner.run_all(doc):
    print(json.dumps([case_id, result]))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    # JSON round trip so tuples compare equal to MicroPython's JSON lists.
    return {case_id: json.loads(json.dumps(result)) for case_id, result in note_runner.run_all(DOC)}


def _ids(section: str) -> list[str]:
    return [case["name"] for case in DOC[section]]


def test_every_case_names_a_known_source() -> None:
    sources = DOC["sources"]
    for section in ("vkeys", "bad_vkeys", "signers", "notes", "checkpoints", "cosignatures"):
        for case in DOC[section]:
            assert case["source"] in sources, case["name"]
    for source in sources.values():
        assert source["repository"] and source["path"] and source["commit"]


@pytest.mark.parametrize("case", DOC["vkeys"], ids=_ids("vkeys"))
def test_verifier_keys(case: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["vkey-" + case["name"]] == {
        "key_name": case["key_name"],
        "key_id": case["key_id"],
        "type": case["type"],
        "vkey": case["vkey"],
    }


@pytest.mark.parametrize("case", DOC["bad_vkeys"], ids=_ids("bad_vkeys"))
def test_bad_verifier_keys(case: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["bad-vkey-" + case["name"]] == case["code"]


def test_no_mangled_verifier_key_is_accepted(results: dict[str, Any]) -> None:
    vkey = DOC["mangled_vkey"]["vkey"]
    outcome = results["mangled-vkey"]
    assert outcome["accepted"] == []
    assert outcome["tried"] == len(vkey) * (len(vkey) + 1) // 2 - 1 + len(vkey)


@pytest.mark.parametrize("case", DOC["signers"], ids=_ids("signers"))
def test_signing_reproduces_the_signed_note(case: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["signer-" + case["name"]] == {"key_id_matches": True, "signed": case["signed"]}


@pytest.mark.parametrize("case", DOC["notes"], ids=_ids("notes"))
def test_notes(case: dict[str, Any], results: dict[str, Any]) -> None:
    result = results["note-" + case["name"]]
    expect = case["expect"]
    # The vectors state what their source asserts; the runner reports a little more.
    assert {key: result.get(key) for key in expect} == expect
    if "error" not in expect:
        assert "error" not in result


@pytest.mark.parametrize("case", DOC["checkpoints"], ids=_ids("checkpoints"))
def test_checkpoints(case: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["checkpoint-" + case["name"]] == {
        "origin": case["origin"],
        "size": case["size"],
        "root_base64": case["root_base64"],
        "extensions": case["extensions"],
        "text_round_trip": True,
        "signatures": case["signatures"],
    }


@pytest.mark.parametrize("case", DOC["cosignatures"], ids=_ids("cosignatures"))
def test_cosignature_message_bytes(case: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["cosignature-" + case["name"]] == {"timestamp": case["timestamp"], "message": case["message"]}


def test_add_checkpoint_request_example(results: dict[str, Any]) -> None:
    body = DOC["add_checkpoint_requests"][0]["body"]
    proof_lines = body.split("\n\n")[0].split("\n")[1:]
    assert results["request-c2sp-tlog-witness-example"] == {
        "old_size": 20852014,
        "proof": proof_lines,
        "origin": "example.com/behind-the-sofa",
        "size": 20852163,
        "signatures": 2,
        "round_trip": True,
    }
    assert len(proof_lines) == 4


def test_add_checkpoint_response_example(results: dict[str, Any]) -> None:
    # Each line is a cosignature/v1: key ID, then an 8-byte timestamp and a 64-byte signature.
    assert [(r["name"], r["signature_bytes"]) for r in results["response-c2sp-tlog-witness-example"]] == [
        ("witness.example/w1", 72),
        ("witness.example/w1", 72),
        ("witness.example/w2", 72),
    ]


def test_crev_vectors(results: dict[str, Any]) -> None:
    crev = DOC["crev"]
    assert results["crev-plus-vkey"] == {"vkey": crev["plus_vkey"]["vkey"], "parsed_key": True}
    assert "+" in crev["plus_vkey"]["vkey"].split("+", 2)[2]
    cosigner = results["crev-cosigner"]
    assert cosigner == {
        "vkey": crev["cosigner"]["vkey"],
        "line": crev["cosigner"]["line"],
        "verified": [crev["cosigner"]["key_name"]],
        "timestamp": crev["cosigner"]["timestamp"],
        "other_timestamp": "BAD_SIGNATURE",
    }
    add = crev["add_checkpoint"]
    assert results["crev-add-checkpoint"] == {
        "body": add["body"],
        "old_root": add["old_root"],
        "root": add["root"],
        "consistent": True,
    }


def test_micropython_gives_the_same_results(tmp_path: Path, results: dict[str, Any]) -> None:
    script = tmp_path / "note_vectors_main.py"
    script.write_text(MICROPYTHON_MAIN)
    out = run_micropython(
        script,
        {"/vectors/note_runner.py": VECTOR_DIR / "note_runner.py", "/vectors/note_vectors.json": VECTORS},
    )
    on_micropython = {}
    for line in out.splitlines():
        case_id, result = json.loads(line)
        on_micropython[case_id] = result
    assert on_micropython.keys() == results.keys()
    for case_id, result in results.items():
        assert on_micropython[case_id] == result, case_id
