"""Site-control commands and acks (SPEC §12): the shared vectors, COSE interop, and the controller's rules.

The vectors (tests/vectors/control/commands.json) were built with cbor2 and
cryptography, not crev; the core must reach the same verdicts and the same
bytes on CPython and on real MicroPython.
"""

import json
from typing import Any

import pytest
from control import runner_control
from hypothesis import given, settings
from hypothesis import strategies as st
from pycose.algorithms import EdDSA
from pycose.headers import KID, Algorithm
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message
from support import ROOT, run_micropython

from crev import cbor
from crev.control import (
    ACK_APPLIED,
    ACK_REJECTED,
    CMD_CLEAR,
    CMD_CONNECT,
    CMD_DISCONNECT,
    CMD_LIMIT,
    CMD_SCHEDULE,
    SLOT_S,
    Ack,
    ControlError,
    Controller,
    Target,
    command_map,
    digest,
    sign_command,
)
from crev.errors import MisuseError
from crev.keys import SigningKey

FOLDER = ROOT / "tests" / "vectors" / "control"
DOC: dict[str, Any] = json.loads((FOLDER / "commands.json").read_text())
CASES = DOC["cases"]
DEV = "dgc-rules-0001"
NOW = 1_790_000_000
OPERATOR = SigningKey(bytes([7] * 32))
SECOND = SigningKey(bytes([8] * 32))
DEVICE = SigningKey(bytes([9] * 32))


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def cpython_results() -> dict[str, Any]:
    return {r["name"]: _normal(r) for r in runner_control.run_all(DOC, "cryptography")}


def test_the_vectors_cover_every_verdict() -> None:
    reasons = {c["expect"]["reason"] for c in CASES}
    assert reasons == {
        None,
        "REPLAYED",
        "EXPIRED",
        "NOT_YET_VALID",
        "OTHER_DEVICE",
        "UNKNOWN_OPERATOR",
        "BAD_SIGNATURE",
        "BAD_COMMAND",
        "MALFORMED",
    }
    assert {c["fields"]["type"] for c in CASES if c["expect"]["ok"]} == {1, 4, 3, 5}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict[str, Any], cpython_results: dict[str, Any]) -> None:
    result = cpython_results[case["name"]]
    expect = case["expect"]
    assert (result["ok"], result["reason"], result["ackable"]) == (expect["ok"], expect["reason"], expect["ackable"])
    assert result["target"] == expect.get("target")
    if result["reencoded"] is not None:
        assert result["reencoded"] == case["cose"], "crev's encoding and signature differ from the independent build"
    ack = case["ack"]
    if ack is None:
        assert result["ack"] is None
        return
    assert result["ack"] == ack["cose"], "crev's ack differs from the independent build"
    expected = {k: ack[k] for k in ("status", "time", "id", "operator", "seq", "reason", "limit_centi", "connected")}
    assert result["ack_parsed"] == expected


def test_the_same_bytes_on_micropython(cpython_results: dict[str, Any]) -> None:
    out = run_micropython(
        FOLDER / "micropython_main.py",
        {
            "/vectors/runner_control.py": FOLDER / "runner_control.py",
            "/vectors/commands.json": FOLDER / "commands.json",
        },
    )
    results = {r["name"]: r for r in (json.loads(line) for line in out.splitlines())}
    assert results == {name: cpython_results[name] for name in results}
    assert len(results) == len(CASES)


# ------------------------------------------------------------------ COSE interop


def _limit(seq: int = 1, pct: int = 40, revert: int = 60, dev: str = DEV, expires: int = NOW + 3600) -> dict[int, Any]:
    return command_map(bytes([seq % 256]) * 16, dev, seq, NOW - 10, NOW - 10, expires, CMD_LIMIT, pct, revert)


def test_pycose_verifies_our_commands_and_we_accept_theirs() -> None:
    fields = _limit()
    ours = sign_command(fields, OPERATOR)
    decoded = Sign1Message.decode(ours)
    decoded.key = OKPKey(crv=Ed25519, x=OPERATOR.public_key)
    assert decoded.verify_signature()
    message = Sign1Message(phdr={Algorithm: EdDSA, KID: OPERATOR.kid}, payload=cbor.dumps(fields))
    message.key = OKPKey(crv=Ed25519, d=OPERATOR.seed_bytes(), x=OPERATOR.public_key)
    theirs = message.encode()
    assert theirs == ours
    assert Controller(DEV, {"grid-op": OPERATOR.public_key}).check(theirs, NOW).ok


