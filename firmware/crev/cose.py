"""COSE_Sign1 (RFC 9052 §4.2) exactly as SPEC §3 profiles it.

    18([protected: bstr .cbor {1: -8, 4: kid}, unprotected: {}, payload: bstr, signature: bstr])

The signature covers ``["Signature1", protected, h'', payload]``. Verifiers
check the bytes exactly as received: nothing here re-encodes a message.
"""

from crev import cbor
from crev.errors import CborError, MisuseError, ReadingError
from crev.keys import SigningKey, verify_signature

COSE_SIGN1_TAG = 18
HEADER_ALG = 1
HEADER_KID = 4
ALG_EDDSA = -8
ALG_ED25519 = -19  # RFC 9864 fully specified algorithm; accepted, never written
ACCEPTED_ALGS = (ALG_EDDSA, ALG_ED25519)

MALFORMED = "MALFORMED"
BAD_ALG = "BAD_ALG"
BAD_SIGNATURE = "BAD_SIGNATURE"


_SIG_STRUCTURE_START = cbor.encode_head(4, 4) + cbor.dumps("Signature1")


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4 Sig_structure for COSE_Sign1 with empty external_aad.

    The bytes of ``cbor.dumps(["Signature1", protected, b"", payload])``,
    put together directly: verifiers build one per reading.
    """
    return b"".join(
        (
            _SIG_STRUCTURE_START,
            cbor.encode_head(2, len(protected)),
            protected,
            b"\x40",
            cbor.encode_head(2, len(payload)),
            payload,
        )
    )


# Protected headers already parsed: a device signs every reading with the same one.
_HEADERS = {}  # type: dict[bytes, tuple[int, bytes]]
_MAX_HEADERS = 256
_ENVELOPE_START = b"\xd2\x84"  # tag 18, an array of 4


def _byte_string(raw: bytes, at: int) -> tuple:
    """``(value, next offset)`` of the shortest-form byte string at ``at``; raises CborError or IndexError."""
    major, length, start = cbor.decode_head(raw, at)
    if major != 2 or start + length > len(raw):
        raise IndexError(at)
    return raw[start : start + length], start + length


def _split_envelope(raw: bytes) -> "tuple | None":
    """The four parts of a COSE_Sign1 in the one byte form ``sign1`` writes, or None to parse it in full.

    Anything accepted here is deterministic CBOR decoding to the same value
    as the full parse would give: tag 18 and the array of 4 in their one-byte
    heads, shortest-form byte string heads, and an empty unprotected map.
    """
    if raw[:2] != _ENVELOPE_START:
        return None
    try:
        protected, at = _byte_string(raw, 2)
        if raw[at : at + 1] != b"\xa0":
            return None
        payload, at = _byte_string(raw, at + 1)
        signature, at = _byte_string(raw, at)
    except (CborError, IndexError):
        return None
    if at != len(raw):
        return None
    return protected, payload, signature


def protected_header(kid: bytes) -> bytes:
    return cbor.dumps({HEADER_ALG: ALG_EDDSA, HEADER_KID: kid})


def sign1(payload: bytes, key: SigningKey) -> bytes:
    """Wrap ``payload`` in a COSE_Sign1 message signed by ``key``."""
    if not isinstance(payload, bytes):
        raise MisuseError("the payload must be bytes")
    protected = protected_header(key.kid)
    signature = key.sign(sig_structure(protected, payload))
    return cbor.dumps(cbor.Tag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


class Sign1:
    """A parsed COSE_Sign1 envelope. Parsing checks SPEC §5 steps (1) and (2)."""

    def __init__(self, raw: bytes, protected: bytes, alg: int, kid: bytes, payload: bytes, signature: bytes) -> None:
        self.raw = raw
        self.protected = protected
        self.alg = alg
        self.kid = kid
        self.payload = payload
        self.signature = signature

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Sign1":
        # (1) MALFORMED: the envelope must be a deterministic COSE_Sign1, so
        # that a reading has exactly one byte form (re-encoding the unsigned
        # envelope would otherwise yield a second, equally valid message).
        if type(raw) is bytes:
            split = _split_envelope(raw)
            if split is not None and split[0] in _HEADERS:
                known = _HEADERS[split[0]]
                return cls(raw, split[0], known[0], known[1], split[1], split[2])
        try:
            message = cbor.loads(raw)
        except CborError as err:
            raise ReadingError(MALFORMED, "not deterministic CBOR: " + str(err))
        if not isinstance(message, cbor.Tag) or message.tag != COSE_SIGN1_TAG:
            raise ReadingError(MALFORMED, "not a COSE_Sign1 (CBOR tag 18)")
        parts = message.value
        if not isinstance(parts, list) or len(parts) != 4:
            raise ReadingError(MALFORMED, "COSE_Sign1 must be an array of 4")
        protected, unprotected, payload, signature = parts
        if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(signature, bytes):
            raise ReadingError(MALFORMED, "protected, payload and signature must be byte strings")
        if unprotected != {}:
            raise ReadingError(MALFORMED, "the unprotected header must be empty")
        try:
            header = cbor.loads(protected)
        except CborError as err:
            raise ReadingError(MALFORMED, "protected header: " + str(err))
        if not isinstance(header, dict) or HEADER_ALG not in header:
            raise ReadingError(MALFORMED, "protected header must be a map with an algorithm")
        # (2) BAD_ALG
        alg = header[HEADER_ALG]
        if alg not in ACCEPTED_ALGS:
            raise ReadingError(BAD_ALG, "algorithm %r is not EdDSA (-8) or Ed25519 (-19)" % (alg,))
        kid = header.get(HEADER_KID)
        if not isinstance(kid, bytes) or not kid:
            raise ReadingError(MALFORMED, "protected header has no kid")
        if len(header) != 2:
            raise ReadingError(MALFORMED, "protected header may hold only alg and kid")
        if len(_HEADERS) < _MAX_HEADERS:
            _HEADERS[protected] = (alg, kid)
        return cls(bytes(raw), protected, alg, kid, payload, signature)

    def verify(self, public_key: bytes, backend: str | None = None) -> None:
        """(4) BAD_SIGNATURE unless the signature verifies under ``public_key``."""
        if not verify_signature(public_key, self.signature, sig_structure(self.protected, self.payload), backend):
            raise ReadingError(BAD_SIGNATURE, "signature does not verify for kid " + self.kid.hex())
