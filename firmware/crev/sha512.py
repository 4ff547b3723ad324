"""Pure-Python SHA-512 (FIPS 180-4) for interpreters whose hashlib lacks it.

MicroPython's hashlib usually offers only sha256 (the WebAssembly port and
most microcontroller ports), but Ed25519 needs SHA-512. ``digest()`` and
``new()`` use hashlib.sha512 when it exists and this implementation otherwise.

Each 64-bit word is held as four 16-bit limbs, least significant first, and
every intermediate value stays below 2**30. On a 32-bit MicroPython (ESP32,
RP2040) such a value is a small int, kept inside the object pointer, while a
64-bit word as one int is a bigint on the heap and every operation on it a
new allocation: about 160 kB of garbage per 128-byte block, against none
here. The message schedule lives in lists made once, and the rounds work on
local variables, so hashing allocates only its input buffer and its output.
A 4-tuple on the left of an assignment would be built on the heap by
MicroPython, hence the one assignment per limb; and the hot code writes the
mask as the literal 0xFFFF, because reading a global costs a dictionary
lookup there every time (it made the rounds four times slower).
"""

from array import array

_M = 0xFFFF

# First 64 bits of the fractional parts of the cube roots of the first 80 primes.
_K64 = (
    0x428A2F98D728AE22,
    0x7137449123EF65CD,
    0xB5C0FBCFEC4D3B2F,
    0xE9B5DBA58189DBBC,
    0x3956C25BF348B538,
    0x59F111F1B605D019,
    0x923F82A4AF194F9B,
    0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242,
    0x12835B0145706FBE,
    0x243185BE4EE4B28C,
    0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F,
    0x80DEB1FE3B1696B1,
    0x9BDC06A725C71235,
    0xC19BF174CF692694,
    0xE49B69C19EF14AD2,
    0xEFBE4786384F25E3,
    0x0FC19DC68B8CD5B5,
    0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275,
    0x4A7484AA6EA6E483,
    0x5CB0A9DCBD41FBD4,
    0x76F988DA831153B5,
    0x983E5152EE66DFAB,
    0xA831C66D2DB43210,
    0xB00327C898FB213F,
    0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2,
    0xD5A79147930AA725,
    0x06CA6351E003826F,
    0x142929670A0E6E70,
    0x27B70A8546D22FFC,
    0x2E1B21385C26C926,
    0x4D2C6DFC5AC42AED,
    0x53380D139D95B3DF,
    0x650A73548BAF63DE,
    0x766A0ABB3C77B2A8,
    0x81C2C92E47EDAEE6,
    0x92722C851482353B,
    0xA2BFE8A14CF10364,
    0xA81A664BBC423001,
    0xC24B8B70D0F89791,
    0xC76C51A30654BE30,
    0xD192E819D6EF5218,
    0xD69906245565A910,
    0xF40E35855771202A,
    0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8,
    0x1E376C085141AB53,
    0x2748774CDF8EEB99,
    0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63,
    0x4ED8AA4AE3418ACB,
    0x5B9CCA4F7763E373,
    0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC,
    0x78A5636F43172F60,
    0x84C87814A1F0AB72,
    0x8CC702081A6439EC,
    0x90BEFFFA23631E28,
    0xA4506CEBDE82BDE9,
    0xBEF9A3F7B2C67915,
    0xC67178F2E372532B,
    0xCA273ECEEA26619C,
    0xD186B8C721C0C207,
    0xEADA7DD6CDE0EB1E,
    0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA,
    0x0A637DC5A2C898A6,
    0x113F9804BEF90DAE,
    0x1B710B35131C471B,
    0x28DB77F523047D84,
    0x32CAAB7B40C72493,
    0x3C9EBE0A15C9BEBC,
    0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6,
    0x597F299CFC657E2A,
    0x5FCB6FAB3AD6FAEC,
    0x6C44198C4A475817,
)

# First 64 bits of the fractional parts of the square roots of the first 8 primes.
_H64 = (
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
)  # fmt: skip


def _limbs(words: tuple) -> tuple:
    """The four 16-bit limb sequences (least significant first) of 64-bit ``words``."""
    return tuple(tuple((w >> (16 * k)) & _M for w in words) for k in range(4))