def test_ack_round_trip_and_its_signature() -> None:
    raw = sign_command(_limit(), OPERATOR)
    verdict = Controller(DEV, {"grid-op": OPERATOR.public_key}).check(raw, NOW)
    signed = verdict.ack(DEV, ACK_APPLIED, NOW, 4000, True).sign(DEVICE)
    ack = Ack.parse(signed, DEVICE.public_key)
    assert (ack.status_name, ack.cmd, ack.operator, ack.limit_centi, ack.connected) == (
        "applied",
        digest(raw),
        "grid-op",
        4000,
        True,
    )
    with pytest.raises(ControlError) as caught:
        Ack.parse(signed, OPERATOR.public_key)
    assert caught.value.code == "BAD_SIGNATURE"
    with pytest.raises(MisuseError):
        Ack(DEV, digest(raw), ACK_REJECTED, NOW).sign(DEVICE)  # a rejection names its reason
    with pytest.raises(MisuseError):
        Ack(DEV, digest(raw), ACK_APPLIED, NOW, limit_centi=10001).sign(DEVICE)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"pct": 0}, "disconnect is its own command"),
        ({"pct": 101}, "whole percentage"),
        ({"revert": 0}, "revert time"),
        ({"revert": 65536}, "revert time"),
        ({"expires": NOW - 10}, "expires before"),
        ({"expires": NOW + 32 * 86400}, "at most 31 days"),
        ({"dev": "Not_A_Device"}, "device id"),
    ],
)
def test_the_sender_cannot_build_what_a_controller_refuses(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(MisuseError) as caught:
        _limit(**change)
    assert problem in caught.value.detail


# ------------------------------------------------------------------ the rules


def _controller(**last: int) -> Controller:
    return Controller(DEV, {"grid-op": OPERATOR.public_key, "utility": SECOND.public_key}, last)


def _apply(controller: Controller, raw: bytes, now: int = NOW) -> list[Any]:
    verdict = controller.check(raw, now)
    assert verdict.ok, verdict.reason
    assert verdict.command is not None
    active, superseded = controller.plan(verdict.command)
    controller.commit(verdict.command, active)
    return list(superseded)


def _command(kind: int, seq: int, key: SigningKey = OPERATOR, expires: int = NOW + 3600, **params: Any) -> bytes:
    fields = command_map(bytes([seq]) * 16, DEV, seq, NOW - 10, NOW - 10, expires, kind, **params)
    return sign_command(fields, key)


def test_the_lowest_limit_in_force_wins_and_each_operator_replaces_its_own() -> None:
    controller = _controller()
    _apply(controller, _command(CMD_LIMIT, 1, pct=70, revert_s=120))
    _apply(controller, _command(CMD_LIMIT, 1, SECOND, pct=50, revert_s=60))
    assert controller.target(NOW) == Target(50, False, 60)
    superseded = _apply(controller, _command(CMD_LIMIT, 2, pct=30, revert_s=90))
    assert [c.seq for c in superseded] == [1], "an operator's new limit replaces its old one"
    assert controller.target(NOW) == Target(30, False, 60)
    superseded = _apply(controller, _command(CMD_CLEAR, 3))
    assert [c.type for c in superseded] == [CMD_LIMIT]
    assert controller.target(NOW) == Target(50, False, 60), "a clear lifts only its own operator's commands"


def test_disconnect_and_connect() -> None:
    controller = _controller()
    _apply(controller, _command(CMD_LIMIT, 1, pct=60, revert_s=100))
    _apply(controller, _command(CMD_DISCONNECT, 2, revert_s=300))
    target = controller.target(NOW)
    assert target.disconnected and target.curtails and target.limit_pct == 60 and target.revert_s == 100
    superseded = _apply(controller, _command(CMD_CONNECT, 3))
    assert [c.type for c in superseded] == [CMD_DISCONNECT]
    assert controller.target(NOW) == Target(60, False, 100)


def test_a_schedule_follows_its_slots_and_ends() -> None:
    start = (NOW // SLOT_S + 1) * SLOT_S
    controller = _controller()
    _apply(
        controller, _command(CMD_SCHEDULE, 1, expires=start + 3 * SLOT_S, revert_s=600, start=start, limits=[80, 40])
    )
    assert controller.target(NOW).idle, "before its first slot, a schedule limits nothing"
    assert controller.next_change(NOW) == start
    assert controller.target(start).limit_pct == 80
    assert controller.target(start + SLOT_S - 1).limit_pct == 80
    assert controller.target(start + SLOT_S).limit_pct == 40
    assert controller.target(start + 2 * SLOT_S).idle
    assert [c.seq for c in controller.expire(start + 3 * SLOT_S)] == [1]
    assert controller.active == []


def test_a_limit_of_100_is_in_force_but_does_not_curtail() -> None:
    controller = _controller()
    _apply(controller, _command(CMD_LIMIT, 1, pct=100, revert_s=60))
    target = controller.target(NOW)
    assert not target.idle and not target.curtails


def test_seqs_survive_through_the_caller_and_commands_resume() -> None:
    controller = _controller()
    raw = _command(CMD_LIMIT, 5, pct=40, revert_s=60, expires=NOW + 100)
    _apply(controller, raw)
    # What the gateway keeps in its outbox: the last seqs and the raw commands in force.
    again = Controller(DEV, {"grid-op": OPERATOR.public_key}, dict(controller.last_seq))
    assert again.check(raw, NOW).reason == "REPLAYED"
    assert again.resume(raw, NOW + 50) is not None
    assert again.target(NOW + 50).limit_pct == 40
    assert Controller(DEV, {"grid-op": OPERATOR.public_key}).resume(raw, NOW + 100) is None, "expired: not resumed"
    assert Controller(DEV, {"someone-else": SECOND.public_key}).resume(raw, NOW) is None, "operator no longer listed"


def test_a_refused_command_still_spends_its_seq() -> None:
    controller = _controller()
    raw = _command(CMD_LIMIT, 4, pct=40, revert_s=60)
    verdict = controller.check(raw, NOW)
    assert verdict.command is not None
    controller.consume(verdict.command)  # the inverter did not take it
    assert controller.check(raw, NOW).reason == "REPLAYED"
    assert controller.active == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_refused_never_raised(raw: bytes) -> None:
    verdict = _controller().check(raw, NOW)
    assert not verdict.ok and verdict.reason in ("MALFORMED", "UNKNOWN_OPERATOR")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=7))
def test_flipped_bits_are_refused(position: int, bit: int) -> None:
    raw = bytearray(_command(CMD_LIMIT, 9, pct=40, revert_s=60))
    raw[position % len(raw)] ^= 1 << bit
    verdict = _controller().check(bytes(raw), NOW)
    assert not verdict.ok
