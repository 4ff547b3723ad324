"""ECHONET Lite frames (EDATA format 1) and request/response matching, without I/O.

A frame is::

    EHD1 0x10 | EHD2 0x81 | TID (2) | SEOJ (3) | DEOJ (3) | ESV | OPC
    then OPC times: EPC | PDC | EDT (PDC bytes)

all big-endian. The smart meter of the B-route (class 0x028801, see
crev.smartmeter) answers a controller (0x05FF01) over UDP port 3610.

Decoding is strict, because the bytes come off a radio link: every PDC is
checked against what is left, trailing bytes are an error, OPC 0 is refused
(none of the services here allows it), and each service's rule for EDTs is
enforced: a request to read carries none, a response to a read carries one
for every property, a "not possible" answer (Get_SNA, SetC_SNA) may mix
both. Every rejection is an EchonetError with a reason code; malformed bytes
never escape as IndexError or ValueError.

Services (ESV)::

    request     answers
    SetI  0x60  SetI_SNA 0x50 (only on failure)
    SetC  0x61  Set_Res 0x71, SetC_SNA 0x51
    Get   0x62  Get_Res 0x72, Get_SNA 0x52
    INF_REQ 0x63  INF 0x73, INF_SNA 0x53
    INFC  0x74  INFC_Res 0x7A (a notification that asks to be acknowledged)
    INF   0x73  also sent unsolicited (the smart meter's 30-minute push)

SetGet (0x6E and its answers) has a different body (two property lists)
and is refused as UNSUPPORTED_ESV: nothing here needs it.

``Tracker`` gives each request a TID and matches answers to requests by TID,
by service pair and by object (the answer comes from the object asked, to
the object that asked), and tells a stale TID (already answered or timed
out) from a foreign one (never issued).

Errors::

    InvalidInput
     +-- EchonetError   code: TRUNCATED, BAD_HEADER, UNSUPPORTED_ESV,
                        NO_PROPERTIES, PDC_OVERRUN, TRAILING, MISSING_EDT,
                        UNEXPECTED_EDT (a frame that breaks the format);
                        STALE_TID, FOREIGN_TID, WRONG_ESV, WRONG_EOJ,
                        WRONG_PROPERTIES (an answer that is not the one
                        awaited)
    MisuseError         a frame the caller built does not follow the format
"""

from crev.errors import InvalidInput, MisuseError

EHD1 = 0x10
EHD2_FORMAT1 = 0x81
PORT = 3610
HEADER_LENGTH = 12  # EHD1 EHD2 TID(2) SEOJ(3) DEOJ(3) ESV OPC

SETI = 0x60
SETC = 0x61
GET = 0x62
INF_REQ = 0x63
SETI_SNA = 0x50
SETC_SNA = 0x51
GET_SNA = 0x52
INF_SNA = 0x53
SET_RES = 0x71
GET_RES = 0x72
INF = 0x73
INFC = 0x74
INFC_RES = 0x7A

ESV_NAMES = {
    SETI: "SetI",
    SETC: "SetC",
    GET: "Get",
    INF_REQ: "INF_REQ",
    SETI_SNA: "SetI_SNA",
    SETC_SNA: "SetC_SNA",
    GET_SNA: "Get_SNA",
    INF_SNA: "INF_SNA",
    SET_RES: "Set_Res",
    GET_RES: "Get_Res",
    INF: "INF",
    INFC: "INFC",
    INFC_RES: "INFC_Res",
}

# What each service says about EDTs: every property carries one (REQUIRED),
# none does (NONE), or some do (EITHER: the SNA answers, where a property
# that could not be served is answered differently from one that could).
REQUIRED = 1
NONE = 0
EITHER = 2
EDT_RULE = {
    SETI: REQUIRED,
    SETC: REQUIRED,
    GET: NONE,
    INF_REQ: NONE,
    SETI_SNA: EITHER,
    SETC_SNA: EITHER,
    GET_SNA: EITHER,
    INF_SNA: EITHER,
    SET_RES: NONE,
    GET_RES: REQUIRED,
    INF: REQUIRED,
    INFC: REQUIRED,
    INFC_RES: NONE,
}

