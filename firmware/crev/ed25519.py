"""Pure-Python Ed25519 (RFC 8032 §5.1) for MicroPython.

CPython uses ``cryptography`` instead (see crev.keys); both produce identical
signatures because Ed25519 signing is deterministic. Verification is the
cofactorless check ``encode([S]B - [k]A) == R`` with ``S < L`` and canonical
point encodings required, which is what OpenSSL (and so ``cryptography``)
does, so both backends accept exactly the same signatures.

Not constant-time: big-integer arithmetic in Python cannot be. On a device the
key never leaves the chip and signing runs once a minute, so timing side
channels need physical access; the CPython backend is constant-time.
"""

from crev.sha512 import digest as _sha512
from crev.sha512 import new as _sha512_new

P = 2**255 - 19  # type: int
L = 2**252 + 27742317777372353535851937790883648493  # type: int
_D = -121665 * pow(121666, P - 2, P) % P
_D2 = 2 * _D % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)

_BY = 4 * pow(5, P - 2, P) % P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BASE = (_BX, _BY, 1, _BX * _BY % P)
_IDENTITY = (0, 1, 1, 0)

# Multiples 16**i * j * B for the radix-16 fixed-base table; built on first
# use (about 64 * 15 points, ~150 kB on CPython and about 200 kB of
# MicroPython heap) so import stays cheap. A controller short of RAM (an ESP32
# without PSRAM has about 110 kB of heap, an RP2040 about 190 kB) calls
# use_base_table(False): signing then uses the small comb below, in about
# 3 kB, with 63 doublings more than the table needs.
_base_table = None  # type: list | None
_use_table = True

# The comb: entry v - 1 is sum(2**(64 * i) * B for each bit i of v), v = 1..15,
# so [s]B takes 63 doublings and at most 64 additions, one per 4-bit column
# (bits j, 64 + j, 128 + j and 192 + j of s), against 252 doublings and about
# 126 additions for plain double-and-add. On MicroPython every bigint
# operation allocates (a multiplication and its reduction mod P about 170
# bytes), so the operation count is the heap churn: about a quarter of it. Each
# entry is affine, as (y + x, y - x, 2 * d * x * y) mod P, which saves two of
# the nine multiplications of an addition.
_comb = None  # type: list | None

# A function that gives the encoding of [s]B in place of _encode_point(_base_multiply(s)):
# the firmware's allocation-free one (firmware/dgc/limbs25519.py), or None.
_encoded_base_multiply = None  # type: object

# A function that gives the encoding of [s]B + [k](-A) in place of this module's ints (verify's
# last step): the firmware's limb one (firmware/dgc/limbs25519.py), or None.
_verify_multiply = None  # type: object

# The last seed's expanded secret (a, prefix): a device signs with one key,
# and expanding it is a SHA-512 of its own at every signature otherwise.
_expanded = None  # type: tuple | None


def use_base_table(enabled: bool) -> None:
    """Choose the fast fixed-base table (200 kB of heap) or the small comb (3 kB, slower)."""
    global _base_table, _use_table, _encoded_base_multiply
    _use_table = enabled
    _encoded_base_multiply = None
    if not enabled:
        _base_table = None


def use_encoded_base_multiply(function: object) -> None:
    """Sign with ``function(s)``, which must return the encoding of [s]B (None: this module's own)."""
    global _encoded_base_multiply
    _encoded_base_multiply = function


def use_verify(function: object) -> None:
    """Verify with ``function(a_point, s, k)``: the encoding of [s]B + [k](-A) (None: this module's own).

    ``a_point`` is A as decoded here, (x, y, 1, x * y) in ints; S < L and the decoding are checked
    here before it is called, and its result compared with R here, so the rules stay these.
    """
    global _verify_multiply
    _verify_multiply = function


class SignatureError(Exception):
    """The signature does not verify."""


# The point formulas read P into a local once: on MicroPython a global is a
# dictionary lookup at every use.


def _add(p1: tuple, p2: tuple) -> tuple:
    # RFC 8032 §5.1.4, extended coordinates (add-2008-hwcd-3).
    p = P
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 % p * t2 % p
    d = 2 * z1 * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _add_affine(p1: tuple, q: tuple) -> tuple:
    # _add with Z2 = 1 and the second point as (y + x, y - x, 2 * d * x * y): seven multiplications.
    p = P
    x1, y1, z1, t1 = p1
    y_plus_x, y_minus_x, xy2d = q
    a = (y1 - x1) * y_minus_x % p
    b = (y1 + x1) * y_plus_x % p
    c = t1 * xy2d % p
    d = 2 * z1
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _double(p1: tuple) -> tuple:
    # RFC 8032 §5.1.4, doubling (dbl-2008-hwcd).
    p = P
    x1, y1, z1, _ = p1
    a = x1 * x1 % p
    b = y1 * y1 % p
    c = 2 * z1 * z1 % p
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _multiply(scalar: int, point: tuple) -> tuple:
    # Right to left: MicroPython's int has no bit_length().
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _double(point)
        scalar >>= 1
    return result


def _comb_table() -> list:
    global _comb
    if _comb is None:
        _comb = _comb_points()
    return _comb


