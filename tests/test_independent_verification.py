"""Readings made by crev verify with code that shares nothing with crev.

cbor2 decodes the COSE_Sign1 and ``cryptography`` checks Ed25519 over a
Sig_structure built here by hand, as SPEC §3 describes it.
"""

import hashlib
from typing import Any

import cbor2
import pytest
import runner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from support import load_vectors

from crev.keys import SigningKey

DOC = load_vectors()
SEED = bytes.fromhex(DOC["device"]["seed"])


@pytest.mark.parametrize("case", DOC["readings"], ids=[c["name"] for c in DOC["readings"]])
def test_reading_verifies_independently(case: dict[str, Any]) -> None:
    cose = bytes.fromhex(runner.run_reading(case, DOC["device"], SigningKey(SEED))["cose"])

    message = cbor2.loads(cose)
    assert isinstance(message, cbor2.CBORTag) and message.tag == 18
    protected, unprotected, payload, signature = message.value
    public = Ed25519PrivateKey.from_private_bytes(SEED).public_key()
    raw_public = public.public_bytes_raw()
    assert cbor2.loads(protected) == {1: -8, 4: hashlib.sha256(raw_public).digest()[:8]}
    assert unprotected == {}
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])
    Ed25519PublicKey.from_public_bytes(raw_public).verify(signature, sig_structure)

    fields = cbor2.loads(payload)
    assert fields[1] == DOC["device"]["dev"]
    assert fields[10] == case["expect"]["flags"]
    assert fields.get(8) == case["expect"]["e"]
    # cbor2's canonical encoder agrees with our deterministic bytes.
    assert cbor2.dumps(fields, canonical=True) == payload
