"""The board's signing in 12-bit limbs (firmware/dgc/limbs25519.py) gives the signatures of RFC 8032.

Its field arithmetic is held to Python ints here, its fixed-base
multiplication to crev.ed25519's comb, and its signatures to the RFC 8032
vectors and to cryptography, on CPython and on the MicroPython WebAssembly
port, where it must not allocate per field operation. Its verification
gives crev.ed25519's ints verdict on valid, tampered and malformed
signatures alike, and allocates a small fraction of what the ints do.
"""

import hashlib
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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
    ed25519.use_verify(None)


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


# Verification. Each case is (name, public, signature, message) in hex; its verdict is the ints verify's.

# A point of order 8 (the torsion of Curve25519): added to a key, it makes a mixed-order key.
TORSION_8 = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"


def _encode_int(n: int) -> bytes:
    return n.to_bytes(32, "little")


def _ints_verdict(public: bytes, signature: bytes, message: bytes) -> bool:
    assert ed25519._verify_multiply is None
    try:
        ed25519.verify(public, signature, message)
    except ed25519.SignatureError:
        return False
    return True


# What the cases are built to be, where that is known: True verifies, False does not.
INTENDED: dict[str, bool] = {}


def _verify_cases() -> list[tuple[str, str, str, str]]:
    cases = []

    def case(name: str, public: bytes, signature: bytes, message: bytes, intended: bool | None = False) -> None:
        cases.append((name, public.hex(), signature.hex(), message.hex()))
        if intended is not None:
            INTENDED[name] = intended

    for vector in load_vectors()["ed25519"]:
        public, signature = bytes.fromhex(vector["public"]), bytes.fromhex(vector["signature"])
        message = bytes.fromhex(vector["message"])
        name = vector["name"]
        case(name, public, signature, message, True)
        case(name + "-message", public, signature, message + b"x")
        case(name + "-r-bit", public, bytes([signature[0] ^ 1]) + signature[1:], message)
        case(name + "-s-bit", public, signature[:32] + bytes([signature[32] ^ 1]) + signature[33:], message)
        case(name + "-key-bit", bytes([public[0] ^ 2]) + public[1:], signature, message)
        s = int.from_bytes(signature[32:], "little")
        case(name + "-s-plus-l", public, signature[:32] + _encode_int(s + ed25519.L), message)
        case(name + "-short", public, signature[:63], message)
    first = load_vectors()["ed25519"][0]
    public, signature = bytes.fromhex(first["public"]), bytes.fromhex(first["signature"])
    message = bytes.fromhex(first["message"])
    case("s-is-l", public, signature[:32] + _encode_int(ed25519.L), message)
    case("s-all-ones", public, signature[:32] + b"\xff" * 32, message)
    case("short-key", public[:31], signature, message)
    # Undecodable or non-canonical keys: y >= p, x = 0 with the sign bit set, y off the curve.
    p = ed25519.P
    off_curve = next(y for y in range(2, 100) if _off_curve(y))
    for name, encoded in (
        ("key-y-is-p", _encode_int(p)),
        ("key-y-is-p-plus-1", _encode_int(p + 1)),
        ("key-y-all-ones", b"\xff" * 32),
        ("key-x0-sign", _encode_int(1 | 1 << 255)),
        ("key-minus-1-sign", _encode_int(p - 1 | 1 << 255)),
        ("key-off-curve", _encode_int(off_curve)),
    ):
        case(name, encoded, signature, message)
    # R not canonical (y = p) or off the curve: no point encodes to it.
    case("r-y-is-p", public, _encode_int(p) + signature[32:], message)
    case("r-off-curve", public, _encode_int(off_curve) + signature[32:], message)
    # Small-order keys: the identity (then [S]B == R is all the check asks), (0, -1) and an order-8 point.
    identity = _encode_int(1)
    for s in (0, 1, 12345):
        r_of_s = ed25519._encode_point(ed25519._base_multiply(s))
        case("identity-key-%d" % s, identity, r_of_s + _encode_int(s), b"any", True)
        case("order-2-key-%d" % s, _encode_int(p - 1), r_of_s + _encode_int(s), b"any", None)
    case("torsion-key", bytes.fromhex(TORSION_8), signature, message, None)
    # A mixed-order key a * B + T8: cofactorless, a signature made with a passes only when 8 divides k.
    a = 0x1234567 * 2**200 + 99
    mixed = ed25519._add(ed25519._base_multiply(a), ed25519._decode_point(bytes.fromhex(TORSION_8)))
    mixed_public = ed25519._encode_point(mixed)
    passed = 0
    for i in range(40):
        message = b"mixed %d" % i
        r = 1000003 * (i + 1)
        r_bytes = ed25519._encode_point(ed25519._base_multiply(r))
        k = ed25519._hash_int(r_bytes, mixed_public, message) % ed25519.L
        s = (r + k * a) % ed25519.L
        if k % 8 == 0:
            passed += 1
        if k % 8 == 0 or i < 4:
            case("mixed-key-%d" % i, mixed_public, r_bytes + _encode_int(s), message, k % 8 == 0)
    assert passed, "no message gave a k divisible by 8"
    # Signatures by cryptography over keys and messages no other case uses (from a fixed
    # seed, so a failure can be run again), each tampered once.
    for i in range(12):
        key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"limbs-verify-%d" % i).digest())
        public = key.public_key().public_bytes_raw()
        message = hashlib.sha512(b"message-%d" % i).digest()[: (7 * i) % 64]
        signature = key.sign(message)
        case("random-%d" % i, public, signature, message, True)
        flipped = bytearray(signature)
        flipped[(37 * i) % 64] ^= 1 << (i % 8)
        case("random-%d-flipped" % i, public, bytes(flipped), message)
    return cases


