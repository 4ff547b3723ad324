"""The ECHONET Lite codec (crev.echonet): round trips, every malformed-frame
class, and matching answers to requests by TID, service and object."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crev import echonet
from crev import smartmeter as sm
from crev.echonet import EchonetError, Frame
from crev.errors import MisuseError

CONTROLLER = echonet.CONTROLLER_EOJ
METER = sm.CLASS_EOJ

eojs = st.binary(min_size=3, max_size=3)
edts = st.binary(min_size=1, max_size=255)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    esv = draw(st.sampled_from(sorted(echonet.EDT_RULE)))
    rule = echonet.EDT_RULE[esv]
    count = draw(st.integers(1, 8))
    props = []
    for _ in range(count):
        epc = draw(st.integers(0, 255))
        if rule == echonet.REQUIRED:
            edt = draw(edts)
        elif rule == echonet.NONE:
            edt = b""
        else:
            edt = draw(st.one_of(st.just(b""), edts))
        props.append((epc, edt))
    return Frame(draw(st.integers(0, 0xFFFF)), draw(eojs), draw(eojs), esv, props)


@given(frames())
def test_round_trip(frame: Frame) -> None:
    data = frame.encode()
    assert echonet.decode(data) == frame
    assert echonet.decode(data).encode() == data


@given(frames())
def test_every_truncation_and_extension_is_refused(frame: Frame) -> None:
    data = frame.encode()
    for cut in range(len(data)):
        with pytest.raises(EchonetError) as err:
            echonet.decode(data[:cut])
        assert err.value.code in (echonet.TRUNCATED, echonet.PDC_OVERRUN, echonet.NO_PROPERTIES)
    with pytest.raises(EchonetError) as err:
        echonet.decode(data + b"\x00")
    assert err.value.code == echonet.TRAILING


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_the_codecs_error(data: bytes) -> None:
    try:
        frame = echonet.decode(data)
    except EchonetError as err:
        assert err.code in (
            echonet.TRUNCATED,
            echonet.BAD_HEADER,
            echonet.UNSUPPORTED_ESV,
            echonet.NO_PROPERTIES,
            echonet.PDC_OVERRUN,
            echonet.TRAILING,
            echonet.MISSING_EDT,
            echonet.UNEXPECTED_EDT,
        )
        return
    assert frame.encode() == data


@settings(max_examples=500)
@given(st.integers(0, 0xFFFF), st.sampled_from(sorted(echonet.EDT_RULE)), st.binary(max_size=40))
def test_random_bodies_behind_a_valid_header(tid: int, esv: int, body: bytes) -> None:
    # Random bytes rarely get past EHD; this puts them behind a good header.
    data = bytes([0x10, 0x81, tid >> 8, tid & 0xFF]) + CONTROLLER + METER + bytes([esv]) + body
    try:
        frame = echonet.decode(data)
    except EchonetError:
        return
    assert frame.encode() == data


def _code(data: bytes) -> str:
    with pytest.raises(EchonetError) as err:
        echonet.decode(data)
    return err.value.code


def test_each_malformed_class_names_its_reason() -> None:
    get = Frame(1, CONTROLLER, METER, echonet.GET, [(0xEA, b""), (0xEB, b"")]).encode()
    assert _code(get[:11]) == "TRUNCATED"
    assert _code(b"\x10\x82" + get[2:]) == "BAD_HEADER"
    assert _code(get[:10] + b"\x6e" + get[11:]) == "UNSUPPORTED_ESV"
    assert _code(get[:11] + b"\x00") == "NO_PROPERTIES"
    assert _code(get[:-1]) == "TRUNCATED"
    assert _code(get + b"\xff") == "TRAILING"
    assert _code(get[:-1] + b"\x01") == "PDC_OVERRUN"
    res = Frame(1, METER, CONTROLLER, echonet.GET_RES, [(0xE7, b"\x00\x00\x01\xf4")]).encode()
    assert _code(res[:-4]) == "PDC_OVERRUN"
    assert _code(res[:13] + b"\x00") == "MISSING_EDT"
    assert _code(get[:13] + b"\x01\x00" + get[14:]) == "UNEXPECTED_EDT"
    with pytest.raises(EchonetError) as err:
        echonet.decode(res[:-4])
    assert "\n" not in str(err.value) and "PDC 4" in str(err.value)


def test_encode_refuses_what_the_format_does_not_allow() -> None:
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, echonet.GET, []).encode()
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, echonet.GET, [(0xEA, b"\x01")]).encode()
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, echonet.GET_RES, [(0xEA, b"")]).encode()
    with pytest.raises(MisuseError):
        Frame(0x10000, CONTROLLER, METER, echonet.GET, [(0xEA, b"")]).encode()
    with pytest.raises(MisuseError):
        Frame(1, b"\x05\xff", METER, echonet.GET, [(0xEA, b"")]).encode()
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, 0x6E, [(0xEA, b"")]).encode()
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, echonet.SETC, [(0xED, bytes(256))]).encode()
    with pytest.raises(MisuseError):
        Frame(1, CONTROLLER, METER, echonet.GET, [(0x100, b"")]).encode()


def test_infc_is_answered_with_infc_res() -> None:
    infc = Frame(0x1234, METER, CONTROLLER, echonet.INFC, [(0xEA, bytes(11)), (0xEB, bytes(11))])
    answer = echonet.infc_response(infc)
    assert answer == Frame(0x1234, CONTROLLER, METER, echonet.INFC_RES, [(0xEA, b""), (0xEB, b"")])
    assert answer.encode().hex() == "1081123405ff010288017a02ea00eb00"
    with pytest.raises(MisuseError):
        echonet.infc_response(Frame(1, METER, CONTROLLER, echonet.INF, [(0xEA, bytes(11))]))


def _answer(request: Frame, esv: int, props: list[tuple[int, bytes]] | None = None, tid: int | None = None) -> Frame:
    return Frame(
        request.tid if tid is None else tid,
        request.deoj,
        request.seoj,
        esv,
        props if props is not None else [(epc, b"\x01") for epc in request.epcs()],
    )


def test_tracker_matches_by_tid_service_and_object() -> None:
    tracker = echonet.Tracker()
    first = tracker.request(echonet.GET, METER, [(0xEA, b""), (0xEB, b"")], deadline=100)
    second = tracker.request(echonet.SETC, METER, [(0xED, bytes(7))], deadline=100)
    assert (first.tid, second.tid) == (1, 2)
    # Answers may come in any order.
    assert tracker.match(_answer(second, echonet.SET_RES, [(0xED, b"")])) is second
    assert tracker.match(_answer(first, echonet.GET_SNA, [(0xEA, b"\x01"), (0xEB, b"")])) is first
    assert tracker.outstanding() == 0


def test_tracker_rejects_stale_foreign_and_mismatched_answers() -> None:
    tracker = echonet.Tracker()
    get = tracker.request(echonet.GET, METER, [(0xEA, b"")], deadline=100)
    for wrong, code in (
        (_answer(get, echonet.SET_RES, [(0xEA, b"")]), "WRONG_ESV"),
        (Frame(get.tid, b"\x02\x87\x01", CONTROLLER, echonet.GET_RES, [(0xEA, b"\x01")]), "WRONG_EOJ"),
        (Frame(get.tid, METER, b"\x05\xff\x02", echonet.GET_RES, [(0xEA, b"\x01")]), "WRONG_EOJ"),
        (_answer(get, echonet.GET_RES, [(0xEB, b"\x01")]), "WRONG_PROPERTIES"),
        (_answer(get, echonet.GET_RES, tid=get.tid + 1), "FOREIGN_TID"),
    ):
        with pytest.raises(EchonetError) as err:
            tracker.match(wrong)
        assert err.value.code == code
    assert tracker.outstanding() == 1, "a wrong answer leaves the request waiting for the right one"
    assert tracker.match(_answer(get, echonet.GET_RES)) is get
    with pytest.raises(EchonetError) as err:
        tracker.match(_answer(get, echonet.GET_RES))  # a duplicate
    assert err.value.code == "STALE_TID"


def test_tracker_expires_and_then_calls_late_answers_stale() -> None:
    tracker = echonet.Tracker()
    early = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=50)
    late = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=500)
    assert tracker.expire(49) == []
    assert tracker.expire(50) == [early]
    with pytest.raises(EchonetError) as err:
        tracker.match(_answer(early, echonet.GET_RES))
    assert err.value.code == "STALE_TID"
    assert tracker.match(_answer(late, echonet.GET_RES)) is late


def test_tracker_lets_notifications_through() -> None:
    tracker = echonet.Tracker()
    pending = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=50)
    push = Frame(pending.tid, METER, CONTROLLER, echonet.INF, [(0xEA, bytes(11))])
    assert tracker.match(push) is None, "an INF with a TID in use is still a notification"
    assert tracker.match(Frame(999, METER, CONTROLLER, echonet.INFC, [(0xEA, bytes(11))])) is None
    request = tracker.request(echonet.INF_REQ, METER, [(0xEA, b"")], deadline=50)
    assert tracker.match(_answer(request, echonet.INF, [(0xEA, bytes(11))])) is request


def test_tracker_wraps_and_skips_tids_in_use() -> None:
    tracker = echonet.Tracker(first_tid=0xFFFE)
    a = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=9)
    b = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=9)
    c = tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=9)
    assert (a.tid, b.tid, c.tid) == (0xFFFE, 0xFFFF, 0)
    tracker.next_tid = 0xFFFF
    assert tracker.request(echonet.GET, METER, [(0xE7, b"")], deadline=9).tid == 1
    with pytest.raises(MisuseError):
        tracker.request(echonet.GET_RES, METER, [(0xE7, b"\x01")], deadline=9)
    with pytest.raises(MisuseError):
        tracker.request(echonet.GET, METER, [(0xE7, b"\x01")], deadline=9)
    tracker.reset()
    with pytest.raises(EchonetError) as err:
        tracker.match(_answer(a, echonet.GET_RES))
    assert err.value.code == "FOREIGN_TID"
