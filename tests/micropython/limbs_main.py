# The limb signing of firmware/dgc/limbs25519.py on real MicroPython: the RFC 8032
# vectors' signatures, and what one field operation and one signature allocate
# with the GC off. Prints one JSON line.
import gc
import json

from dgc import limbs25519

from crev.keys import SigningKey

with open("/test/vectors.json") as f:
    CASES = json.load(f)
limbs25519.install()  # as firmware/main.py does without the signing table
signatures = []
for case in CASES:
    key = SigningKey(bytes.fromhex(case["seed"]), "pure")
    signatures.append(key.sign(bytes.fromhex(case["message"])).hex())

element = limbs25519.limbs(2**255 - 20)
out = [0] * 22


def field_operations():
    limbs25519._mul(out, element, element)
    limbs25519._square(out, out)
    limbs25519._sub(out, out, element)
    limbs25519._add(out, out, element)


field_operations()  # a first call may allocate once (MicroPython's own caches)
gc.collect()
gc.disable()
before = gc.mem_alloc()
for _ in range(10):
    field_operations()
field_alloc = gc.mem_alloc() - before
gc.enable()

key = SigningKey(bytes(range(32)), "pure")
message = bytes(range(200))
key.sign(message)
gc.collect()
gc.disable()
before = gc.mem_alloc()
key.sign(message)
sign_alloc = gc.mem_alloc() - before
gc.enable()
print(json.dumps({"signatures": signatures, "field_alloc": field_alloc, "sign_alloc": sign_alloc}))