# A request and the services that may answer it.
ANSWERS = {
    SETC: (SET_RES, SETC_SNA),
    GET: (GET_RES, GET_SNA),
    INF_REQ: (INF, INF_SNA),
    INFC: (INFC_RES,),
}
NOT_POSSIBLE = (SETI_SNA, SETC_SNA, GET_SNA, INF_SNA)

CONTROLLER_EOJ = b"\x05\xff\x01"
NODE_PROFILE_EOJ = b"\x0e\xf0\x01"

# Reason codes of EchonetError.
TRUNCATED = "TRUNCATED"
BAD_HEADER = "BAD_HEADER"
UNSUPPORTED_ESV = "UNSUPPORTED_ESV"
NO_PROPERTIES = "NO_PROPERTIES"
PDC_OVERRUN = "PDC_OVERRUN"
TRAILING = "TRAILING"
MISSING_EDT = "MISSING_EDT"
UNEXPECTED_EDT = "UNEXPECTED_EDT"
STALE_TID = "STALE_TID"
FOREIGN_TID = "FOREIGN_TID"
WRONG_ESV = "WRONG_ESV"
WRONG_EOJ = "WRONG_EOJ"
WRONG_PROPERTIES = "WRONG_PROPERTIES"


class EchonetError(InvalidInput):
    """A frame from outside that is malformed, or not the answer awaited."""


def esv_name(esv: int) -> str:
    return ESV_NAMES.get(esv, "0x%02X" % esv)


def _eoj_text(eoj: bytes) -> str:
    return "%02X%02X%02X" % (eoj[0], eoj[1], eoj[2])


