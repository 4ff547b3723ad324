# Cuts the power at every step of the outbox's write path, on real MicroPython.
#
# The filesystem is MicroPython's own; only the power cut is simulated: a
# wrapper around the outbox's file calls raises PowerCut at the N-th change,
# after writing none or half of the bytes it was given (a torn write). Then
# the "device" boots again from what is on the filesystem and carries on.
# One JSON line per run reports what the broker would have seen.
import json
import os

from dgc.outbox import Files, Outbox

from crev.keys import SigningKey

READINGS = 9
SMALL = (3, 3)  # 3 records a segment, 3 segments: the run rotates and deletes segments
KEY = SigningKey(bytes([5]) * 32, "pure")
DEV = "dgc-mcu-0001"


class PowerCut(Exception):
    pass


class CutFiles(Files):
    """Counts every change to the filesystem and cuts the power at one of them."""

    def __init__(self, cut_at, torn):
        super().__init__(os)
        self.cut_at = cut_at
        self.torn = torn
        self.changes = 0

    def _change(self, write, data, path):
        self.changes += 1
        if self.changes == self.cut_at:
            if self.torn and data:
                write(path, data[: len(data) // 2])
            raise PowerCut()
        write(path, data)

    def append(self, path, data):
        self._change(lambda p, d: Files.append(self, p, d), data, path)

    def replace(self, path, data):
        # A replace is two changes: writing the temporary file, then the rename.
        temp = path + ".tmp"
        self._change(lambda p, d: _write(p, d), data, temp)
        self._change(lambda p, d: os.rename(temp, p), b"", path)

    def truncate(self, path, length, buffer):
        # Like a replace: the copy of the whole records to the temporary file, then the rename.
        temp = path + ".tmp"
        self._change(lambda p, d: Files.copy(self, path, p, len(d), buffer), bytes(length), temp)
        self._change(lambda p, d: os.rename(temp, p), b"", path)

    def remove(self, path):
        self._change(lambda p, d: os.remove(p), b"", path)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _wipe(directory):
    try:
        for name in os.listdir(directory):
            os.remove(directory + "/" + name)
        os.rmdir(directory)
    except OSError:
        pass


def channels(step):
    return [
        (0, "PV-1", 1, 1000000 + 50000 * step),
        (1, "G-1", 0, 500000 + 10000 * step),
        (2, "G-1", 0, 200000 + 20000 * step),
    ]


def produce(outbox, published, step, restarted):
    reading = outbox.head.next_reading(
        DEV, 1790000060 + 60 * step, 1, channels(step), "crev-fw/test", 32 if restarted else 0, 1790000000
    )
    cose = reading.sign(KEY)
    outbox.append(reading.seq, cose)
    published.append(cose)  # only after the append: the record is on flash
    if reading.seq % 2 == 1:
        outbox.acknowledge(reading.seq)


def run(cut_at, torn):
    directory = "/outbox-%d-%d" % (cut_at, torn)
    _wipe(directory)
    published = []
    files = CutFiles(cut_at, torn)
    boots = 1
    step = 0
    restarted = False
    while step < READINGS:
        try:
            outbox = Outbox(directory, files, *SMALL)
            for seq, cose in outbox.unacknowledged():
                published.append(bytes(cose))  # resent after a boot; the view is reused
                if seq % 2 == 1:  # this test's broker acknowledges odd seqs
                    outbox.acknowledge(seq)
            # The meter is read afresh for the next seq; a reading cut before
            # its append was never published, so its seq is free again.
            step = outbox.head.next_seq
            while step < READINGS:
                produce(outbox, published, step, restarted)
                restarted = False
                step += 1
        except PowerCut:
            boots += 1
            restarted = True
            files = Files(os)  # the power stays on from now
    outbox = Outbox(directory, Files(os), *SMALL)
    return {
        "cut_at": cut_at,
        "torn": torn,
        "boots": boots,
        "changes": files.changes if isinstance(files, CutFiles) else -1,
        "acked": outbox.acked,
        "segments": sorted(n for n in os.listdir(directory) if n.startswith("seg-")),
        "published": [c.hex() for c in published],
        "pending": [seq for seq, _c in outbox.unacknowledged()],
        "next_seq": outbox.head.next_seq,
    }


# The first run has no cut: it tells how many changes a whole run makes.
baseline = run(0, 0)
print(json.dumps(baseline))
for cut_at in range(1, baseline["changes"] + 1):
    for torn in (0, 1):
        print(json.dumps(run(cut_at, torn)))


# A torn append is cut off at the next boot by copying the whole records to a
# temporary file and renaming it over the segment: cut the power during that
# copy (clean or halfway) and during the rename, then boot again.
for cut_at in (1, 2):
    for torn in (0, 1):
        directory = "/outbox-recut-%d-%d" % (cut_at, torn)
        _wipe(directory)
        box = Outbox(directory, Files(os), *SMALL)
        for step in range(2):
            produce_unacked = box.head.next_reading(
                DEV, 1790000060 + 60 * step, 1, channels(step), "crev-fw/test", 0, 1790000000
            )
            box.append(produce_unacked.seq, produce_unacked.sign(KEY))
        tearing = CutFiles(1, 1)  # the third append lands half
        box = Outbox(directory, tearing, *SMALL)
        try:
            produce(box, [], 2, False)
            torn_append = False
        except PowerCut:
            torn_append = True
        recut = CutFiles(cut_at, torn)
        try:
            Outbox(directory, recut, *SMALL)
            cut = False
        except PowerCut:
            cut = True
        box = Outbox(directory, Files(os), *SMALL)
        state = {"next_seq": box.head.next_seq, "pending": [seq for seq, _c in box.unacknowledged()]}
        produce(box, [], box.head.next_seq, True)
        box = Outbox(directory, Files(os), *SMALL)
        print(
            json.dumps(
                {
                    "recovery_cut": cut_at,
                    "torn": torn,
                    "torn_append": torn_append,
                    "cut": cut,
                    "recovery_changes": recut.changes,
                    "after_cut": state,
                    "after_append": [seq for seq, _c in box.unacknowledged()],
                    "files": sorted(os.listdir(directory)),
                }
            )
        )


# Without acknowledgements the ring fills up, and says so instead of dropping.
_wipe("/outbox-full")
full = Outbox("/outbox-full", Files(os), *SMALL)
made = 0
while not full.full():
    produce_unacked = full.head.next_reading(
        DEV, 1790000060 + 60 * made, 1, channels(made), "crev-fw/test", 0, 1790000000
    )
    full.append(produce_unacked.seq, produce_unacked.sign(KEY))
    made += 1
try:
    full.append(made, b"")
    refused = "no"
except ValueError as err:
    refused = str(err)
full.acknowledge(4)
print(json.dumps({"full_after": made, "refused": refused, "full_after_ack": full.full()}))
