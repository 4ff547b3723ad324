# Times building and signing one reading on MicroPython; prints one JSON line.
# benchmarks/run.py passes the iteration count in /bench/params.json.
import gc
import json
import time

from crev.keys import SigningKey
from crev.reading import ChainHead

with open("/bench/params.json") as f:
    ITERATIONS = json.load(f)["iterations"]
key = SigningKey(bytes(range(32)), "pure")
channels = [
    (0, "SDM630-PV-0001", 1, 12345677734),
    (1, "SDM630-GRID-0009", 0, 3000000000),
    (2, "SDM630-GRID-0009", 0, 1500000000),
]
head = ChainHead(100, b"\x07" * 32, 1790000000, channels)


def one(i):
    now = [(c[0], c[1], c[2], c[3] + 1000 * i) for c in channels]
    return head.next_reading("dgc-bench-0001", 1790000060 + i, 1, now, "crev-bench/1").sign(key)


one(0)  # builds the fixed-base table once, as a device does at boot
gc.collect()
gc.disable()
before = gc.mem_alloc()
one(1)
allocated = gc.mem_alloc() - before
gc.enable()
gc.collect()
start = time.ticks_us()
for i in range(ITERATIONS):
    one(i + 2)
elapsed = time.ticks_diff(time.ticks_us(), start)
print(json.dumps({"us_per_reading": elapsed / ITERATIONS, "alloc_per_reading": allocated}))
