"""crev.note beyond the published vectors: independent cross-checks, the ledger's checkpoints, and refusals."""

import base64
import binascii
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ROOT

from crev import merkle, note
from crev.errors import MisuseError
from crev.keys import SigningKey
from crev.ledger_format import checkpoint_key_hash
from crev_ingest.ledger import make_checkpoint

DOC = json.loads((ROOT / "tests" / "vectors" / "c2sp" / "note_vectors.json").read_text())
LOG_KEY = SigningKey(hashlib.sha256(b"test_note log").digest())
WITNESS_KEY = SigningKey(hashlib.sha256(b"test_note witness").digest())
ORIGIN = "crev.test/ledger"


def _code(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(note.NoteError) as caught:
        call(*args)
    return caught.value.code


# ------------------------------------------------------------------ codecs against CPython's own


@given(st.binary(max_size=80))
def test_base64_encodes_as_the_standard_library(data: bytes) -> None:
    text = note.encode_base64(data)
    assert text == base64.b64encode(data).decode()
    assert note.decode_base64(text) == data


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= -_\n.", max_size=12))
def test_base64_decodes_exactly_what_strict_standard_base64_accepts(text: str) -> None:
    # Python's strict mode still takes a partial last quantum ("0000=") as Go does not: whole quanta only.
    try:
        expected: bytes | None = binascii.a2b_base64(text, strict_mode=True) if len(text) % 4 == 0 else None
    except ValueError:
        expected = None
    assert note.decode_base64(text) == expected


# Valid, overlong, surrogate, out-of-range, truncated and stray bytes, and control characters.
_UTF8_PIECES = (
    "61 0a 01 1f 7f c280 c080 e08080 e0a080 ed9fbf eda080 efbfbf f0908080 f48fbfbf f4908080 f8 80 c3 e280 e28094 ff"
)
_utf8_pieces = st.sampled_from([bytes.fromhex(piece) for piece in _UTF8_PIECES.split()])


@given(st.one_of(st.binary(max_size=16), st.lists(_utf8_pieces, max_size=6).map(b"".join)))
def test_note_text_is_strict_utf8_without_control_characters(data: bytes) -> None:
    try:
        decoded: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and any(ord(c) < 0x20 and c != "\n" for c in decoded):
        decoded = None
    assert note.note_text(data) == decoded


# ------------------------------------------------------------------ cosignatures, checked by hand


def test_cosignature_verifies_with_cryptography_over_the_message_built_by_hand() -> None:
    case = DOC["crev"]["cosigner"]
    key = SigningKey(hashlib.sha256(case["seed_label"].encode()).digest())
    line = note.cosign_v1(case["text"], case["key_name"], key, case["timestamp"]).line()
    assert line == case["line"]
    prefix, name, encoded = line.rstrip("\n").split(" ")
    assert prefix == "\u2014" and name == "witness.crev.test"
    blob = base64.b64decode(encoded, validate=True)
    assert blob[:4] == hashlib.sha256(name.encode() + b"\n\x04" + key.public_key).digest()[:4]
    assert int.from_bytes(blob[4:12], "big") == 1700000000
    message = b"cosignature/v1\ntime 1700000000\n" + case["text"].encode()
    Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob[12:], message)  # raises if not
    vkey = case["vkey"]
    assert vkey == "%s+%s+%s" % (name, blob[:4].hex(), base64.b64encode(b"\x04" + key.public_key).decode())


def test_a_cosignature_key_is_not_a_note_key() -> None:
    text = note.Checkpoint(ORIGIN, 3, bytes(32)).text()
    as_note = note.VerifierKey("w.test", note.SIG_ED25519, WITNESS_KEY.public_key)
    as_cosigner = note.VerifierKey("w.test", note.SIG_COSIGNATURE_V1, WITNESS_KEY.public_key)
    assert as_note.key_id != as_cosigner.key_id
    cosigned = text + "\n" + note.cosign_v1(text, "w.test", WITNESS_KEY, 5).line()
    assert note.open_note(cosigned, [as_cosigner]).verified[0].name == "w.test"
    # The same key and name as a type 0x01 key: another key ID, so an unknown key's line.
    assert _code(note.open_note, cosigned, [as_note]) == "UNVERIFIED"


