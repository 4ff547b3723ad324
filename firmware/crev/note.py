"""C2SP signed notes, checkpoints, cosignatures and verifier keys (SPEC §11).

The formats, by the letter of their specs:

- c2sp.org/signed-note: a text ending in a newline, a blank line, then one
  or more lines ``— <key name> base64(key ID || signature)``. A key ID is
  SHA-256(key name || 0x0A || signature type || public key)[:4].
- c2sp.org/tlog-checkpoint: a note whose text is the origin, the tree size
  and the base64 root hash, one per line, then optional extension lines.
- c2sp.org/tlog-cosignature: ``cosignature/v1``, signature type 0x04. The
  signature is a big-endian u64 timestamp and an Ed25519 signature over
  ``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint's text.
- c2sp.org/tlog-witness: the body of ``POST /add-checkpoint``.

Verifier keys ("vkeys") are ``<name>+<hex key ID>+base64(type || key)``. Two
types are verified here: 0x01, Ed25519 note signatures (the ledger signs its
block checkpoints so, see crev.ledger_format), and 0x04, cosignature/v1
(witnesses).

Base64 and UTF-8 are checked here, strictly, rather than with binascii and
bytes.decode: MicroPython's binascii skips characters outside the alphabet
and its decode accepts surrogates and overlong forms, and a note must parse
the same way on every interpreter that checks it.

Errors::

    InvalidInput
     +-- NoteError   the bytes came from outside; code:
                     MALFORMED_NOTE, MALFORMED_CHECKPOINT, MALFORMED_REQUEST,
                     MALFORMED_VKEY  not the format its spec defines
                     UNKNOWN_KEY_TYPE  a vkey of a signature type not verified here
                     BAD_SIGNATURE   a line names a known key and does not verify:
                                     the whole note is rejected (signed-note)
                     UNVERIFIED      no line names a known key
    MisuseError      two verifier keys with one name and key ID, a timestamp
                     or size out of range, a name that cannot sign
"""

import hashlib

from crev.errors import InvalidInput, MisuseError
from crev.keys import verify_signature

TYPE_CHECKING = False
if TYPE_CHECKING:
    from crev.keys import SigningKey

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
KEY_TYPES = (SIG_ED25519, SIG_COSIGNATURE_V1)

# signed-note: verifiers "MUST accept at least up to 16 signatures" and should
# cap them; Go's sumdb/note rejects a note with more than 100, and so do we.
MAX_SIGNATURES = 100
# tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
MAX_PROOF_LINES = 63
# tlog-cosignature: the timestamp "MUST NOT exceed 2^63 - 1".
MAX_TIMESTAMP = (1 << 63) - 1
MAX_TREE_SIZE = (1 << 64) - 1

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
COSIGNATURE_V1_HEADER = "cosignature/v1\n"
# RFC 6962 §2.1: the root of the empty tree is the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_ED25519_SIGNATURE = 64
_TIMESTAMPED_SIGNATURE = 8 + _ED25519_SIGNATURE

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}

# Unicode's White_Space property (what Go's unicode.IsSpace tests): key
# names may contain none of it. Listed, because MicroPython's str.isspace
# knows only ASCII.
_WHITE_SPACE = (
    0x09,
    0x0A,
    0x0B,
    0x0C,
    0x0D,
    0x20,
    0x85,
    0xA0,
    0x1680,
    0x2000,
    0x2001,
    0x2002,
    0x2003,
    0x2004,
    0x2005,
    0x2006,
    0x2007,
    0x2008,
    0x2009,
    0x200A,
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
)


class NoteError(InvalidInput):
    """A note, checkpoint, vkey or witness request that cannot be accepted; ``code`` says why."""


# ------------------------------------------------------------------ text codecs


def encode_base64(data: bytes) -> str:
    """RFC 4648 §4 base64, padded, on one line."""
    out = []
    n = len(data)
    i = 0
    while i + 3 <= n:
        v = data[i] << 16 | data[i + 1] << 8 | data[i + 2]
        out.append(_B64[v >> 18] + _B64[v >> 12 & 63] + _B64[v >> 6 & 63] + _B64[v & 63])
        i += 3
    if n - i == 1:
        v = data[i] << 16
        out.append(_B64[v >> 18] + _B64[v >> 12 & 63] + "==")
    elif n - i == 2:
        v = data[i] << 16 | data[i + 1] << 8
        out.append(_B64[v >> 18] + _B64[v >> 12 & 63] + _B64[v >> 6 & 63] + "=")
    return "".join(out)


