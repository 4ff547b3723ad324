"""Runs the signed-note vectors (note_vectors.json) on whichever interpreter imports it.

tests/test_note_vectors.py imports it on CPython and copies it into the
MicroPython WebAssembly port's filesystem, so it keeps to the language both
share. Each case gives ``(case_id, result)``, with plain JSON-ready results:
the test checks CPython's against the vectors and MicroPython's against
CPython's.
"""

import hashlib

from crev import merkle, note
from crev.errors import CrevError, MisuseError
from crev.keys import SigningKey

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Case = dict[str, Any]


def _signatures(sigs: "list[note.NoteSignature]") -> "list[str]":
    return [s.name for s in sigs]


def run_vkey(case: "Case") -> "dict[str, Any]":
    key = note.parse_vkey(case["vkey"])
    return {"key_name": key.name, "key_id": key.key_id.hex(), "type": key.sig_type, "vkey": key.vkey()}


def run_bad_vkey(vkey: str) -> str:
    try:
        note.parse_vkey(vkey)
    except CrevError as err:
        return err.code
    return "accepted"


def run_mangled_vkey(vkey: str) -> "dict[str, Any]":
    # As Go's TestNewVerifier: no proper substring and no one-byte change of a vkey is a vkey.
    raw = vkey.encode()
    tried = 0
    accepted = []
    for i in range(len(raw) + 1):
        for j in range(i + 1, len(raw) + 1):
            if i == 0 and j == len(raw):
                continue
            tried += 1
            if run_bad_vkey(raw[i:j].decode()) == "accepted":
                accepted.append(raw[i:j].decode())
    for i in range(len(raw)):
        changed = raw[:i] + bytes([raw[i] + 1]) + raw[i + 1 :]
        tried += 1
        if run_bad_vkey(changed.decode()) == "accepted":
            accepted.append(changed.decode())
    return {"tried": tried, "accepted": accepted}


def run_signer(case: "Case") -> "dict[str, Any]":
    # Go's signer key: PRIVATE+KEY+<name>+<key ID>+base64(0x01 || seed); the base64 may hold '+'.
    parts = case["skey"].split("+", 4)
    raw = note.decode_base64(parts[4]) or b""
    key = SigningKey(raw[1:])
    line = note.sign_ed25519(case["text"], parts[2], key).line()
    return {
        "key_id_matches": note.key_id(parts[2], raw[0], key.public_key).hex() == parts[3],
        "signed": case["text"] + "\n" + line,
    }


def run_note(case: "Case") -> "dict[str, Any]":
    data = bytes.fromhex(case["note_hex"]) if "note_hex" in case else case["note"]
    keys = [note.parse_vkey(v) for v in case["vkeys"]]
    try:
        parsed = note.parse_note(data)
    except CrevError as err:
        return {"error": err.code}
    try:
        note.verify_note(parsed, keys)
    except MisuseError:
        return {"error": "AMBIGUOUS", "text": parsed.text}
    except CrevError as err:
        return {"error": err.code, "text": parsed.text, "unverified": _signatures(parsed.unverified)}
    return {"text": parsed.text, "verified": _signatures(parsed.verified), "unverified": _signatures(parsed.unverified)}


def run_checkpoint(case: "Case") -> "dict[str, Any]":
    parsed = note.parse_note(case["note"])
    checkpoint = note.parse_checkpoint(parsed.text)
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_base64": note.encode_base64(checkpoint.root),
        "extensions": checkpoint.extensions,
        "text_round_trip": checkpoint.text() == parsed.text,
        "signatures": [{"name": s.name, "key_id": s.key_id.hex()} for s in parsed.signatures],
    }


def run_cosignature(case: "Case") -> "dict[str, Any]":
    parsed = note.parse_note(case["note"])
    timestamp = -1
    for line in parsed.signatures:
        if line.name == case["cosigner"]:
            timestamp = note.cosignature_timestamp(line)
    return {"timestamp": timestamp, "message": note.cosignature_v1_message(parsed.text, timestamp).decode()}


def run_request(case: "Case") -> "dict[str, Any]":
    request = note.parse_add_checkpoint(case["body"])
    parsed = note.parse_note(request.checkpoint)
    checkpoint = note.parse_checkpoint(parsed.text)
    body = note.add_checkpoint_body(request.old_size, request.proof, request.checkpoint)
    return {
        "old_size": request.old_size,
        "proof": [note.encode_base64(node) for node in request.proof],
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "signatures": len(parsed.signatures),
        "round_trip": body.decode() == case["body"],
    }


