"""Writes commands.json: the site-control vectors (SPEC §12), built without crev.

Run ``.venv/bin/python tests/vectors/control/make_vectors.py`` to write the
file again. The bytes come from cbor2 (canonical encoding) and
cryptography's Ed25519, following SPEC §3's COSE_Sign1 profile and the
command and ack maps of firmware/crev/control.py's docstring; the expected
verdicts are written here by hand. Nothing in this file imports crev, so the
core's encoder and rules are checked against an independent build.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = Path(__file__).resolve().parent
DEV = "dgc-vectors-0001"
OTHER_DEV = "dgc-vectors-0002"
NOW = 1_790_000_000
SEEDS = {
    "device": bytes([0x11] * 32),
    "grid-op": bytes([0x22] * 32),
    "utility-two": bytes([0x33] * 32),
    "unenrolled": bytes([0x44] * 32),
}


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEEDS[name])


def _pub(name: str) -> bytes:
    return _key(name).public_key().public_bytes_raw()


def _kid(name: str) -> bytes:
    return hashlib.sha256(_pub(name)).digest()[:8]


def _sign(payload: bytes, signer: str, kid_of: str | None = None) -> bytes:
    protected = cbor2.dumps({1: -8, 4: _kid(kid_of or signer)}, canonical=True)
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)
    signature = _key(signer).sign(to_sign)
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]), canonical=True))


def _command(
    seq: int, kind: int, params: dict[int, Any], dev: str = DEV, window: tuple[int, int] = (-60, 3600)
) -> dict[Any, Any]:
    return {
        0: 1,
        1: bytes([seq & 0xFF]) * 16,
        2: dev,
        3: seq,
        4: NOW - 60,
        5: NOW + window[0],
        6: NOW + window[1],
        7: kind,
        8: params,
    }


def _json_fields(fields: dict[Any, Any]) -> dict[Any, Any]:
    params = fields[8]
    out = {
        "id": fields[1].hex(),
        "dev": fields[2],
        "seq": fields[3],
        "issued": fields[4],
        "not_before": fields[5],
        "expires": fields[6],
        "type": fields[7],
    }
    for key, name in ((0, "pct"), (1, "revert_s"), (2, "start"), (3, "limits")):
        if key in params:
            out[name] = params[key]
    return out


def _ack(
    cose: bytes, status: int, fields: dict[Any, Any] | None, operator: str | None, extra: dict[int, Any]
) -> dict[Any, Any]:
    ack: dict[int, Any] = {0: 1, 1: DEV, 2: hashlib.sha256(cose).digest(), 3: status, 4: NOW}
    if fields is not None:
        ack[5] = fields[1]
        if operator is not None:
            ack[6] = operator
        ack[7] = fields[3]
    ack.update(extra)
    signed = _sign(cbor2.dumps(ack, canonical=True), "device")
    return {
        "status": status,
        "time": NOW,
        "id": None if fields is None else fields[1].hex(),
        "operator": operator if fields is not None else None,
        "seq": None if fields is None else fields[3],
        "reason": extra.get(8),
        "limit_centi": extra.get(10),
        "connected": extra.get(11),
        "cose": signed.hex(),
    }


def build() -> dict[Any, Any]:
    limit = _command(5, 1, {0: 40, 1: 60})
    schedule = _command(6, 4, {1: 600, 2: (NOW // 1800) * 1800, 3: [80, 60, 60, 80]})
    disconnect = _command(7, 3, {1: 300})
    limit_cose = _sign(cbor2.dumps(limit, canonical=True), "grid-op")
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        cose: bytes,
        expect: dict[Any, Any],
        fields: dict[Any, Any] | None = None,
        signer: str | None = None,
        last_seq: dict[str, int] | None = None,
        ack: dict[Any, Any] | None = None,
    ) -> None:
        cases.append(
            {
                "name": name,
                "cose": cose.hex(),
                "fields": None if fields is None else _json_fields(fields),
                "signer": signer,
                "last_seq": last_seq or {},
                "now": NOW,
                "expect": expect,
                "ack": ack,
            }
        )

    def accepted(
        name: str, fields: dict[Any, Any], target: tuple[int | None, bool, int | None], last: dict[str, int]
    ) -> None:
        """``target``: the lowest limit, disconnected, the shortest revert time once the command is in force.

        The ack reports what an inverter that took the command reads back.
        """
        cose = _sign(cbor2.dumps(fields, canonical=True), "grid-op")
        limit_pct, disconnected, revert_s = target
        read_back = {10: 100 * (limit_pct or 100), 11: not disconnected}
        ack = _ack(cose, 1, fields, "grid-op", read_back)
        expect = {
            "ok": True,
            "reason": None,
            "ackable": True,
            "target": {"limit_pct": limit_pct, "disconnected": disconnected, "revert_s": revert_s},
        }
        case(name, cose, expect, fields, "grid-op", last, ack)

    def rejected(
        name: str,
        cose: bytes,
        reason: str,
        fields: dict[Any, Any] | None,
        operator: str | None,
        signer: str | None = None,
        last: dict[str, int] | None = None,
    ) -> None:
        ack = _ack(cose, 2, fields, operator, {8: reason})
        case(name, cose, {"ok": False, "reason": reason, "ackable": True}, fields, signer, last, ack)

    accepted("applied-limit", limit, (40, False, 60), {"grid-op": 4})
    accepted("applied-first-command", _command(1, 1, {0: 100, 1: 1}), (100, False, 1), {})
    accepted("applied-schedule", schedule, (80, False, 600), {"grid-op": 5})
    accepted("applied-disconnect", disconnect, (None, True, 300), {"grid-op": 6})
    accepted("applied-clear", _command(8, 5, {}), (None, False, None), {"grid-op": 7})
    # The same bytes again, once the controller has accepted seq 5.
    rejected("replayed", limit_cose, "REPLAYED", limit, "grid-op", "grid-op", {"grid-op": 5})
    lower = _command(3, 1, {0: 40, 1: 60})
    rejected(
        "replayed-lower-seq",
        _sign(cbor2.dumps(lower, canonical=True), "grid-op"),
        "REPLAYED",
        lower,
        "grid-op",
        "grid-op",
        {"grid-op": 5},
    )
    # Another operator's seqs are its own.
    accepted("other-operators-seq-is-theirs", limit, (40, False, 60), {"utility-two": 9})
    expired = _command(9, 1, {0: 40, 1: 60}, window=(-3600, 0))
    rejected(
        "expired", _sign(cbor2.dumps(expired, canonical=True), "grid-op"), "EXPIRED", expired, "grid-op", "grid-op"
    )
    early = _command(10, 1, {0: 40, 1: 60}, window=(60, 3600))
    rejected(
        "not-yet-valid",
        _sign(cbor2.dumps(early, canonical=True), "grid-op"),
        "NOT_YET_VALID",
        early,
        "grid-op",
        "grid-op",
    )
    other = _command(11, 1, {0: 40, 1: 60}, dev=OTHER_DEV)
    rejected(
        "other-device",
        _sign(cbor2.dumps(other, canonical=True), "grid-op"),
        "OTHER_DEVICE",
        other,
        "grid-op",
        "grid-op",
    )
    # Signed by a key no [[operator]] lists: nothing in it is believed, so the ack names only the bytes.
    rejected(
        "forged-unenrolled-key",
        _sign(cbor2.dumps(limit, canonical=True), "unenrolled"),
        "UNKNOWN_OPERATOR",
        None,
        None,
        "unenrolled",
    )
    # The operator's kid, another key's signature.
    rejected(
        "forged-signature",
        _sign(cbor2.dumps(limit, canonical=True), "unenrolled", kid_of="grid-op"),
        "BAD_SIGNATURE",
        None,
        None,
        "unenrolled",
    )
    zero = _command(12, 1, {0: 0, 1: 60})
    rejected("limit-of-zero", _sign(cbor2.dumps(zero, canonical=True), "grid-op"), "BAD_COMMAND", None, None, "grid-op")
    no_revert = _command(13, 1, {0: 40})
    rejected(
        "limit-without-revert",
        _sign(cbor2.dumps(no_revert, canonical=True), "grid-op"),
        "BAD_COMMAND",
        None,
        None,
        "grid-op",
    )
    # seq 5 in two bytes (0x18 0x05): well-formed CBOR, not deterministic.
    canonical = cbor2.dumps(limit, canonical=True)
    at = canonical.index(bytes([0x03, 0x05]))
    sloppy = canonical[: at + 1] + bytes([0x18, 0x05]) + canonical[at + 2 :]
    rejected("non-canonical-payload", _sign(sloppy, "grid-op"), "BAD_COMMAND", None, None, "grid-op")
    for name, raw in (
        ("malformed-not-cbor", b"limit 40 %"),
        ("malformed-not-cose", cbor2.dumps([1, 2, 3], canonical=True)),
        ("malformed-truncated", limit_cose[:-10]),
    ):
        case(name, raw, {"ok": False, "reason": "MALFORMED", "ackable": False})
    return {
        "about": "Site-control vectors (SPEC §12), built by make_vectors.py with cbor2 and cryptography, not crev. "
        "Each case: a command's COSE bytes, the controller's state (its device, the operators it lists, the "
        "last seq accepted from each) and clock, the verdict expected, and the ack the device signs for it "
        "(rejections without their free-text detail).",
        "device": {"dev": DEV, "seed": SEEDS["device"].hex(), "pubkey": _pub("device").hex()},
        "operators": [
            {"id": name, "seed": SEEDS[name].hex(), "pubkey": _pub(name).hex()} for name in ("grid-op", "utility-two")
        ],
        "unenrolled": {"seed": SEEDS["unenrolled"].hex(), "pubkey": _pub("unenrolled").hex()},
        "cases": cases,
    }


if __name__ == "__main__":
    (HERE / "commands.json").write_text(json.dumps(build(), indent=1) + "\n")