# Arrays of 16-bit items: half the heap of tuples or lists of small ints.
_K0, _K1, _K2, _K3 = (array("H", limbs) for limbs in _limbs(_K64))
_H0 = tuple(w >> (16 * k) & _M for w in _H64 for k in range(4))  # word i at 4 * i
del _K64, _H64

# The message schedule, one array per limb; _compress is not reentrant, and
# nothing here runs two hashes at once.
_W0 = array("H", bytes(160))
_W1 = array("H", bytes(160))
_W2 = array("H", bytes(160))
_W3 = array("H", bytes(160))


def _compress(state: list, data: object, at: int) -> None:
    """Fold the 128-byte block of ``data`` at offset ``at`` into ``state`` (32 limbs)."""
    w0 = _W0
    w1 = _W1
    w2 = _W2
    w3 = _W3
    for t in range(16):
        i = at + 8 * t
        w3[t] = data[i] << 8 | data[i + 1]  # type: ignore[index]
        w2[t] = data[i + 2] << 8 | data[i + 3]  # type: ignore[index]
        w1[t] = data[i + 4] << 8 | data[i + 5]  # type: ignore[index]
        w0[t] = data[i + 6] << 8 | data[i + 7]  # type: ignore[index]
    for t in range(16, 80):
        # sigma0 of W[t-15]: rotr 1 ^ rotr 8 ^ shr 7
        x0 = w0[t - 15]
        x1 = w1[t - 15]
        x2 = w2[t - 15]
        x3 = w3[t - 15]
        s0 = (x0 >> 1 | (x1 & 1) << 15) ^ (x0 >> 8 | (x1 & 0xFF) << 8) ^ (x0 >> 7 | (x1 & 0x7F) << 9)
        s1 = (x1 >> 1 | (x2 & 1) << 15) ^ (x1 >> 8 | (x2 & 0xFF) << 8) ^ (x1 >> 7 | (x2 & 0x7F) << 9)
        s2 = (x2 >> 1 | (x3 & 1) << 15) ^ (x2 >> 8 | (x3 & 0xFF) << 8) ^ (x2 >> 7 | (x3 & 0x7F) << 9)
        s3 = (x3 >> 1 | (x0 & 1) << 15) ^ (x3 >> 8 | (x0 & 0xFF) << 8) ^ (x3 >> 7)
        # sigma1 of W[t-2]: rotr 19 ^ rotr 61 ^ shr 6
        x0 = w0[t - 2]
        x1 = w1[t - 2]
        x2 = w2[t - 2]
        x3 = w3[t - 2]
        c = w0[t - 16] + w0[t - 7] + s0
        c += (x1 >> 3 | (x2 & 7) << 13) ^ (x3 >> 13 | (x0 & 0x1FFF) << 3) ^ (x0 >> 6 | (x1 & 0x3F) << 10)
        w0[t] = c & 0xFFFF
        c = (c >> 16) + w1[t - 16] + w1[t - 7] + s1
        c += (x2 >> 3 | (x3 & 7) << 13) ^ (x0 >> 13 | (x1 & 0x1FFF) << 3) ^ (x1 >> 6 | (x2 & 0x3F) << 10)
        w1[t] = c & 0xFFFF
        c = (c >> 16) + w2[t - 16] + w2[t - 7] + s2
        c += (x3 >> 3 | (x0 & 7) << 13) ^ (x1 >> 13 | (x2 & 0x1FFF) << 3) ^ (x2 >> 6 | (x3 & 0x3F) << 10)
        w2[t] = c & 0xFFFF
        c = (c >> 16) + w3[t - 16] + w3[t - 7] + s3
        c += (x0 >> 3 | (x1 & 7) << 13) ^ (x2 >> 13 | (x3 & 0x1FFF) << 3) ^ (x3 >> 6)
        w3[t] = c & 0xFFFF
    a0 = state[0]
    a1 = state[1]
    a2 = state[2]
    a3 = state[3]
    b0 = state[4]
    b1 = state[5]
    b2 = state[6]
    b3 = state[7]
    c0 = state[8]
    c1 = state[9]
    c2 = state[10]
    c3 = state[11]
    d0 = state[12]
    d1 = state[13]
    d2 = state[14]
    d3 = state[15]
    e0 = state[16]
    e1 = state[17]
    e2 = state[18]
    e3 = state[19]
    f0 = state[20]
    f1 = state[21]
    f2 = state[22]
    f3 = state[23]
    g0 = state[24]
    g1 = state[25]
    g2 = state[26]
    g3 = state[27]
    h0 = state[28]
    h1 = state[29]
    h2 = state[30]
    h3 = state[31]
    k0 = _K0
    k1 = _K1
    k2 = _K2
    k3 = _K3
    for t in range(80):
        # T1 = h + Sigma1(e) + Ch(e, f, g) + K[t] + W[t], each limb unreduced (below 2**19).
        # Sigma1(e) = rotr 14 ^ rotr 18 ^ rotr 41; Ch = g ^ (e & (f ^ g)).
        t0 = h0 + k0[t] + w0[t] + (g0 ^ (e0 & (f0 ^ g0)))
        t0 += (e0 >> 14 | (e1 & 0x3FFF) << 2) ^ (e1 >> 2 | (e2 & 3) << 14) ^ (e2 >> 9 | (e3 & 0x1FF) << 7)
        t1 = h1 + k1[t] + w1[t] + (g1 ^ (e1 & (f1 ^ g1)))
        t1 += (e1 >> 14 | (e2 & 0x3FFF) << 2) ^ (e2 >> 2 | (e3 & 3) << 14) ^ (e3 >> 9 | (e0 & 0x1FF) << 7)
        t2 = h2 + k2[t] + w2[t] + (g2 ^ (e2 & (f2 ^ g2)))
        t2 += (e2 >> 14 | (e3 & 0x3FFF) << 2) ^ (e3 >> 2 | (e0 & 3) << 14) ^ (e0 >> 9 | (e1 & 0x1FF) << 7)
        t3 = h3 + k3[t] + w3[t] + (g3 ^ (e3 & (f3 ^ g3)))
        t3 += (e3 >> 14 | (e0 & 0x3FFF) << 2) ^ (e0 >> 2 | (e1 & 3) << 14) ^ (e1 >> 9 | (e2 & 0x1FF) << 7)
        h0 = g0
        h1 = g1
        h2 = g2
        h3 = g3
        g0 = f0
        g1 = f1
        g2 = f2
        g3 = f3
        f0 = e0
        f1 = e1
        f2 = e2
        f3 = e3
        # e = d + T1
        c = d0 + t0
        e0 = c & 0xFFFF
        c = (c >> 16) + d1 + t1
        e1 = c & 0xFFFF
        c = (c >> 16) + d2 + t2
        e2 = c & 0xFFFF
        e3 = ((c >> 16) + d3 + t3) & 0xFFFF
        d0 = c0
        d1 = c1
        d2 = c2
        d3 = c3
        c0 = b0
        c1 = b1
        c2 = b2
        c3 = b3
        b0 = a0
        b1 = a1
        b2 = a2
        b3 = a3
        # a = T1 + T2, T2 = Sigma0(a) + Maj(a, b, c), with the old a, b, c now in b, c, d.
        # Sigma0(a) = rotr 28 ^ rotr 34 ^ rotr 39; Maj = (a & b) | (c & (a | b)).
        c = t0 + ((b0 & c0) | (d0 & (b0 | c0)))
        c += (b1 >> 12 | (b2 & 0xFFF) << 4) ^ (b2 >> 2 | (b3 & 3) << 14) ^ (b2 >> 7 | (b3 & 0x7F) << 9)
        a0 = c & 0xFFFF
        c = (c >> 16) + t1 + ((b1 & c1) | (d1 & (b1 | c1)))
        c += (b2 >> 12 | (b3 & 0xFFF) << 4) ^ (b3 >> 2 | (b0 & 3) << 14) ^ (b3 >> 7 | (b0 & 0x7F) << 9)
        a1 = c & 0xFFFF
        c = (c >> 16) + t2 + ((b2 & c2) | (d2 & (b2 | c2)))
        c += (b3 >> 12 | (b0 & 0xFFF) << 4) ^ (b0 >> 2 | (b1 & 3) << 14) ^ (b0 >> 7 | (b1 & 0x7F) << 9)
        a2 = c & 0xFFFF
        c = (c >> 16) + t3 + ((b3 & c3) | (d3 & (b3 | c3)))
        c += (b0 >> 12 | (b1 & 0xFFF) << 4) ^ (b1 >> 2 | (b2 & 3) << 14) ^ (b1 >> 7 | (b2 & 0x7F) << 9)
        a3 = c & 0xFFFF
    _add_word(state, 0, a0, a1, a2, a3)
    _add_word(state, 4, b0, b1, b2, b3)
    _add_word(state, 8, c0, c1, c2, c3)
    _add_word(state, 12, d0, d1, d2, d3)
    _add_word(state, 16, e0, e1, e2, e3)
    _add_word(state, 20, f0, f1, f2, f3)
    _add_word(state, 24, g0, g1, g2, g3)
    _add_word(state, 28, h0, h1, h2, h3)