def decode_base64(text: str) -> "bytes | None":
    """Strict RFC 4648 §4 base64: the alphabet, padded to a multiple of 4; None otherwise.

    Like Go's encoding/base64 StdEncoding, the unused low bits of the last
    character are not required to be zero.
    """
    n = len(text)
    if n % 4:
        return None
    pad = 0
    if n and text[n - 1] == "=":
        pad = 2 if text[n - 2] == "=" else 1
    out = bytearray()
    for start in range(0, n, 4):
        v = 0
        for j in range(start, start + 4):
            if j >= n - pad:
                v <<= 6
                continue
            digit = _B64_VALUE.get(text[j])
            if digit is None:
                return None
            v = v << 6 | digit
        out.append(v >> 16)
        if start + 4 < n or pad < 2:
            out.append(v >> 8 & 255)
        if start + 4 < n or pad < 1:
            out.append(v & 255)
    return bytes(out)


def note_text(data: "bytes | str") -> "str | None":
    """``data`` as text if it is valid UTF-8 with no control character but newline; else None.

    signed-note: notes "MUST be valid UTF-8 and MUST NOT contain any ASCII
    control characters (those below U+0020) other than newline". UTF-8 is
    RFC 3629's: no overlong forms, no surrogates, nothing above U+10FFFF.
    """
    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeError:  # CPython: a lone surrogate
            return None
    else:
        raw = bytes(data)
    n = len(raw)
    i = 0
    while i < n:
        b = raw[i]
        if b < 0x80:
            if b < 0x20 and b != 0x0A:
                return None
            i += 1
            continue
        # RFC 3629 §4: the first byte fixes the length and the range of the second.
        if 0xC2 <= b <= 0xDF:
            need, low, high = 1, 0x80, 0xBF
        elif b == 0xE0:
            need, low, high = 2, 0xA0, 0xBF
        elif b == 0xED:
            need, low, high = 2, 0x80, 0x9F
        elif 0xE1 <= b <= 0xEF:
            need, low, high = 2, 0x80, 0xBF
        elif b == 0xF0:
            need, low, high = 3, 0x90, 0xBF
        elif 0xF1 <= b <= 0xF3:
            need, low, high = 3, 0x80, 0xBF
        elif b == 0xF4:
            need, low, high = 3, 0x80, 0x8F
        else:
            return None
        if i + need >= n or not low <= raw[i + 1] <= high:
            return None
        for k in range(i + 2, i + need + 1):
            if not 0x80 <= raw[k] <= 0xBF:
                return None
        i += need + 1
    return raw.decode()


def _decimal(text: str, maximum: int) -> "int | None":
    # ASCII digits only, no leading zero but in "0": int() alone would take
    # "+5", " 5", "5_0" and other scripts' digits.
    if not text or len(text) > 20 or (text[0] == "0" and len(text) > 1):
        return None
    for c in text:
        if c not in "0123456789":
            return None
    value = int(text)
    return value if value <= maximum else None


def valid_key_name(name: str) -> bool:
    """signed-note: a key name is non-empty, with no Unicode space and no plus (U+002B)."""
    if not isinstance(name, str) or not name:
        return False
    for c in name:
        code = ord(c)
        if c == "+" or code < 0x20 or code in _WHITE_SPACE or 0xD800 <= code <= 0xDFFF:
            return False
    return True


# ------------------------------------------------------------------ keys


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


class VerifierKey:
    """A key that verifies note signatures: a name, a signature type and an Ed25519 public key."""

    def __init__(self, name: str, sig_type: int, public_key: bytes) -> None:
        if not valid_key_name(name):
            raise MisuseError("a key name is non-empty, without spaces or '+', got %r" % (name,))
        if sig_type not in KEY_TYPES:
            raise MisuseError("signature type 0x%02x is not verified here (have 0x01 and 0x04)" % sig_type)
        if len(public_key) != 32:
            raise MisuseError("an Ed25519 public key is 32 bytes, got %d" % len(public_key))
        self.name = name
        self.sig_type = sig_type
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, sig_type, self.public_key)

    def vkey(self) -> str:
        """The C2SP verifier key: ``name+hex(key ID)+base64(type || public key)``."""
        return "%s+%s+%s" % (
            self.name,
            self.key_id.hex(),
            encode_base64(bytes([self.sig_type]) + self.public_key),
        )

    def verify(self, text: str, signature: bytes) -> bool:
        """True when ``signature`` (the bytes after the key ID) is this key's over ``text``."""
        if self.sig_type == SIG_ED25519:
            return verify_signature(self.public_key, signature, text.encode())
        # tlog-cosignature: timestamped_signature = u64 timestamp || Ed25519 signature.
        if len(signature) != _TIMESTAMPED_SIGNATURE:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        return verify_signature(self.public_key, signature[8:], cosignature_v1_message(text, timestamp))