def test_cosignature_timestamps_are_bounded() -> None:
    text = note.Checkpoint(ORIGIN, 3, bytes(32)).text()
    with pytest.raises(MisuseError):
        note.cosign_v1(text, "w.test", WITNESS_KEY, 0)  # tlog-witness: never omitted
    with pytest.raises(MisuseError):
        note.cosign_v1(text, "w.test", WITNESS_KEY, 1 << 63)
    assert note.cosignature_v1_message(text, (1 << 63) - 1).startswith(b"cosignature/v1\ntime 9223372036854775807\n")
    key = note.VerifierKey("w.test", note.SIG_COSIGNATURE_V1, WITNESS_KEY.public_key)
    line = note.cosign_v1(text, "w.test", WITNESS_KEY, 5)
    too_late = note.NoteSignature("w.test", key.key_id, (1 << 63).to_bytes(8, "big") + line.signature[8:])
    assert _code(note.open_note, text + "\n" + too_late.line(), [key]) == "BAD_SIGNATURE"
    # A known key's line of the wrong length is a bad signature, not an unknown one.
    short = note.NoteSignature("w.test", key.key_id, line.signature[:-1])
    assert _code(note.open_note, text + "\n" + short.line(), [key]) == "BAD_SIGNATURE"


@settings(max_examples=60)
@given(st.data())
def test_any_change_to_a_cosigned_checkpoint_is_refused(data: st.DataObject) -> None:
    text = note.Checkpoint(ORIGIN, 10, hashlib.sha256(b"root").digest()).text()
    signed = (
        text
        + "\n"
        + note.sign_ed25519(text, ORIGIN, LOG_KEY).line()
        + note.cosign_v1(text, "w.test", WITNESS_KEY, 1700000000).line()
    )
    keys = [
        note.VerifierKey(ORIGIN, note.SIG_ED25519, LOG_KEY.public_key),
        note.VerifierKey("w.test", note.SIG_COSIGNATURE_V1, WITNESS_KEY.public_key),
    ]
    raw = bytearray(signed.encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        opened = note.open_note(bytes(raw), keys)
    except note.NoteError:
        return
    # A changed line may become an unknown key's, and be ignored; but the text never
    # changes, and what verifies is an original signature (maybe re-encoded in an
    # unused base64 bit).
    assert opened.text == text
    originals = {(s.name, s.key_id, s.signature) for s in note.parse_note(signed).signatures}
    assert {(s.name, s.key_id, s.signature) for s in opened.verified} <= originals


# ------------------------------------------------------------------ the ledger's checkpoints


def test_the_ledgers_checkpoints_open_with_its_type_1_vkey() -> None:
    root = hashlib.sha256(b"ledger root").digest()
    checkpoint_note = make_checkpoint(LOG_KEY, ORIGIN, 42, root)
    key = note.parse_vkey(note.VerifierKey(ORIGIN, note.SIG_ED25519, LOG_KEY.public_key).vkey())
    assert key.key_id == checkpoint_key_hash(ORIGIN, LOG_KEY.public_key)
    checkpoint, opened = note.open_checkpoint(checkpoint_note, [key])
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (ORIGIN, 42, root)
    assert opened.encode() == checkpoint_note
    other = note.VerifierKey(ORIGIN, note.SIG_ED25519, WITNESS_KEY.public_key)
    assert _code(note.open_checkpoint, checkpoint_note, [other]) == "UNVERIFIED"


def test_an_add_checkpoint_body_carries_a_real_consistency_proof() -> None:
    frontier = merkle.MerkleFrontier()
    nodes: dict[tuple[int, int], bytes] = {}
    roots = {}
    for n in range(21):
        for level, index, value in frontier.append(merkle.leaf_hash(b"reading %d" % n)):
            nodes[(level, index)] = value
        roots[frontier.size] = frontier.root()
    key = note.VerifierKey(ORIGIN, note.SIG_ED25519, LOG_KEY.public_key)
    for old_size in (0, 1, 4, 5, 16, 20, 21):
        proof = merkle.consistency_path(old_size, 21, lambda level, index: nodes[(level, index)])
        body = note.add_checkpoint_body(old_size, proof, make_checkpoint(LOG_KEY, ORIGIN, 21, roots[21]))
        assert body.startswith(b"old %d\n" % old_size)
        request = note.parse_add_checkpoint(body)
        assert request.old_size == old_size and request.proof == proof
        checkpoint, _ = note.open_checkpoint(request.checkpoint, [key])
        old_root = roots.get(old_size, note.EMPTY_ROOT)
        assert merkle.verify_consistency(old_size, checkpoint.size, request.proof, old_root, checkpoint.root)
        if proof:
            bent = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
            assert not merkle.verify_consistency(old_size, checkpoint.size, bent, old_root, checkpoint.root)


# ------------------------------------------------------------------ refusals

_ROOT64 = note.encode_base64(bytes(range(32)))


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n%s" % _ROOT64,  # no final newline
        "o\n1\n",
        "\n1\n%s\n" % _ROOT64,
        "o\n1\n%s\n\n" % _ROOT64,  # an empty extension line
        "o\n01\n%s\n" % _ROOT64,
        "o\n+1\n%s\n" % _ROOT64,
        "o\n 1\n%s\n" % _ROOT64,
        "o\n1_0\n%s\n" % _ROOT64,
        "o\n\u0663\n%s\n" % _ROOT64,  # ARABIC-INDIC DIGIT THREE: int() would take it
        "o\n%d\n%s\n" % (1 << 64, _ROOT64),
        "o\n1\n%s\n" % note.encode_base64(bytes(31)),
        "o\n1\n%s\n" % _ROOT64[:-1],
        "o\n1\n %s\n" % _ROOT64,
    ],
)
def test_malformed_checkpoints(text: str) -> None:
    assert _code(note.parse_checkpoint, text) == "MALFORMED_CHECKPOINT"