def run_response(case: "Case") -> "list[dict[str, Any]]":
    return [
        {"name": s.name, "key_id": s.key_id.hex(), "signature_bytes": len(s.signature)}
        for s in note.parse_signature_lines(case["body"])
    ]


def _seed(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def run_crev_plus_vkey(case: "Case") -> "dict[str, Any]":
    key = SigningKey(_seed(case["seed_label"]))
    vkey = note.VerifierKey(case["key_name"], case["type"], key.public_key).vkey()
    return {"vkey": vkey, "parsed_key": note.parse_vkey(vkey).public_key == key.public_key}


def run_crev_cosigner(case: "Case") -> "dict[str, Any]":
    key = SigningKey(_seed(case["seed_label"]))
    line = note.cosign_v1(case["text"], case["key_name"], key, case["timestamp"])
    witness = note.parse_vkey(case["vkey"])
    opened = note.open_note(case["text"] + "\n" + line.line(), [witness])
    later = note.NoteSignature(line.name, line.key_id, (case["timestamp"] + 1).to_bytes(8, "big") + line.signature[8:])
    try:
        note.open_note(case["text"] + "\n" + later.line(), [witness])
        tampered = "accepted"
    except CrevError as err:
        tampered = err.code
    return {
        "vkey": note.VerifierKey(case["key_name"], note.SIG_COSIGNATURE_V1, key.public_key).vkey(),
        "line": line.line(),
        "verified": _signatures(opened.verified),
        "timestamp": note.cosignature_timestamp(opened.verified[0]),
        "other_timestamp": tampered,
    }


def run_crev_add_checkpoint(case: "Case") -> "dict[str, Any]":
    key = SigningKey(_seed(case["log_seed_label"]))
    frontier = merkle.MerkleFrontier()
    nodes = {}
    roots = {}
    for leaf in case["leaves"]:
        for level, index, value in frontier.append(merkle.leaf_hash(leaf.encode())):
            nodes[(level, index)] = value
        roots[frontier.size] = frontier.root()
    old_size, size = case["old_size"], case["size"]
    proof = merkle.consistency_path(old_size, size, lambda level, index: nodes[(level, index)])
    text = note.Checkpoint(case["origin"], size, roots[size]).text()
    signed = text + "\n" + note.sign_ed25519(text, case["origin"], key).line()
    body = note.add_checkpoint_body(old_size, proof, signed)
    request = note.parse_add_checkpoint(body)
    checkpoint, _opened = note.open_checkpoint(
        request.checkpoint, [note.VerifierKey(case["origin"], 1, key.public_key)]
    )
    return {
        "body": body.decode(),
        "old_root": roots[old_size].hex(),
        "root": checkpoint.root.hex(),
        "consistent": merkle.verify_consistency(
            old_size, checkpoint.size, request.proof, roots[old_size], checkpoint.root
        ),
    }


def run_all(doc: "Case") -> "list[tuple[str, Any]]":
    out = []  # type: list[tuple[str, Any]]
    for case in doc["vkeys"]:
        out.append(("vkey-" + case["name"], run_vkey(case)))
    for case in doc["bad_vkeys"]:
        out.append(("bad-vkey-" + case["name"], run_bad_vkey(case["vkey"])))
    out.append(("mangled-vkey", run_mangled_vkey(doc["mangled_vkey"]["vkey"])))
    for case in doc["signers"]:
        out.append(("signer-" + case["name"], run_signer(case)))
    for case in doc["notes"]:
        out.append(("note-" + case["name"], run_note(case)))
    for case in doc["checkpoints"]:
        out.append(("checkpoint-" + case["name"], run_checkpoint(case)))
    for case in doc["cosignatures"]:
        out.append(("cosignature-" + case["name"], run_cosignature(case)))
    for case in doc["add_checkpoint_requests"]:
        out.append(("request-" + case["name"], run_request(case)))
    for case in doc["add_checkpoint_responses"]:
        out.append(("response-" + case["name"], run_response(case)))
    crev = doc["crev"]
    out.append(("crev-plus-vkey", run_crev_plus_vkey(crev["plus_vkey"])))
    out.append(("crev-cosigner", run_crev_cosigner(crev["cosigner"])))
    out.append(("crev-add-checkpoint", run_crev_add_checkpoint(crev["add_checkpoint"])))
    return out