def _add_word(state: list, i: int, x0: int, x1: int, x2: int, x3: int) -> None:
    c = state[i] + x0
    state[i] = c & 0xFFFF
    c = (c >> 16) + state[i + 1] + x1
    state[i + 1] = c & 0xFFFF
    c = (c >> 16) + state[i + 2] + x2
    state[i + 2] = c & 0xFFFF
    state[i + 3] = ((c >> 16) + state[i + 3] + x3) & 0xFFFF


class PureSHA512:
    """hashlib-style SHA-512: ``update()`` then ``digest()``."""

    digest_size = 64
    block_size = 128

    def __init__(self, data: bytes = b"") -> None:
        self._state = list(_H0)
        self._block = bytearray(128)
        self._used = 0  # bytes of self._block waiting for a whole block
        self._length = 0
        if data:
            self.update(data)

    def update(self, data: bytes) -> None:
        n = len(data)
        self._length += n
        at = 0
        used = self._used
        if used:
            take = min(128 - used, n)
            self._block[used : used + take] = memoryview(data)[:take]
            used += take
            at = take
            if used < 128:
                self._used = used
                return
            _compress(self._state, self._block, 0)
        while n - at >= 128:
            _compress(self._state, data, at)  # whole blocks straight from the input
            at += 128
        self._used = n - at
        if at < n:
            self._block[: n - at] = memoryview(data)[at:]

    def digest(self) -> bytes:
        state = list(self._state)
        block = bytearray(self._block)
        used = self._used
        block[used] = 0x80
        for i in range(used + 1, 128):
            block[i] = 0
        if used >= 112:  # no room for the length: one more block
            _compress(state, block, 0)
            for i in range(128):
                block[i] = 0
        bits = self._length * 8
        for i in range(8):  # the low 64 of the 128-bit length; the rest is zero
            block[127 - i] = (bits >> (8 * i)) & 0xFF
        _compress(state, block, 0)
        out = bytearray(64)
        for i in range(32):
            limb = state[i]
            at = 8 * (i >> 2) + 6 - 2 * (i & 3)
            out[at] = limb >> 8
            out[at + 1] = limb & 0xFF
        return bytes(out)


try:
    # Most MicroPython ports lack it, hence the ignore for the firmware type check.
    from hashlib import sha512 as _native_sha512  # type: ignore[attr-defined,unused-ignore]

    _HAVE_NATIVE = True
except ImportError:  # MicroPython without SHA-512
    _HAVE_NATIVE = False


def new(data: bytes = b"", pure: bool = False) -> object:
    """A SHA-512 hasher with ``update()`` and ``digest()``; ``pure=True`` forces the pure one."""
    if _HAVE_NATIVE and not pure:
        return _native_sha512(data)
    return PureSHA512(data)


def digest(data: bytes, pure: bool = False) -> bytes:
    """SHA-512 of ``data``; ``pure=True`` forces the pure implementation."""
    if _HAVE_NATIVE and not pure:
        return _native_sha512(data).digest()
    return PureSHA512(data).digest()