def test_checkpoint_extension_lines_are_kept() -> None:
    checkpoint = note.parse_checkpoint("o\n0\n%s\next one\next two\n" % _ROOT64)
    assert checkpoint.extensions == ["ext one", "ext two"]
    assert checkpoint.text() == "o\n0\n%s\next one\next two\n" % _ROOT64


_CHECKPOINT = make_checkpoint(LOG_KEY, ORIGIN, 2, bytes(32))
_HASH64 = note.encode_base64(bytes(32))


@pytest.mark.parametrize(
    "body",
    [
        "",
        "\n" + _CHECKPOINT,
        "old 1" + _CHECKPOINT,
        "old 01\n\n" + _CHECKPOINT,
        "old -1\n\n" + _CHECKPOINT,
        "old  1\n\n" + _CHECKPOINT,
        "Old 1\n\n" + _CHECKPOINT,
        "old 1\n%s\n" % _HASH64,  # no empty line before the checkpoint
        "old 1\n%s\n\n" % _HASH64,  # nothing after it
        "old 1\n%s\n\n" % _HASH64[:-1] + _CHECKPOINT,
        "old 1\n%s\n\n" % note.encode_base64(bytes(31)) + _CHECKPOINT,
        "old 1\n" + ("%s\n" % _HASH64) * 64 + "\n" + _CHECKPOINT,
        "old 1\r\n\n" + _CHECKPOINT,
    ],
)
def test_malformed_add_checkpoint_bodies(body: str) -> None:
    assert _code(note.parse_add_checkpoint, body.encode()) == "MALFORMED_REQUEST"


def test_add_checkpoint_takes_up_to_63_proof_lines() -> None:
    request = note.parse_add_checkpoint(("old 1\n" + ("%s\n" % _HASH64) * 63 + "\n" + _CHECKPOINT).encode())
    assert len(request.proof) == 63 and request.checkpoint == _CHECKPOINT
    with pytest.raises(MisuseError):
        note.add_checkpoint_body(1, [bytes(32)] * 64, _CHECKPOINT)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # hex is lowercase
        "Peter\u00a0Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW\n",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_vkeys(vkey: str) -> None:
    assert _code(note.parse_vkey, vkey) == "MALFORMED_VKEY"


def test_key_names_refuse_every_unicode_space_and_plus() -> None:
    for space in ("\u0085", "\u00a0", "\u1680", "\u2000", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"):
        assert not note.valid_key_name("a%sb" % space)
        line = note.NoteSignature("a%sb" % space, bytes(4), bytes(64)).line()
        assert _code(note.parse_note, "text\n\n" + line) == "MALFORMED_NOTE"
    assert not note.valid_key_name("a+b")
    assert not note.valid_key_name("")
    assert note.valid_key_name("witness.example/w1\u00e9")
