"""The flash outbox: signed readings kept until the broker acknowledges them.

Layout, in one directory:

    seg-00000000.bin ...   append-only segments of up to SEGMENT_RECORDS records
    acked                  the highest acknowledged seq (write-temp-then-rename)

A record is ``seq (4) | length (2) | COSE bytes | check (4)``, the check being
the first 4 bytes of SHA-256 over everything before it. The segments are the
truth: the newest record gives the next seq, prev, last t1 and the counters
(``ChainHead.after``), so no separate head can disagree with them.

Power loss at any moment:
- during an append: the torn record fails its check and is cut off at the
  next start; it was never published (publishing starts only after the
  append), so its seq is free to take again;
- after an append: the record is whole, the chain continues after it;
- during the ``acked`` update: the old file stands; a few readings are sent
  again and ingest counts them as duplicates.

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


def _check(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:4]


def encode_record(seq: int, cose: bytes) -> bytes:
    body = seq.to_bytes(4, "big") + len(cose).to_bytes(2, "big") + cose
    return body + _check(body)


def decode_records(data: bytes) -> tuple:
    """``([(seq, cose)...], valid_length)``: the whole records from the start of ``data``."""
    records = []
    at = 0
    while at + 6 <= len(data):
        seq = int.from_bytes(data[at : at + 4], "big")
        length = int.from_bytes(data[at + 4 : at + 6], "big")
        end = at + 6 + length + 4
        if end > len(data) or _check(data[at : end - 4]) != data[end - 4 : end]:
            break
        records.append((seq, data[at + 6 : end - 4]))
        at = end
    return records, at


class Files:
    """The filesystem calls the outbox makes; tests wrap them to cut the power."""

    def __init__(self, os_module: object) -> None:
        self.os = os_module

    def listdir(self, path: str) -> list:
        return self.os.listdir(path)  # type: ignore[attr-defined]

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

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
        self.segments = []  # type: list[int]
        # (seq, first seq of its segment) of every unacknowledged record
        self.pending = []  # type: list[tuple[int, int]]
        self.acked = -1
        self.head = ChainHead()
        self.last_count = 0  # records in the newest segment
        self._recover()

    def _path(self, first_seq: int) -> str:
        return "%s/%s%08d.bin" % (self.dir, _PREFIX, first_seq)

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
            data = self.files.read(self._path(first))
            records, valid = decode_records(data)
            if valid != len(data):
                # A torn append: keep the whole records only, so later appends follow them.
                self.files.replace(self._path(first), data[:valid])
            for seq, cose in records:
                if seq > self.acked:
                    self.pending.append((seq, first))
                last = cose
            self.last_count = len(records)
        while len(self.segments) > 1 and self.last_count == 0:
            # An empty newest segment (torn first record): drop it.
            self.files.remove(self._path(self.segments.pop()))
            self.last_count = len(decode_records(self.files.read(self._path(self.segments[-1])))[0])
        if last is not None:
            self.head = ChainHead.after(last)

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
        self.pending.append((seq, self.segments[-1]))
        self.head = ChainHead.after(cose)

    def unacknowledged(self) -> list:
        """``[(seq, cose)]`` in seq order, for (re)sending."""
        out = []
        for first in sorted(set(segment for _seq, segment in self.pending)):
            for seq, cose in decode_records(self.files.read(self._path(first)))[0]:
                if seq > self.acked:
                    out.append((seq, cose))
        return out

    def acknowledge(self, seq: int) -> None:
        """The broker has the reading ``seq`` (PUBACK), and all before it."""
        if seq <= self.acked:
            return
        self.files.replace(self.dir + "/acked", str(seq).encode())
        self.acked = seq
        self.pending = [(s, segment) for s, segment in self.pending if s > seq]

    def _drop_acknowledged(self) -> None:
        # Whole segments before the newest whose records are all acknowledged.
        # The newest always stays: its last record is the chain head.
        still = set(segment for _seq, segment in self.pending)
        while len(self.segments) > 1 and self.segments[0] not in still:
            self.files.remove(self._path(self.segments.pop(0)))
