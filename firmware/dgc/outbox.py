"""The flash outbox: signed readings kept until the broker acknowledges them.

Layout, in one directory:

    seg-00000000.bin ...   append-only segments of up to SEGMENT_RECORDS records
    acked                  the highest acknowledged seq (write-temp-then-rename)

A record is ``seq (4) | length (2) | COSE bytes | check (4)``, the check being
the first 4 bytes of SHA-256 over everything before it. The segments are the
truth: the newest record gives the next seq, prev, last t1 and the counters
(``ChainHead.after``), so no separate head can disagree with them. Seqs are
consecutive across the segments (an append must take the head's next seq),
so a segment's name and the next segment's name bound its records, and what
is unacknowledged is the seqs after ``acked``: nothing per record is kept in
RAM.

Memory: records are read from flash one at a time into one small buffer, at
boot, at every publish and during a replay after an outage, so the heap the
outbox needs does not grow with the backlog. A reading is never read back
whole from a segment, nor a backlog gathered into a list.

Power loss at any moment:
- during an append: the torn record fails its check and is cut off at the
  next start (the whole records are copied to a temporary file that is then
  renamed over the segment); it was never published (publishing starts only
  after the append), so its seq is free to take again;
- after an append: the record is whole, the chain continues after it;
- during the ``acked`` update: the old file stands; a few readings are sent
  again and ingest counts them as duplicates;
- during the cut of a torn record: the temporary file is deleted at the next
  start and the cut is made again.

Flash writes per reading: one append of about 300 bytes, and on PUBACK one
rewrite of the 10-byte ``acked`` file (a create and a rename). On littlefs
(ESP32, RP2040) each costs one or two 4 KiB block programs, so a reading a
minute is about 4,000 block programs a day, spread by littlefs's wear
levelling over the filesystem: a 1 MiB partition (256 blocks) rated for
100,000 erase cycles lasts 256 * 100,000 / 4,000 = 6,400 days, about 17 years.

The outbox never drops an unacknowledged reading: when MAX_SEGMENTS are in
use and the oldest still holds unacknowledged records, ``full()`` is true and
the application pauses readings (the next reading spans the pause).
"""

import hashlib

from crev.reading import ChainHead

SEGMENT_RECORDS = 64
MAX_SEGMENTS = 16
_PREFIX = "seg-"
_HEADER = 6  # seq (4) | length (2)
_CHECK = 4
# A reading of SPEC §3 is about 300 bytes; one with many channels grows the buffer once.
_BUFFER = 512
_END = -1  # no more bytes: the segment ends cleanly here
_TORN = -2  # a partial or corrupt record: the segment's whole records end here


def _check(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:_CHECK]


def encode_record(seq: int, cose: bytes) -> bytes:
    body = seq.to_bytes(4, "big") + len(cose).to_bytes(2, "big") + cose
    return body + _check(body)


class Files:
    """The filesystem calls the outbox makes; tests wrap them to cut the power."""

    def __init__(self, os_module: object) -> None:
        self.os = os_module

    def listdir(self, path: str) -> list:
        return self.os.listdir(path)  # type: ignore[attr-defined]

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open(self, path: str) -> object:
        """``path`` opened for reading; the outbox reads records from it with ``readinto``."""
        return open(path, "rb")

    def append(self, path: str, data: bytes) -> None:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()

    def replace(self, path: str, data: bytes) -> None:
        temp = path + ".tmp"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
        self.os.rename(temp, path)  # type: ignore[attr-defined]

    def copy(self, source: str, target: str, length: int, buffer: bytearray) -> None:
        """Write the first ``length`` bytes of ``source`` to ``target``, through ``buffer``."""
        view = memoryview(buffer)
        with open(source, "rb") as src, open(target, "wb") as dst:
            while length > 0:
                n = src.readinto(buffer, min(length, len(buffer)))  # type: ignore[call-arg,unused-ignore]
                if not n:
                    break
                dst.write(view[:n])
                length -= n
            dst.flush()

    def truncate(self, path: str, length: int, buffer: bytearray) -> None:
        """Keep the first ``length`` bytes of ``path`` (write-temp-then-rename)."""
        temp = path + ".tmp"
        self.copy(path, temp, length, buffer)
        self.os.rename(temp, path)  # type: ignore[attr-defined]

    def remove(self, path: str) -> None:
        self.os.remove(path)  # type: ignore[attr-defined]

    def mkdir(self, path: str) -> None:
        try:
            self.os.mkdir(path)  # type: ignore[attr-defined]
        except OSError:
            pass  # it exists