def _comb_points() -> list:
    """The comb's 15 entries, computed (the firmware's limb version keeps only its own copy)."""
    teeth = [_BASE]
    for _ in range(3):
        point = teeth[-1]
        for _ in range(64):
            point = _double(point)
        teeth.append(point)
    table = []
    for v in range(1, 16):
        point = _IDENTITY
        for i in range(4):
            if v >> i & 1:
                point = _add(point, teeth[i])
        x, y, z, _ = point
        zinv = pow(z, P - 2, P)
        x = x * zinv % P
        y = y * zinv % P
        entry = ((y + x) % P, (y - x) % P, _D2 * x % P * y % P)
        # A remainder keeps the size its dividend was given; from_bytes makes it the 32 bytes it needs.
        table.append(tuple(int.from_bytes(n.to_bytes(32, "little"), "little") for n in entry))
    return table


def _comb_multiply(scalar: int) -> tuple:
    table = _comb_table()
    # The scalar's bits read from its bytes: shifting a bigint would allocate at every step.
    bits = scalar.to_bytes(32, "little")
    result = _IDENTITY
    for j in range(63, -1, -1):
        if j != 63:
            result = _double(result)
        v = 0
        for i in range(4):
            k = 64 * i + j
            v |= (bits[k >> 3] >> (k & 7) & 1) << i
        if v:
            result = _add_affine(result, table[v - 1])
    return result


def _base_multiply(scalar: int) -> tuple:
    # Radix-16 table: no doublings, at most 64 additions.
    global _base_table
    if not _use_table:
        return _comb_multiply(scalar)
    if _base_table is None:
        table = []
        row_base = _BASE
        for _ in range(64):
            row = [row_base]
            for _ in range(14):
                row.append(_add(row[-1], row_base))
            table.append(row)
            row_base = _add(row[-1], row_base)  # 16 * row_base
        _base_table = table
    result = _IDENTITY
    i = 0
    while scalar:
        nibble = scalar & 15
        if nibble:
            result = _add(result, _base_table[i][nibble - 1])
        scalar >>= 4
        i += 1
    return result


def _encode_point(point: tuple) -> bytes:
    x, y, z, _ = point
    zinv = pow(z, P - 2, P)
    x = x * zinv % P
    y = y * zinv % P
    encoded = (y | ((x & 1) << 255)).to_bytes(32, "little")  # type: bytes
    return encoded


def _decode_point(raw: bytes) -> tuple:
    # RFC 8032 §5.1.3; rejects y >= p and the non-canonical x = 0, sign = 1.
    if len(raw) != 32:
        raise SignatureError("a point is 32 bytes")
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        raise SignatureError("non-canonical point encoding")
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        if sign:
            raise SignatureError("non-canonical point encoding")
        return (0, y, 1, 0)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P != 0:
        raise SignatureError("not a point on the curve")
    if (x & 1) != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _secret_expand(seed: bytes) -> tuple:
    global _expanded
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    if _expanded is not None and _expanded[0] == seed:
        return _expanded[1], _expanded[2]
    h = _sha512(seed)
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    _expanded = (bytes(seed), a, h[32:])
    return a, h[32:]


def _hash_int(first: bytes, second: bytes, message: bytes) -> int:
    # SHA-512(first || second || message) as a little-endian integer, without joining them.
    h = _sha512_new(first)
    h.update(second)  # type: ignore[attr-defined]
    h.update(message)  # type: ignore[attr-defined]
    return int.from_bytes(h.digest(), "little")  # type: ignore[attr-defined]


def _encoded_multiple_of_base(scalar: int) -> bytes:
    # With the firmware's limb multiplication installed, the key at boot is made by it too:
    # the comb in ints would otherwise be built (and its garbage made) for that one product.
    if _encoded_base_multiply is not None:
        encoded = _encoded_base_multiply(scalar)  # type: ignore[operator]
        result = encoded  # type: bytes
        return result
    return _encode_point(_base_multiply(scalar))


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte seed."""
    a, _ = _secret_expand(seed)
    return _encoded_multiple_of_base(a)


def sign(seed: bytes, message: bytes, public: bytes | None = None) -> bytes:
    """RFC 8032 §5.1.6: the 64-byte signature of ``message``."""
    a, prefix = _secret_expand(seed)
    if public is None:
        public = _encoded_multiple_of_base(a)
    r = _hash_int(prefix, b"", message) % L
    r_bytes = _encoded_multiple_of_base(r)
    k = _hash_int(r_bytes, public, message) % L
    s = (r + k * a) % L
    signature = r_bytes + s.to_bytes(32, "little")  # type: bytes
    return signature


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """RFC 8032 §5.1.7; returns None or raises SignatureError."""
    if len(signature) != 64:
        raise SignatureError("a signature is 64 bytes")
    a_point = _decode_point(public)
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        raise SignatureError("S is not reduced")
    r_bytes = signature[:32]
    k = _hash_int(r_bytes, public, message) % L
    if _verify_multiply is not None:
        encoded = _verify_multiply(a_point, s, k)  # type: ignore[operator]
    else:
        neg_a = (P - a_point[0], a_point[1], a_point[2], P - a_point[3])
        encoded = _encode_point(_add(_base_multiply(s), _multiply(k, neg_a)))
    if encoded != r_bytes:
        raise SignatureError("signature does not match")
