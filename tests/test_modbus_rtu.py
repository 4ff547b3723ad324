"""The core's Modbus RTU codec against pymodbus's own RTU framer, in both directions.

The same vectors also run on real MicroPython (test_core_vectors.py, ids
micropython-rtu-*), so the firmware parses exactly what is checked here.
"""

from typing import Any

import pytest
import runner
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)
from support import load_vectors

from crev import modbus_rtu
from crev.errors import MisuseError

DOC = load_vectors()["rtu"]
CLIENT = FramerRTU(DecodePDU(False))
SERVER = FramerRTU(DecodePDU(True))
REQUESTS: dict[int, Any] = {3: ReadHoldingRegistersRequest, 4: ReadInputRegistersRequest}
RESPONSES: dict[int, Any] = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse}


def _pymodbus_request(unit: int, function: int, address: int, count: int) -> bytes:
    return bytes(CLIENT.buildFrame(REQUESTS[function](address=address, count=count, dev_id=unit)))


@pytest.mark.parametrize("case", DOC["requests"], ids=lambda c: "%(unit)d-%(function)d-%(address)d" % c)
def test_request_vectors_are_what_pymodbus_builds(case: dict[str, Any]) -> None:
    assert _pymodbus_request(case["unit"], case["function"], case["address"], case["count"]).hex() == case["frame"]
    ours = modbus_rtu.read_request(case["unit"], case["function"], case["address"], case["count"])
    assert ours.hex() == case["frame"]


@pytest.mark.parametrize("case", DOC["replies"], ids=lambda c: c["name"])
def test_reply_vectors_parse_in_any_pieces(case: dict[str, Any]) -> None:
    results = dict(runner.run_rtu({"requests": [], "replies": [case]}))["rtu-reply-" + case["name"]]
    for result in results:
        if isinstance(case["expect"], list):
            assert result["registers"] == case["expect"]
        else:
            assert result["error"] == case["expect"]
        assert result["needs"][-1] == 0 or "error" in result


def test_reply_vectors_are_what_pymodbus_builds() -> None:
    for case in DOC["replies"]:
        if "source" in case or not isinstance(case["expect"], list):
            continue
        response = RESPONSES[case["function"]](registers=case["expect"], dev_id=case["unit"])
        assert bytes(CLIENT.buildFrame(response)).hex() == case["frame"]
    exception = next(c for c in DOC["replies"] if c["name"] == "exception-2")
    assert bytes(CLIENT.buildFrame(ExceptionResponse(3, 2, device_id=1))).hex() == exception["frame"]


UNITS = st.integers(1, 247)
FUNCTIONS = st.sampled_from([3, 4])


@given(UNITS, FUNCTIONS, st.integers(0, 0xFFFF), st.integers(1, 125))
@settings(max_examples=300)
def test_requests_equal_pymodbus_and_its_server_accepts_them(
    unit: int, function: int, address: int, count: int
) -> None:
    if address + count > 0x10000:
        with pytest.raises(MisuseError):
            modbus_rtu.read_request(unit, function, address, count)
        return
    ours = modbus_rtu.read_request(unit, function, address, count)
    assert ours == _pymodbus_request(unit, function, address, count)
    used, pdu = SERVER.handleFrame(ours, 0, 0)
    assert used == len(ours) and pdu is not None
    assert (pdu.dev_id, pdu.function_code, pdu.address, pdu.count) == (unit, function, address, count)


@given(UNITS, FUNCTIONS, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), st.data())
@settings(max_examples=300)
def test_pymodbus_replies_parse_however_they_are_split(
    unit: int, function: int, registers: list[int], data: st.DataObject
) -> None:
    frame = bytes(CLIENT.buildFrame(RESPONSES[function](registers=registers, dev_id=unit)))
    parser = modbus_rtu.ReplyParser(unit, function, len(registers))
    at = 0
    while parser.needed():
        take = data.draw(st.integers(1, parser.needed()))
        parser.feed(frame[at : at + take])
        at += take
    assert at == len(frame)
    assert parser.result() == registers


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10), st.integers(0, 1000), st.integers(1, 255))
@settings(max_examples=500)
def test_a_changed_byte_never_yields_registers(registers: list[int], where: int, mask: int) -> None:
    frame = bytearray(CLIENT.buildFrame(ReadHoldingRegistersResponse(registers=registers, dev_id=5)))
    frame[where % len(frame)] ^= mask
    parser = modbus_rtu.ReplyParser(5, 3, len(registers))
    parser.feed(bytes(frame))  # if the function byte now says "exception", that is 5 bytes and a trailer
    with pytest.raises(modbus_rtu.RtuError):
        parser.result()


@pytest.mark.parametrize("code", [1, 2, 3, 4, 6, 11])
def test_exception_replies_carry_their_code(code: int) -> None:
    frame = bytes(CLIENT.buildFrame(ExceptionResponse(4, code, device_id=9)))
    parser = modbus_rtu.ReplyParser(9, 4, 10)
    parser.feed(frame[:2])
    assert parser.needed() == 3, "after the function byte the parser knows it is a 5-byte exception"
    parser.feed(frame[2:])
    with pytest.raises(modbus_rtu.RtuError) as caught:
        parser.result()
    assert caught.value.code == modbus_rtu.EXCEPTION and caught.value.exception_code == code


def test_crc16_of_the_modbus_reference_frame() -> None:
    # Modbus over serial line V1.02, section 6.2.2's example: 0x02 0x07 has CRC 0x1241.
    assert modbus_rtu.crc16(bytes([0x02, 0x07])) == 0x1241