class Outbox:
    def __init__(
        self,
        directory: str,
        files: Files,
        segment_records: int = SEGMENT_RECORDS,
        max_segments: int = MAX_SEGMENTS,
    ) -> None:
        self.dir = directory
        self.files = files
        self.segment_records = segment_records
        self.max_segments = max_segments
        self.files.mkdir(directory)
        self.segments = []  # type: list[int]  # the first seq of each segment, oldest first
        self.acked = -1
        self.head = ChainHead()
        self.last_count = 0  # records in the newest segment
        self._header = bytearray(_HEADER)
        self._buffer = bytearray(_BUFFER)
        self._view = memoryview(self._buffer)
        self._recover()

    def _path(self, first_seq: int) -> str:
        return "%s/%s%08d.bin" % (self.dir, _PREFIX, first_seq)

    # ------------------------------------------------------------ reading records

    def _next_header(self, f: object) -> int:
        """Read the next record's header into ``self._header``: its COSE length, _END or _TORN."""
        header = self._header
        got = f.readinto(header)  # type: ignore[attr-defined]
        if not got:
            return _END
        if got != _HEADER:
            return _TORN
        return header[4] << 8 | header[5]

    def _header_seq(self) -> int:
        header = self._header
        return header[0] << 24 | header[1] << 16 | header[2] << 8 | header[3]

    def _read_body(self, f: object, length: int) -> bool:
        """Read the COSE bytes and the check that follow the header into the buffer; True if whole."""
        need = length + _CHECK
        if need > len(self._buffer):
            self._buffer = bytearray(need)
            self._view = memoryview(self._buffer)
        buffer = self._buffer
        if f.readinto(buffer, need) != need:  # type: ignore[attr-defined]
            return False
        check = hashlib.sha256(self._header)
        check.update(self._view[:length])
        digest = check.digest()
        return all(digest[i] == buffer[length + i] for i in range(_CHECK))

    def _read_record(self, f: object) -> int:
        """Read the next whole record into the buffer: its COSE length, _END or _TORN."""
        length = self._next_header(f)
        if length < 0 or self._read_body(f, length):
            return length
        return _TORN

    def _scan(self, first: int) -> tuple:
        """``(records, whole_bytes, last_record_offset, torn)`` of one segment."""
        count = 0
        at = 0
        last = -1
        f = self.files.open(self._path(first))
        try:
            while True:
                length = self._read_record(f)
                if length < 0:
                    return count, at, last, length == _TORN
                count += 1
                last = at
                at += _HEADER + length + _CHECK
        finally:
            f.close()  # type: ignore[attr-defined]

    def _record_at(self, first: int, offset: int) -> bytes:
        f = self.files.open(self._path(first))
        try:
            f.seek(offset)  # type: ignore[attr-defined]
            length = self._read_record(f)
        finally:
            f.close()  # type: ignore[attr-defined]
        if length < 0:
            raise OSError("the record at %d in segment %d cannot be read back" % (offset, first))
        return bytes(self._view[:length])

    def _recover(self) -> None:
        names = self.files.listdir(self.dir)
        for name in names:
            if name.endswith(".tmp"):
                self.files.remove(self.dir + "/" + name)  # a rename that never happened
        self.segments = sorted(
            int(name[len(_PREFIX) : -4]) for name in names if name.startswith(_PREFIX) and name.endswith(".bin")
        )
        if "acked" in names:
            text = self.files.read(self.dir + "/acked")
            self.acked = int(text) if text.strip() else -1
        last = None
        for first in self.segments:
            count, whole, offset, torn = self._scan(first)
            if torn:
                # A torn append: keep the whole records only, so later appends follow them.
                self.files.truncate(self._path(first), whole, self._buffer)
            if count:
                last = (first, offset)
            self.last_count = count
        while len(self.segments) > 1 and self.last_count == 0:
            # An empty newest segment (torn first record): drop it.
            self.files.remove(self._path(self.segments.pop()))
            self.last_count = self._scan(self.segments[-1])[0]
        if last is not None:
            self.head = ChainHead.after(self._record_at(last[0], last[1]))

    # ------------------------------------------------------------ writing

    def full(self) -> bool:
        """True when one more reading would need a segment the ring cannot give."""
        if self.segments and self.last_count < self.segment_records:
            return False
        self._drop_acknowledged()
        return len(self.segments) >= self.max_segments

    def append(self, seq: int, cose: bytes) -> None:
        """Commit one signed reading; only then may it be published."""
        if seq != self.head.next_seq:
            raise ValueError("seq %d does not follow the outbox head %d" % (seq, self.head.next_seq))
        if self.full():
            raise ValueError("the outbox is full; wait for acknowledgements")
        if not self.segments or self.last_count >= self.segment_records:
            self.segments.append(seq)
            self.last_count = 0
        self.files.append(self._path(self.segments[-1]), encode_record(seq, cose))
        self.last_count += 1
        self.head = ChainHead.after(cose)

    # ------------------------------------------------------------ sending

    def pending(self) -> int:
        """How many readings the broker has not acknowledged."""
        if not self.segments:
            return 0
        return max(0, self.head.next_seq - max(self.acked + 1, self.segments[0]))

    def unacknowledged(self, limit: int = -1) -> object:
        """Yield ``(seq, cose)`` in seq order, at most ``limit`` of them (-1: all).

        Records stream from flash one at a time: ``cose`` is a view into the
        outbox's one buffer, valid until the next record is read (copy it with
        ``bytes()`` to keep it). Close the iterator when stopping early, so
        the segment file it reads is closed at once.
        """
        start = self.acked + 1
        segments = self.segments
        i = 0
        while i + 1 < len(segments) and segments[i + 1] <= start:
            i += 1  # every record of this segment is acknowledged
        while i < len(segments) and limit != 0:
            f = self.files.open(self._path(segments[i]))
            try:
                while limit != 0:
                    length = self._next_header(f)
                    if length < 0:
                        break
                    seq = self._header_seq()
                    if seq < start:  # acknowledged: stepped over unread
                        f.seek(length + _CHECK, 1)  # type: ignore[attr-defined]
                        continue
                    if not self._read_body(f, length):
                        # Recovery cut torn records at boot; a record gone bad since then
                        # ends what can be sent, so nothing after it goes out of order.
                        return
                    yield seq, self._view[:length]
                    limit -= 1
            finally:
                f.close()  # type: ignore[attr-defined]
            i += 1

    def acknowledge(self, seq: int) -> None:
        """The broker has the reading ``seq`` (PUBACK), and all before it."""
        if seq <= self.acked:
            return
        self.files.replace(self.dir + "/acked", str(seq).encode())
        self.acked = seq

    def _drop_acknowledged(self) -> None:
        # Whole segments before the newest whose records are all acknowledged:
        # a segment ends where the next one starts. The newest always stays:
        # its last record is the chain head.
        segments = self.segments
        while len(segments) > 1 and segments[1] <= self.acked + 1:
            self.files.remove(self._path(segments.pop(0)))
