"""The board's signing in 12-bit limbs (firmware/dgc/limbs25519.py) gives the signatures of RFC 8032.

Its field arithmetic is held to Python ints here, its fixed-base
multiplication to crev.ed25519's comb, and its signatures to the RFC 8032
vectors and to cryptography, on CPython and on the MicroPython WebAssembly
port, where it must not allocate per field operation.
"""

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT, load_vectors, run_micropython

from crev import ed25519
from crev.keys import SigningKey

sys.path.insert(0, str(ROOT / "firmware"))
import gen_limbs25519

# Imported by name: the board's module is typed for the MicroPython stubs (make typecheck-firmware),
# not for this strict check.
limbs25519 = importlib.import_module("dgc.limbs25519")

P = ed25519.P
# Limb values the arithmetic may be handed: its outputs stay below 4103 (see its docstring).
ELEMENTS = st.lists(st.integers(min_value=0, max_value=4102), min_size=22, max_size=22)
SIGN_BOUND = 8 * 1024  # one signature in limbs, with the GC off: hashing, the scalars, the encoding


@pytest.fixture
def limbs() -> Iterator[None]:
    limbs25519.install()
    yield
    ed25519.use_base_table(True)


def test_the_generated_arithmetic_is_what_the_generator_writes() -> None:
    text = gen_limbs25519.TARGET.read_text()
    assert gen_limbs25519.updated(text) == text, "run python firmware/gen_limbs25519.py"


@settings(max_examples=300, deadline=None)
@given(ELEMENTS, ELEMENTS)
def test_the_field_operations_match_python_ints(a: list[int], b: list[int]) -> None:
    x, y = limbs25519.value(a), limbs25519.value(b)
    for name, expected in (("_mul", x * y), ("_square", x * x), ("_add", x + y), ("_sub", x - y)):
        out = [0] * 22
        operands = (a,) if name == "_square" else (a, b)
        getattr(limbs25519, name)(out, *operands)
        assert limbs25519.value(out) % P == expected % P, name
        assert max(out) <= 4102, "an output limb outgrew what the next multiplication can take"


def test_the_largest_limbs_do_not_overflow_a_column() -> None:
    # 22 products of 4102 * 4102 in one column: below 2**30, a small int on a 32-bit MicroPython.
    assert 22 * 4102 * 4102 < 2**30
    a = [4102] * 22
    out = [0] * 22
    limbs25519._mul(out, a, a)
    assert limbs25519.value(out) % P == limbs25519.value(a) ** 2 % P


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**256 - 1))
def test_the_multiplication_gives_the_comb_s_point(scalar: int) -> None:
    assert limbs25519.base_multiply_encoded(scalar) == ed25519._encode_point(ed25519._comb_multiply(scalar))


@pytest.mark.parametrize("case", load_vectors()["ed25519"], ids=lambda c: c["name"])
def test_rfc8032_vectors_in_limbs(case: dict[str, str], limbs: None) -> None:
    key = SigningKey(bytes.fromhex(case["seed"]), "pure")
    assert key.public_key.hex() == case["public"]
    assert key.sign(bytes.fromhex(case["message"])).hex() == case["signature"]


def test_limbs_agree_with_cryptography(limbs: None) -> None:
    for i in range(5):
        seed = bytes([i + 40]) * 32
        message = b"reading %d" % i
        assert SigningKey(seed, "pure").sign(message) == SigningKey(seed, "cryptography").sign(message)


def test_on_micropython_the_vectors_pass_and_field_operations_allocate_nothing(tmp_path: Path) -> None:
    cases = load_vectors()["ed25519"]
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps(cases))
    out = run_micropython(ROOT / "tests" / "micropython" / "limbs_main.py", {"/test/vectors.json": vectors})
    result = json.loads(out.strip().splitlines()[-1])
    assert result["signatures"] == [c["signature"] for c in cases]
    assert result["field_alloc"] == 0, "a field operation allocated %d bytes" % result["field_alloc"]
    assert result["sign_alloc"] <= SIGN_BOUND, "one signature allocated %d bytes" % result["sign_alloc"]