def _off_curve(y: int) -> bool:
    try:
        ed25519._decode_point(_encode_int(y))
    except ed25519.SignatureError:
        return True
    return False


VERIFY_CASES = _verify_cases()


def test_the_verify_cases_are_what_they_say() -> None:
    verdicts = {name: _ints_verdict(*(bytes.fromhex(h) for h in rest)) for name, *rest in VERIFY_CASES}
    assert {name: verdicts[name] for name in INTENDED} == INTENDED
    assert sum(INTENDED.values()) >= 20
    assert len(INTENDED) - sum(INTENDED.values()) >= 40


@pytest.mark.parametrize("case", VERIFY_CASES, ids=lambda c: c[0])
def test_limbs_verify_gives_the_ints_verdict(case: tuple[str, str, str, str]) -> None:
    public, signature, message = (bytes.fromhex(h) for h in case[1:])
    expected = _ints_verdict(public, signature, message)
    limbs25519.install()
    try:
        try:
            ed25519.verify(public, signature, message)
            verdict = True
        except ed25519.SignatureError:
            verdict = False
    finally:
        ed25519.use_base_table(True)
        ed25519.use_verify(None)
    assert verdict == expected


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=2**256 - 1), st.integers(min_value=0, max_value=2**256 - 1))
def test_the_verify_multiplication_gives_the_ints_point(s: int, k: int) -> None:
    a_point = ed25519._decode_point(ed25519._encode_point(ed25519._base_multiply(k ^ s | 1)))
    neg_a = (P - a_point[0], a_point[1], a_point[2], P - a_point[3])
    expected = ed25519._encode_point(ed25519._add(ed25519._base_multiply(s), ed25519._multiply(k, neg_a)))
    assert limbs25519.verify_multiply_encoded(a_point, s, k) == expected


# On the board: every case's verdict in ints and in limbs, and what one verify allocates either way.
VERIFY_SCRIPT = """
import gc
import json

from dgc import limbs25519

from crev import ed25519

with open("/test/cases.json") as f:
    CASES = json.load(f)


def verdict(public, signature, message):
    try:
        ed25519.verify(public, signature, message)
    except ed25519.SignatureError:
        return False
    return True


def verdicts():
    return [verdict(*(bytes.fromhex(h) for h in case[1:])) for case in CASES]


def allocated(function, *args):
    function(*args)  # a first call may allocate once (tables, MicroPython's own caches)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    function(*args)
    used = gc.mem_alloc() - before
    gc.enable()
    return used


public, signature, message = (bytes.fromhex(h) for h in CASES[0][1:])
ed25519.use_base_table(False)  # the ints as a board has them: the comb, no table
ints = verdicts()
ints_alloc = allocated(ed25519.verify, public, signature, message)
decode_alloc = allocated(ed25519._decode_point, public)
limbs25519.install()
limbs = verdicts()
limbs_alloc = allocated(ed25519.verify, public, signature, message)
print(json.dumps({
    "ints": ints, "limbs": limbs, "ints_alloc": ints_alloc, "limbs_alloc": limbs_alloc, "decode_alloc": decode_alloc,
}))
"""
VERIFY_BOUND = 16 * 1024  # one verify in limbs, with the GC off: decoding A, hashing, the scalars, the encoding


def test_on_micropython_limbs_verify_gives_the_ints_verdicts_and_allocates_little(tmp_path: Path) -> None:
    script = tmp_path / "verify_main.py"
    script.write_text(VERIFY_SCRIPT)
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(VERIFY_CASES))
    out = run_micropython(script, {"/test/cases.json": cases})
    result = json.loads(out.strip().splitlines()[-1])
    expected = [_ints_verdict(*(bytes.fromhex(h) for h in case[1:])) for case in VERIFY_CASES]
    assert result["ints"] == expected
    assert result["limbs"] == expected
    print(
        "one verify, GC off: ints %d bytes, limbs %d bytes (decoding A in ints: %d)"
        % (result["ints_alloc"], result["limbs_alloc"], result["decode_alloc"])
    )
    assert 0 < result["limbs_alloc"] <= VERIFY_BOUND, result
    assert 10 * result["limbs_alloc"] <= result["ints_alloc"], result
