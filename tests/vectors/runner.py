"""Runs the shared core vectors on whichever interpreter imports it.

This file runs on CPython (imported by the tests) and on MicroPython (copied
into the WebAssembly port's filesystem), so it sticks to the language subset
both share. Each case yields ``(case_id, result)`` where result is plain
JSON-ready data; the tests compare results across interpreters byte for byte.
"""

from crev import cbor, merkle, modbus_rtu
from crev.errors import CrevError
from crev.keys import SigningKey, verify_signature
from crev.reading import ChainHead, Reading, verify_reading
from crev.registers import float32_words_to_mwh


def _value(spec: dict) -> object:
    if "int" in spec:
        return spec["int"]
    if "bytes" in spec:
        return bytes.fromhex(spec["bytes"])
    if "text" in spec:
        return spec["text"]
    if "array" in spec:
        return [_value(item) for item in spec["array"]]
    if "map" in spec:
        return {key: _value(item) for key, item in spec["map"]}
    if "tag" in spec:
        return cbor.Tag(spec["tag"][0], _value(spec["tag"][1]))
    if "bool" in spec:
        return spec["bool"]
    return None


def _channels(raw: list | None) -> list | None:
    if raw is None:
        return None
    return [tuple(c) for c in raw]


def run_reading(case: dict, device: dict, key: SigningKey) -> dict:
    head_spec = case["head"]
    before = _channels(case["before"])
    head = ChainHead(head_spec["seq"], bytes.fromhex(head_spec["prev"]), head_spec["last_t1"], before)
    reading = head.next_reading(
        device["dev"],
        case["t1"],
        case["clk"],
        _channels(case["after"]) or [],
        device["fw"],
        case["adapter_flags"],
        case["t0"],
    )
    cose = reading.sign(key)
    parsed = verify_reading(cose, key.public_key, key.backend)
    if parsed.to_payload() != reading.to_payload():
        raise ValueError("round trip changed the payload")
    return {
        "e": reading.energies,
        "gs": reading.generator_self,
        "flags": reading.flags,
        "t0": reading.t0,
        "payload": reading.to_payload().hex(),
        "cose": cose.hex(),
        "next_prev": head.advance(reading, cose).prev_hash.hex(),
        "reparsed_seq": Reading.from_cose(cose).seq,
    }


def run_all(doc: dict, backend: str) -> list:
    results = []
    for case in doc["cbor_encode"]:
        encoded = cbor.dumps(_value(case["value"]))
        decoded_again = cbor.dumps(cbor.loads(encoded))
        results.append(("cbor-encode-" + case["name"], {"hex": encoded.hex(), "reencoded": decoded_again.hex()}))
    for case in doc["cbor_reject"]:
        try:
            cbor.loads(bytes.fromhex(case["hex"]))
            outcome = "ACCEPTED"
        except CrevError as err:
            outcome = err.code
        results.append(("cbor-reject-" + case["name"], {"code": outcome}))
    for case in doc["float32"]:
        try:
            outcome = str(float32_words_to_mwh(case["words"][0], case["words"][1]))
        except CrevError as err:
            outcome = err.code
        results.append(("float32-" + case["name"], {"mwh": outcome}))
    for case in doc["ed25519"]:
        key = SigningKey(bytes.fromhex(case["seed"]), backend)
        message = bytes.fromhex(case["message"])
        signature = key.sign(message)
        tampered = bytearray(signature)
        tampered[0] ^= 1
        ed_result = {
            "public": key.public_key.hex(),
            "signature": signature.hex(),
            "verifies": verify_signature(key.public_key, signature, message, backend),
            "tampered_verifies": verify_signature(key.public_key, bytes(tampered), message, backend),
            "other_message_verifies": verify_signature(key.public_key, signature, message + b"x", backend),
        }  # type: dict
        results.append(("ed25519-" + case["name"], ed_result))
    results.extend(run_merkle())
    results.extend(run_rtu(doc["rtu"]))
    device = doc["device"]
    device_key = SigningKey(bytes.fromhex(device["seed"]), backend)
    for case in doc["readings"]:
        results.append(("reading-" + case["name"], run_reading(case, device, device_key)))
    return results


def run_merkle() -> list:
    """Roots and proofs of logs of 1..20 leaves (compared across interpreters)."""
    results = []
    frontier = merkle.MerkleFrontier()
    nodes = {}  # type: dict[tuple[int, int], bytes]
    for n in range(1, 21):
        for level, index, value in frontier.append(merkle.leaf_hash(bytes([n]) * n)):
            nodes[(level, index)] = value

        def node(level: int, index: int) -> bytes:
            return nodes[(level, index)]

        root = frontier.root()
        path = merkle.inclusion_path(n // 2, n, node)
        consistency = merkle.consistency_path((n + 1) // 2, n, node)
        old_root = merkle.root_of((n + 1) // 2, node)
        results.append(
            (
                "merkle-%d" % n,
                {
                    "root": root.hex(),
                    "inclusion": [h.hex() for h in path],
                    "consistency": [h.hex() for h in consistency],
                    "inclusion_ok": merkle.verify_inclusion(
                        merkle.leaf_hash(bytes([n // 2 + 1]) * (n // 2 + 1)), n // 2, n, path, root
                    ),
                    "consistency_ok": merkle.verify_consistency((n + 1) // 2, n, consistency, old_root, root),
                },
            )
        )
    return results


def _parse_reply(case: dict, pieces: int) -> object:
    """Feed the reply in ``pieces`` parts, as a UART delivers it; record needed() on the way."""
    frame = bytes.fromhex(case["frame"])
    parser = modbus_rtu.ReplyParser(case["unit"], case["function"], case["count"])
    needs = []
    step = max(1, len(frame) // pieces)
    at = 0
    while at < len(frame) and parser.needed():
        take = min(step, parser.needed())
        parser.feed(frame[at : at + take])
        at += take
        needs.append(parser.needed())
    parser.feed(frame[at:])  # anything left over is trailing
    try:
        return {"registers": parser.result(), "needs": needs}
    except modbus_rtu.RtuError as err:
        code = err.code if err.code != modbus_rtu.EXCEPTION else "EXCEPTION-%d" % err.exception_code
        return {"error": code, "needs": needs}


def run_rtu(doc: dict) -> list:
    results = []  # type: list
    for case in doc["requests"]:
        frame = modbus_rtu.read_request(case["unit"], case["function"], case["address"], case["count"])
        results.append(("rtu-request-%d-%d-%d" % (case["unit"], case["function"], case["address"]), frame.hex()))
    for case in doc["replies"]:
        results.append(("rtu-reply-" + case["name"], [_parse_reply(case, n) for n in (1, 3, 64)]))
    return results
