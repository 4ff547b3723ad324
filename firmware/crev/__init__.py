"""crev: the portable, I/O-free core shared by firmware, gateway, ingest and auditors.

Deterministic CBOR, COSE_Sign1 with Ed25519, the signed reading schema, the
DGC-C rules and meter register decoding. Runs unchanged on CPython 3.11+
and MicroPython 1.2x. Nothing in this package reads a clock, a socket or a
file: time and bytes are passed in.
"""

__version__ = "0.1.0"
