"""The allocation-lean paths of the portable core give exactly what the plain ones give.

On MicroPython the firmware hashes with the pure SHA-512 (16-bit limbs) and
signs with the small comb; CPython normally uses hashlib and cryptography,
so these checks hold them to those, and the golden vectors
(test_core_vectors, test_ed25519_modes) hold the signatures byte for byte.
"""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crev import ed25519, sha512


@pytest.mark.parametrize("length", [0, 1, 55, 111, 112, 113, 127, 128, 129, 239, 240, 256, 1000])
def test_the_pure_sha512_matches_hashlib_at_every_padding_edge(length: int) -> None:
    data = bytes((7 * i + 3) & 0xFF for i in range(length))
    assert sha512.digest(data, pure=True) == hashlib.sha512(data).digest()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_the_pure_sha512_in_pieces_matches_hashlib(pieces: list[bytes]) -> None:
    hasher = sha512.PureSHA512()
    for piece in pieces:
        hasher.update(piece)
    whole = b"".join(pieces)
    assert hasher.digest() == hashlib.sha512(whole).digest()
    hasher.update(b"more")  # digest() leaves the hasher usable, as hashlib's does
    assert hasher.digest() == hashlib.sha512(whole + b"more").digest()


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_the_comb_gives_the_point_double_and_add_gives(scalar: int) -> None:
    comb = ed25519._encode_point(ed25519._comb_multiply(scalar))
    assert comb == ed25519._encode_point(ed25519._multiply(scalar, ed25519._BASE))


def test_the_expanded_secret_is_the_seed_s_own() -> None:
    first, second = bytes([1]) * 32, bytes([2]) * 32
    a1 = ed25519._secret_expand(first)
    a2 = ed25519._secret_expand(second)
    assert a1 != a2 and ed25519._secret_expand(first) == a1
    h = hashlib.sha512(second).digest()
    assert a2[1] == h[32:], "the prefix is the second half of SHA-512(seed)"