def parse_vkey(text: str) -> VerifierKey:
    """Parse ``name+hex(key ID)+base64(type || public key)``. Raises NoteError.

    Split on the first two '+' only: base64 uses '+' too.
    """
    if not isinstance(text, str):
        raise NoteError("MALFORMED_VKEY", "a verifier key is text")
    name, sep1, rest = text.partition("+")
    id_hex, sep2, key_b64 = rest.partition("+")
    if not sep1 or not sep2 or not valid_key_name(name):
        raise NoteError("MALFORMED_VKEY", "a verifier key is name+keyid+base64key, with a name without spaces")
    if len(id_hex) != 8 or any(c not in "0123456789abcdef" for c in id_hex):
        raise NoteError("MALFORMED_VKEY", "the key ID of a verifier key is 8 lowercase hex digits")
    raw = decode_base64(key_b64)
    if not raw:
        raise NoteError("MALFORMED_VKEY", "the key of a verifier key is not base64")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != bytes.fromhex(id_hex):
        raise NoteError("MALFORMED_VKEY", "the key ID of verifier key %s does not match its name and key" % name)
    if raw[0] not in KEY_TYPES:
        raise NoteError("UNKNOWN_KEY_TYPE", "signature type 0x%02x is not verified here (have 0x01 and 0x04)" % raw[0])
    if len(raw) != 33:
        raise NoteError("MALFORMED_VKEY", "an Ed25519 verifier key holds a 32-byte public key")
    return VerifierKey(name, raw[0], raw[1:])


# ------------------------------------------------------------------ notes


