"""Runs the site-control vectors (commands.json) on whichever interpreter imports it.

It runs on CPython (imported by tests/test_control_format.py) and on
MicroPython (copied into the WebAssembly port's filesystem), so it sticks to
the language both share. ``run_all`` yields one JSON-ready result per case.
"""

from crev import control
from crev.errors import CrevError
from crev.keys import SigningKey

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _key(seed_hex: str, backend: "str | None") -> SigningKey:
    return SigningKey(bytes.fromhex(seed_hex), backend)


def _reencode(case: "dict[str, Any]", keys: "dict[str, SigningKey]") -> "str | None":
    """The command built and signed by crev from the case's fields, when an operator signed it."""
    fields = case["fields"]
    signer = case["signer"]
    if fields is None or signer not in keys:
        return None
    try:
        command_map = control.command_map(
            bytes.fromhex(fields["id"]),
            fields["dev"],
            fields["seq"],
            fields["issued"],
            fields["not_before"],
            fields["expires"],
            fields["type"],
            fields.get("pct"),
            fields.get("revert_s"),
            fields.get("start"),
            fields.get("limits"),
        )
    except CrevError as err:
        return "error: " + err.code
    return control.sign_command(command_map, keys[signer]).hex()


def _parsed_ack(hex_text: str, device_pubkey: bytes) -> "dict[str, Any]":
    try:
        ack = control.Ack.parse(bytes.fromhex(hex_text), device_pubkey)
    except CrevError as err:
        return {"error": err.code}
    return {
        "status": ack.status,
        "time": ack.time_s,
        "id": None if ack.command_id is None else ack.command_id.hex(),
        "operator": ack.operator,
        "seq": ack.seq,
        "reason": ack.reason,
        "limit_centi": ack.limit_centi,
        "connected": ack.connected,
    }


def run_case(doc: "dict[str, Any]", case: "dict[str, Any]", backend: "str | None" = None) -> "dict[str, Any]":
    device = _key(doc["device"]["seed"], backend)
    keys = {}
    operators = {}
    for operator in doc["operators"]:
        keys[operator["id"]] = _key(operator["seed"], backend)
        operators[operator["id"]] = bytes.fromhex(operator["pubkey"])
    controller = control.Controller(doc["device"]["dev"], operators, case["last_seq"])
    raw = bytes.fromhex(case["cose"])
    verdict = controller.check(raw, case["now"])
    result = {
        "name": case["name"],
        "ok": verdict.ok,
        "reason": verdict.reason,
        "ackable": verdict.ackable,
        "target": None,
        "ack": None,
        "ack_parsed": None,
        "reencoded": _reencode(case, keys),
    }  # type: dict[str, Any]
    expected_ack = case["ack"]
    if verdict.ok:
        assert verdict.command is not None
        active, _superseded = controller.plan(verdict.command)
        controller.commit(verdict.command, active)
        target = controller.target(case["now"])
        result["target"] = {
            "limit_pct": target.limit_pct,
            "disconnected": target.disconnected,
            "revert_s": target.revert_s,
        }
    if expected_ack is not None:
        if verdict.ok:
            ack = verdict.ack(
                doc["device"]["dev"],
                control.ACK_APPLIED,
                expected_ack["time"],
                expected_ack["limit_centi"],
                expected_ack["connected"],
            )
        else:
            ack = verdict.ack(doc["device"]["dev"], control.ACK_REJECTED, expected_ack["time"])
            ack.detail = None  # free text: the vectors leave it out
        result["ack"] = ack.sign(device).hex()
        result["ack_parsed"] = _parsed_ack(expected_ack["cose"], device.public_key)
    return result


def run_all(doc: "dict[str, Any]", backend: "str | None" = None) -> "list[dict[str, Any]]":
    return [run_case(doc, case, backend) for case in doc["cases"]]