class Frame:
    """One ECHONET Lite message. ``props`` is a list of ``(epc, edt)``;
    ``edt`` is ``b""`` for a property sent without data (PDC 0)."""

    def __init__(self, tid: int, seoj: bytes, deoj: bytes, esv: int, props: list) -> None:
        self.tid = tid
        self.seoj = bytes(seoj)
        self.deoj = bytes(deoj)
        self.esv = esv
        self.props = props

    def epcs(self) -> list:
        return [p[0] for p in self.props]

    def get(self, epc: int) -> object:
        """The EDT of ``epc`` (``b""`` if it came without data), or None if absent."""
        for prop in self.props:
            if prop[0] == epc:
                return prop[1]
        return None

    def edt(self, epc: int) -> bytes:
        """The EDT of ``epc``; raises EchonetError if it is absent or empty."""
        for prop in self.props:
            if prop[0] == epc:
                if not prop[1]:
                    raise EchonetError(MISSING_EDT, "EPC 0x%02X came without data" % epc)
                return bytes(prop[1])
        raise EchonetError(MISSING_EDT, "the frame has no EPC 0x%02X" % epc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return False
        return (
            self.tid == other.tid
            and self.seoj == other.seoj
            and self.deoj == other.deoj
            and self.esv == other.esv
            and [(p[0], bytes(p[1])) for p in self.props] == [(p[0], bytes(p[1])) for p in other.props]
        )

    def __repr__(self) -> str:
        parts = []
        for prop in self.props:
            parts.append("%02X:%s" % (prop[0], bytes(prop[1]).hex()))
        return "Frame(tid=%d, %s->%s, %s, [%s])" % (
            self.tid,
            _eoj_text(self.seoj),
            _eoj_text(self.deoj),
            esv_name(self.esv),
            ", ".join(parts),
        )

    def encode(self) -> bytes:
        """The frame's bytes; raises MisuseError if it breaks the format."""
        if not 0 <= self.tid <= 0xFFFF:
            raise MisuseError("TID %r is not 0..65535" % (self.tid,))
        if len(self.seoj) != 3 or len(self.deoj) != 3:
            raise MisuseError("an EOJ is 3 bytes")
        rule = EDT_RULE.get(self.esv)
        if rule is None:
            raise MisuseError("ESV %s is not supported" % esv_name(self.esv))
        if not 1 <= len(self.props) <= 255:
            raise MisuseError("a frame carries 1..255 properties, not %d" % len(self.props))
        out = bytearray([EHD1, EHD2_FORMAT1, self.tid >> 8, self.tid & 0xFF])
        out.extend(self.seoj)
        out.extend(self.deoj)
        out.append(self.esv)
        out.append(len(self.props))
        for prop in self.props:
            epc = prop[0]
            edt = bytes(prop[1])
            if not 0 <= epc <= 0xFF:
                raise MisuseError("EPC %r is not a byte" % (epc,))
            if len(edt) > 255:
                raise MisuseError("EPC 0x%02X: an EDT is at most 255 bytes" % epc)
            if rule == REQUIRED and not edt:
                raise MisuseError("%s needs data for EPC 0x%02X" % (esv_name(self.esv), epc))
            if rule == NONE and edt:
                raise MisuseError("%s carries no data, but EPC 0x%02X has some" % (esv_name(self.esv), epc))
            out.append(epc)
            out.append(len(edt))
            out.extend(edt)
        return bytes(out)


def decode(data: bytes) -> Frame:
    """The frame in ``data``, which must hold exactly one. Raises EchonetError."""
    n = len(data)
    if n < HEADER_LENGTH:
        raise EchonetError(TRUNCATED, "%d bytes, shorter than the %d-byte header" % (n, HEADER_LENGTH))
    if data[0] != EHD1 or data[1] != EHD2_FORMAT1:
        raise EchonetError(BAD_HEADER, "EHD %02X%02X, not 1081 (ECHONET Lite format 1)" % (data[0], data[1]))
    esv = data[10]
    rule = EDT_RULE.get(esv)
    if rule is None:
        raise EchonetError(UNSUPPORTED_ESV, "ESV 0x%02X is not supported" % esv)
    opc = data[11]
    if opc == 0:
        raise EchonetError(NO_PROPERTIES, "OPC 0: %s must carry at least one property" % esv_name(esv))
    props = []
    at = HEADER_LENGTH
    for index in range(opc):
        if at + 2 > n:
            raise EchonetError(TRUNCATED, "property %d of %d is cut off at byte %d" % (index + 1, opc, n))
        epc = data[at]
        pdc = data[at + 1]
        at += 2
        if at + pdc > n:
            raise EchonetError(PDC_OVERRUN, "EPC 0x%02X: PDC %d runs %d bytes past the end" % (epc, pdc, at + pdc - n))
        if rule == REQUIRED and pdc == 0:
            raise EchonetError(MISSING_EDT, "%s without data for EPC 0x%02X" % (esv_name(esv), epc))
        if rule == NONE and pdc != 0:
            raise EchonetError(UNEXPECTED_EDT, "%s with %d bytes of data for EPC 0x%02X" % (esv_name(esv), pdc, epc))
        props.append((epc, bytes(data[at : at + pdc])))
        at += pdc
    if at != n:
        raise EchonetError(TRAILING, "%d bytes after the last property" % (n - at))
    return Frame((data[2] << 8) | data[3], bytes(data[4:7]), bytes(data[7:10]), esv, props)


def infc_response(frame: Frame) -> Frame:
    """The INFC_Res that acknowledges ``frame`` (an INFC): same TID, the
    objects swapped, each property echoed without data."""
    if frame.esv != INFC:
        raise MisuseError("only an INFC is acknowledged, not %s" % esv_name(frame.esv))
    return Frame(frame.tid, frame.deoj, frame.seoj, INFC_RES, [(p[0], b"") for p in frame.props])


class Tracker:
    """Outstanding requests, by TID.

    ``request`` allocates the next TID (1, 2, ..., 65535, 0, 1, ...,
    skipping any still outstanding); ``match`` takes a decoded answer and
    returns the request it answers, or None for an unsolicited notification
    (an INF or INFC whose TID is not outstanding); ``expire`` drops requests
    past their deadline. TIDs that were answered or expired are remembered
    (the last ``memory`` of them), so a late or duplicated answer is STALE
    rather than FOREIGN. Times are whatever monotonic unit the caller uses.
    """

    def __init__(self, seoj: bytes = CONTROLLER_EOJ, first_tid: int = 1, memory: int = 64) -> None:
        if len(seoj) != 3:
            raise MisuseError("an EOJ is 3 bytes")
        self.seoj = bytes(seoj)
        self.next_tid = first_tid & 0xFFFF
        self.memory = memory
        self.pending = {}  # type: dict
        self.closed = []  # type: list

    def request(self, esv: int, deoj: bytes, props: list, deadline: int) -> Frame:
        """A new request frame (not yet encoded), registered as outstanding."""
        if esv not in ANSWERS or esv == INFC:
            raise MisuseError("%s is not a request that expects an answer" % esv_name(esv))
        if len(self.pending) >= 0x10000:
            raise MisuseError("every TID is outstanding")
        while self.next_tid in self.pending:
            self.next_tid = (self.next_tid + 1) & 0xFFFF
        tid = self.next_tid
        self.next_tid = (tid + 1) & 0xFFFF
        frame = Frame(tid, self.seoj, deoj, esv, props)
        frame.encode()  # refuse a malformed request before it is registered
        self.pending[tid] = (frame, deadline)
        self._forget(tid)
        return frame

    def _forget(self, tid: int) -> None:
        if tid in self.closed:
            self.closed.remove(tid)

    def _close(self, tid: int) -> None:
        self._forget(tid)
        self.closed.append(tid)
        if len(self.closed) > self.memory:
            self.closed.pop(0)

    def outstanding(self) -> int:
        return len(self.pending)

    def match(self, frame: Frame) -> object:
        """The request ``frame`` answers (and it is no longer outstanding),
        None for an unsolicited INF or INFC; raises EchonetError otherwise."""
        entry = self.pending.get(frame.tid)
        if entry is None:
            if frame.esv in (INF, INFC):
                return None
            if frame.tid in self.closed:
                raise EchonetError(STALE_TID, "TID %d was already answered or timed out" % frame.tid)
            raise EchonetError(FOREIGN_TID, "TID %d was never sent" % frame.tid)
        request = entry[0]
        if frame.esv not in ANSWERS[request.esv]:
            if frame.esv in (INF, INFC):
                return None  # a notification whose TID happens to be in use
            raise EchonetError(
                WRONG_ESV,
                "TID %d: %s does not answer %s" % (frame.tid, esv_name(frame.esv), esv_name(request.esv)),
            )
        if frame.seoj != request.deoj or frame.deoj != request.seoj:
            raise EchonetError(
                WRONG_EOJ,
                "TID %d: answer from %s to %s, asked %s from %s"
                % (
                    frame.tid,
                    _eoj_text(frame.seoj),
                    _eoj_text(frame.deoj),
                    _eoj_text(request.deoj),
                    _eoj_text(request.seoj),
                ),
            )
        if frame.epcs() != request.epcs():
            raise EchonetError(
                WRONG_PROPERTIES,
                "TID %d: answer lists EPCs %s, asked %s" % (frame.tid, _hexes(frame.epcs()), _hexes(request.epcs())),
            )
        del self.pending[frame.tid]
        self._close(frame.tid)
        return request

    def expire(self, now: int) -> list:
        """Drop and return the requests whose deadline is at or before ``now``."""
        gone = []
        for tid in list(self.pending):
            frame, deadline = self.pending[tid]
            if deadline <= now:
                del self.pending[tid]
                self._close(tid)
                gone.append(frame)
        return gone

    def reset(self) -> None:
        """Forget everything (the link was re-established): every answer still
        in flight is then FOREIGN."""
        self.pending = {}
        self.closed = []


def _hexes(epcs: list) -> str:
    return "[" + ",".join(["%02X" % e for e in epcs]) + "]"