class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the signature bytes after it.

    ``encoded`` is the base64 text as it appeared, so a line is passed on
    exactly as it was received.
    """

    def __init__(self, name: str, key_id: bytes, signature: bytes, encoded: "str | None" = None) -> None:
        self.name = name
        self.key_id = bytes(key_id)
        self.signature = bytes(signature)
        self.encoded = encoded if encoded is not None else encode_base64(self.key_id + self.signature)

    def line(self) -> str:
        """``— <name> <base64>`` and its newline."""
        return "%s%s %s\n" % (SIGNATURE_PREFIX, self.name, self.encoded)

    def key_id_hex(self) -> str:
        return self.key_id.hex()


class Note:
    """A signed note: its text (ending in a newline) and its signature lines.

    ``verified`` and ``unverified`` are filled by verify_note: the distinct
    lines that verified under a known key, and those of unknown keys.
    """

    def __init__(self, text: str, signatures: list) -> None:
        self.text = text
        self.signatures = signatures  # type: list[NoteSignature]
        self.verified = []  # type: list[NoteSignature]
        self.unverified = []  # type: list[NoteSignature]

    def encode(self, signatures: "list | None" = None) -> str:
        """The note as text, with ``signatures`` (default: all it has)."""
        lines = self.signatures if signatures is None else signatures
        return self.text + "\n" + "".join(s.line() for s in lines)


def _signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("MALFORMED_NOTE", "a signature line starts with an em dash and a space")
    name, _sep, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    raw = decode_base64(encoded)
    if not valid_key_name(name) or raw is None or len(raw) < 5:
        raise NoteError("MALFORMED_NOTE", "a signature line is '— <key name> <base64 of key ID and signature>'")
    return NoteSignature(name, raw[:4], raw[4:], encoded)


def parse_signature_lines(data: "bytes | str") -> list:
    """Signature lines alone, each ending in a newline (a witness's add-checkpoint answer)."""
    text = note_text(data)
    if not text or text[-1] != "\n":
        raise NoteError("MALFORMED_NOTE", "signature lines are UTF-8, each ending in a newline")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("MALFORMED_NOTE", "more than %d signatures" % MAX_SIGNATURES)
    return [_signature_line(line) for line in lines]


def parse_note(data: "bytes | str") -> Note:
    """The text and signature lines of a signed note, unverified. Raises NoteError (MALFORMED_NOTE)."""
    text = note_text(data)
    if text is None:
        raise NoteError("MALFORMED_NOTE", "a note is UTF-8 without control characters other than newline")
    # "the text is separated from the signatures by the last empty line in the note"
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("MALFORMED_NOTE", "a note has a blank line between its text and its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block or block[-1] != "\n":
        raise NoteError("MALFORMED_NOTE", "a note ends in one or more signature lines, each with its newline")
    return Note(body, parse_signature_lines(block))


def verify_note(note: Note, keys: list) -> Note:
    """Verify ``note`` against the VerifierKeys ``keys``; fill its verified and unverified lists.

    signed-note: lines whose (name, key ID) is no known key's are ignored,
    even if one of the two matches; a known key's line must verify, or the
    whole note is rejected (BAD_SIGNATURE); at least one must (UNVERIFIED).
    A line repeated word for word counts once. Two keys with one name and
    key ID are a MisuseError when a line names them, as Go's sumdb/note
    reports an ambiguous key.
    """
    known = {}  # type: dict[tuple, VerifierKey | None]
    for key in keys:
        pair = (key.name, key.key_id)
        # None marks a (name, key ID) given twice: an error only if a line names it.
        known[pair] = None if pair in known else key
    verified = []  # type: list[NoteSignature]
    unverified = []  # type: list[NoteSignature]
    seen = {}  # type: dict[str, bool]
    for sig in note.signatures:
        line = sig.line()
        if line in seen:
            continue
        seen[line] = True
        pair = (sig.name, sig.key_id)
        if pair not in known:
            unverified.append(sig)
            continue
        key = known[pair]
        if key is None:
            raise MisuseError(
                "two verifier keys are %s+%s: which one signed is ambiguous" % (sig.name, sig.key_id.hex())
            )
        if not key.verify(note.text, sig.signature):
            raise NoteError("BAD_SIGNATURE", "the signature of %s+%s does not verify" % (sig.name, sig.key_id.hex()))
        verified.append(sig)
    note.verified = verified
    note.unverified = unverified
    if not verified:
        raise NoteError("UNVERIFIED", "the note has no signature by a known key")
    return note


def open_note(data: "bytes | str", keys: list) -> Note:
    """parse_note, then verify_note."""
    return verify_note(parse_note(data), keys)


def sign_ed25519(text: str, name: str, key: "SigningKey") -> NoteSignature:
    """signed-note Ed25519 (type 0x01): the key's signature over the note text."""
    if not valid_key_name(name):
        raise MisuseError("a key name is non-empty, without spaces or '+', got %r" % (name,))
    if not text.endswith("\n"):
        raise MisuseError("a note's text ends in a newline")
    return NoteSignature(name, key_id(name, SIG_ED25519, key.public_key), key.sign(text.encode()))


# ------------------------------------------------------------------ checkpoints


class Checkpoint:
    """A tlog-checkpoint body: origin, tree size, root hash and extension lines."""

    def __init__(self, origin: str, size: int, root: bytes, extensions: "list | None" = None) -> None:
        self.origin = origin
        self.size = size
        self.root = bytes(root)
        self.extensions = list(extensions or [])  # type: list[str]

    def text(self) -> str:
        lines = [self.origin, "%d" % self.size, encode_base64(self.root)] + self.extensions
        return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """A note text as a tlog-checkpoint. Raises NoteError (MALFORMED_CHECKPOINT)."""
    if not text.endswith("\n"):
        raise NoteError("MALFORMED_CHECKPOINT", "a checkpoint's text ends in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("MALFORMED_CHECKPOINT", "a checkpoint has an origin, a size and a root hash line")
    for line in lines:
        if not line:
            raise NoteError("MALFORMED_CHECKPOINT", "a checkpoint has no empty line")
    size = _decimal(lines[1], MAX_TREE_SIZE)
    if size is None:
        raise NoteError("MALFORMED_CHECKPOINT", "the size line is a decimal without leading zeroes")
    root = decode_base64(lines[2])
    if root is None or len(root) != 32:
        raise NoteError("MALFORMED_CHECKPOINT", "the root hash line is 32 bytes in base64")
    return Checkpoint(lines[0], size, root, lines[3:])


def open_checkpoint(data: "bytes | str", keys: list) -> tuple:
    """A signed checkpoint verified by ``keys``; returns ``(Checkpoint, Note)``. Raises NoteError."""
    note = parse_note(data)
    checkpoint = parse_checkpoint(note.text)
    verify_note(note, keys)
    return checkpoint, note


# ------------------------------------------------------------------ cosignatures


def cosignature_v1_message(text: str, timestamp: int) -> bytes:
    """tlog-cosignature "Ed25519 signed message": header, time line, the checkpoint's text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MisuseError("a cosignature timestamp is 0..2^63-1, got %d" % timestamp)
    return (COSIGNATURE_V1_HEADER + "time %d\n" % timestamp + text).encode()


def cosign_v1(text: str, name: str, key: "SigningKey", timestamp: int) -> NoteSignature:
    """The cosignature/v1 line of cosigner ``name`` over checkpoint ``text`` at ``timestamp``.

    tlog-witness forbids omitting the timestamp, so it is at least 1.
    """
    if not valid_key_name(name):
        raise MisuseError("a cosigner name is non-empty, without spaces or '+', got %r" % (name,))
    if not 1 <= timestamp <= MAX_TIMESTAMP:
        raise MisuseError("a cosignature timestamp is 1..2^63-1, got %d" % timestamp)
    signature = key.sign(cosignature_v1_message(text, timestamp))
    return NoteSignature(
        name, key_id(name, SIG_COSIGNATURE_V1, key.public_key), timestamp.to_bytes(8, "big") + signature
    )


def cosignature_timestamp(sig: NoteSignature) -> int:
    """The timestamp of a cosignature/v1 line. Raises NoteError if it is not one."""
    if len(sig.signature) != _TIMESTAMPED_SIGNATURE:
        raise NoteError("MALFORMED_NOTE", "a cosignature/v1 is a timestamp and a 64-byte signature")
    return int.from_bytes(sig.signature[:8], "big")


# ------------------------------------------------------------------ tlog-witness


class AddCheckpointRequest:
    """The body of ``POST /add-checkpoint``: old size, consistency proof, signed checkpoint."""

    def __init__(self, old_size: int, proof: list, checkpoint: str) -> None:
        self.old_size = old_size
        self.proof = proof  # type: list[bytes]
        self.checkpoint = checkpoint


def add_checkpoint_body(old_size: int, proof: list, checkpoint: str) -> bytes:
    """tlog-witness: ``old <size>``, one base64 hash per line, an empty line, the checkpoint."""
    if not 0 <= old_size <= MAX_TREE_SIZE:
        raise MisuseError("an old size is 0..2^64-1, got %d" % old_size)
    if len(proof) > MAX_PROOF_LINES:
        raise MisuseError("a consistency proof has at most %d hashes" % MAX_PROOF_LINES)
    for node in proof:
        if len(node) != 32:
            raise MisuseError("a consistency proof hash is 32 bytes")
    if not checkpoint.endswith("\n"):
        raise MisuseError("a signed checkpoint ends in a newline")
    lines = ["old %d\n" % old_size] + [encode_base64(node) + "\n" for node in proof]
    return ("".join(lines) + "\n" + checkpoint).encode()


def parse_add_checkpoint(body: "bytes | str") -> AddCheckpointRequest:
    """Parse an add-checkpoint body; the checkpoint stays text. Raises NoteError (MALFORMED_REQUEST)."""
    text = note_text(body)
    if text is None:
        raise NoteError("MALFORMED_REQUEST", "the body is UTF-8 without control characters other than newline")
    first, sep, rest = text.partition("\n")
    old_size = _decimal(first[4:], MAX_TREE_SIZE) if first.startswith("old ") else None
    if not sep or old_size is None:
        raise NoteError("MALFORMED_REQUEST", "the body starts with 'old <size>' and a newline")
    proof = []  # type: list[bytes]
    while True:
        line, sep, rest = rest.partition("\n")
        if not sep:
            raise NoteError("MALFORMED_REQUEST", "the proof lines end with an empty line before the checkpoint")
        if not line:
            break
        node = decode_base64(line)
        if node is None or len(node) != 32:
            raise NoteError("MALFORMED_REQUEST", "a consistency proof line is one 32-byte hash in base64")
        if len(proof) == MAX_PROOF_LINES:
            raise NoteError("MALFORMED_REQUEST", "more than %d consistency proof lines" % MAX_PROOF_LINES)
        proof.append(node)
    if not rest:
        raise NoteError("MALFORMED_REQUEST", "the body ends with a signed checkpoint")
    return AddCheckpointRequest(old_size, proof, rest)


def cosigners(data: "bytes | str", witnesses: list) -> list:
    """``(name, timestamp)`` of each of ``witnesses`` (cosignature/v1 vkeys) whose line in the note verifies.

    A bundle's checkpoint carries the witnesses' cosignature lines after the
    ledger's own signature. Lines of other keys are ignored; a line that
    names one of these witnesses and does not verify counts for nothing.
    """
    signed = parse_note(data)
    found = []
    for key in witnesses:
        for sig in signed.signatures:
            if sig.name == key.name and sig.key_id == key.key_id and key.verify(signed.text, sig.signature):
                found.append((key.name, cosignature_timestamp(sig)))
                break
    return found
