"""Runs the vectors of this folder through the portable core; the same code on
CPython (imported by tests/test_echonet_vectors.py) and on MicroPython (run
there by micropython_main.py), so the two can be compared result for result."""

import binascii

from crev import echonet, skstack
from crev import smartmeter as sm
from crev.errors import CrevError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _hex(data: bytes) -> str:
    return binascii.hexlify(data).decode()


def _unhex(text: str) -> bytes:
    return binascii.unhexlify(text)


def frame_result(hex_text: str) -> "dict[str, Any]":
    try:
        frame = echonet.decode(_unhex(hex_text))
    except echonet.EchonetError as err:
        return {"error": err.code}
    props = [[epc, _hex(edt)] for epc, edt in frame.props]
    return {
        "tid": frame.tid,
        "seoj": _hex(frame.seoj),
        "deoj": _hex(frame.deoj),
        "esv": frame.esv,
        "props": props,
        "encoded": _hex(frame.encode()),
    }


def _code(call: "Any") -> "Any":
    try:
        return call()
    except CrevError as err:
        return {"error": err.code}


def smartmeter_results(doc: "dict[str, Any]") -> "list[Any]":
    out: list[Any] = []
    for case in doc["scale"]:
        scale = sm.Scale(case["coefficient"], case["unit"], case["digits"])
        out.append(["scale", scale.to_mwh(case["raw"]), scale.mwh_per_step])
    for case in doc["delta"]:
        scale = sm.Scale(case["coefficient"], case["unit"], case["digits"])
        out.append(
            [
                "delta",
                scale.delta_steps(case["earlier"], case["later"]),
                scale.delta_mwh(case["earlier"], case["later"]),
            ]
        )
    for case in doc["errors"]:
        what = case["what"]
        if what == "raw":
            scale = sm.Scale(case["coefficient"], case["unit"], case["digits"])
            out.append(["error", _code(lambda s=scale, raw=case["raw"]: s.to_mwh(raw))])
            continue
        edt = _unhex(case["edt"])
        decoder: Any = {
            "unit": sm.decode_unit,
            "coefficient": sm.decode_coefficient,
            "digits": sm.decode_digits,
            "fixed": sm.decode_fixed,
            "history2": sm.decode_history2,
            "history1": sm.decode_history1,
        }[what]
        out.append(["error", _code(lambda d=decoder, e=edt: d(e))])
    for case in doc["fixed"]:
        value = sm.decode_fixed(_unhex(case["edt"]))
        out.append(["fixed", value.t, value.raw, _hex(sm.encode_fixed(value.t, value.raw))])
    for case in doc["history2"]:
        points = [list(p) for p in sm.decode_history2(_unhex(case["edt"]))]
        out.append(["history2", points])
    for case in doc["history1"]:
        day, values = sm.decode_history1(_unhex(case["edt"]))
        times = sm.history1_times(tuple(case["today"]), day)
        out.append(["history1", day, values, times[0], times[-1] - times[0]])
    return out


def _record(record: "Any") -> "dict[str, Any]":
    if isinstance(record, skstack.RxUdp):
        return {
            "type": "RxUdp",
            "src": record.src,
            "dst": record.dst,
            "rport": record.rport,
            "lport": record.lport,
            "lla": record.lla,
            "rssi": record.rssi,
            "secured": record.secured,
            "side": record.side,
            "data": _hex(record.data),
        }
    if isinstance(record, skstack.Event):
        return {"type": "Event", "num": record.num, "addr": record.addr, "side": record.side, "param": record.param}
    if isinstance(record, skstack.Ok):
        return {"type": "Ok", "text": record.text}
    if isinstance(record, skstack.Fail):
        return {"type": "Fail", "code": record.code}
    if isinstance(record, skstack.PanDesc):
        return {
            "type": "PanDesc",
            "channel": record.channel,
            "pan_id": record.pan_id,
            "addr": record.addr,
            "lqi": record.lqi,
            "side": record.side,
            "pair_id": record.pair_id,
        }
    if isinstance(record, skstack.Garbled):
        return {"type": "Garbled"}
    return {"type": "Text", "text": record.text}


def skstack_result(case: "dict[str, Any]", chunk: int = 0) -> "list[dict[str, Any]]":
    """The records of a case's bytes, fed whole or ``chunk`` bytes at a time."""
    reader = skstack.Reader(case["model"], case["binary"], case["rssi"])
    data = _unhex(case["bytes"])
    records: list[Any] = []
    if chunk:
        for at in range(0, len(data), chunk):
            records.extend(reader.feed(data[at : at + chunk]))
    else:
        records.extend(reader.feed(data))
    records.extend(reader.flush())
    return [_record(r) for r in records]


METER_IP = "FE80:0000:0000:0000:021D:1290:1234:5678"
OWN_IP = "FE80:0000:0000:0000:021D:1290:8765:4321"


def driver_transcript(model: str) -> "list[Any]":
    """A whole session of the Driver against scripted module output: what it
    writes and reports after each answer (join, a send, EVENT 29, EVENT 32/33)."""
    side = " 0" if model == skstack.BP35C0 else ""
    driver = skstack.Driver(model, "0" * 32, "0123456789AB", backoff_ms=100)
    now = 0
    driver.start(now)
    script = [
        "OK",
        "OK",
        "OK 01\r" if model == skstack.BP35C0 else "FAIL ER04",
        "OK",
        "OK",
        "OK",
        "OK",
        "EPANDESC",
        "  Channel:21",
        "  Pan ID:8888",
        "  Addr:001D129012345678",
        "EVENT 22 %s%s" % (OWN_IP, side),
        METER_IP,
        "OK",
        "OK",
        "OK",
        "EVENT 25 %s%s" % (METER_IP, side),
        "EVENT 21 %s%s 00" % (METER_IP, side),
        "OK",
        "EVENT 29 %s%s" % (METER_IP, side),
        "EVENT 25 %s%s" % (METER_IP, side),
        "EVENT 32 %s%s" % (OWN_IP, side),
        "EVENT 33 %s%s" % (OWN_IP, side),
        "ERXUDP %s %s 0E1A 0E1A 001D129012345678%s 1%s 0002 1081"
        % (METER_IP, OWN_IP, " C8" if model == skstack.BP35C0 else "", side),
    ]
    out: list[Any] = [[_hex(driver.output()), driver.events()]]
    for i, line in enumerate(script):
        if i == 16:
            driver.send(b"\x10\x81\x00\x01", now)
        if i == 22:
            driver.send(b"\x10\x81\x00\x02", now)
        raw = line.encode() if line.endswith("\r") else line.encode() + b"\r\n"
        driver.feed(raw, now)
        now += 50
        driver.tick(now)
        events = [[kind, _hex(d.data) if isinstance(d, skstack.RxUdp) else d] for kind, d in driver.events()]
        out.append([_hex(driver.output()), events, driver.state])
    now += 200
    driver.tick(now)
    out.append([_hex(driver.output()), driver.events(), driver.state])
    return out


def run_all(frames: "dict[str, Any]", meter: "dict[str, Any]", lines: "list[Any]") -> "list[Any]":
    out: list[Any] = []
    for case in frames["valid"] + frames["invalid"]:
        out.append(["frame", case["name"], frame_result(case["hex"])])
    out.append(["smartmeter", "all", smartmeter_results(meter)])
    for case in lines:
        out.append(["skstack", case["name"], [skstack_result(case), skstack_result(case, 1), skstack_result(case, 7)]])
    for model in skstack.MODELS:
        out.append(["driver", model, driver_transcript(model)])
    return out
