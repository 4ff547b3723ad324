"""The pure Ed25519 gives the same signatures with and without its fixed-base table.

Devices short of RAM sign without the table (firmware/main.py); the shared
vectors run with it, so both paths are checked against RFC 8032 here.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from support import load_vectors

from crev import ed25519
from crev.keys import SigningKey


@pytest.fixture
def without_table() -> Iterator[None]:
    ed25519.use_base_table(False)
    yield
    ed25519.use_base_table(True)


@pytest.mark.parametrize("case", load_vectors()["ed25519"], ids=lambda c: c["name"])
def test_rfc8032_vectors_without_the_table(case: dict[str, Any], without_table: None) -> None:
    key = SigningKey(bytes.fromhex(case["seed"]), "pure")
    assert key.public_key.hex() == case["public"]
    assert key.sign(bytes.fromhex(case["message"])).hex() == case["signature"]
    assert ed25519._base_table is None, "no table was built"


def test_both_modes_agree_with_cryptography(without_table: None) -> None:
    for i in range(5):
        seed = bytes([i]) * 32
        message = b"reading %d" % i
        pure = SigningKey(seed, "pure").sign(message)
        assert pure == SigningKey(seed, "cryptography").sign(message)
