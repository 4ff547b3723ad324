"""The tlog-witness ``add-checkpoint`` decision (c2sp.org/tlog-witness), step by step.

No socket here: request bytes and the time in, an Answer out, against the
WitnessState. The steps, numbered as in the code:

(1) the body parses: an old size line, proof lines, an empty line and a
    signed checkpoint; else 400
(2) the checkpoint's origin is a log we witness; else 404
(3) it carries a valid signature by that log's key and no bad one by it
    (signatures of other keys are ignored); else 403
(4) under the state's write lock, compare it with the latest checkpoint we
    cosigned for the log: a smaller tree, or one of the same size with
    another root, contradicts what we cosigned and is kept as evidence
(5) the old size is at most the checkpoint's size; else 400
(6) the old size is the size we last cosigned (0 if none); else 409, with
    that size as the body and Content-Type text/x.tlog.size
(7) a checkpoint of size 0 has the empty tree's root; else 422
(8) old size 0 comes with no proof; the same size with the same root (else
    409, as tlog-witness requires, with a text body: not a size) and no
    proof; otherwise the RFC 9162 consistency proof from what we cosigned
    must verify; else 422 (a failed proof is kept as evidence too)
(9) cosign (tlog-cosignature, cosignature/v1), record the new latest
    checkpoint and commit it durably; only then answer 200 with the
    cosignature line

Evidence and refusals are logged; (4) is the one a witness exists to catch.
"""

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from crev import merkle, note
from crev.keys import SigningKey
from crev_witness.state import Evidence, LogState, WitnessState

log = logging.getLogger("crev.witness")

TEXT = "text/plain; charset=utf-8"
# tlog-witness: the 409 answer's body is the size, and its Content-Type exactly this.
TLOG_SIZE = "text/x.tlog.size"
# Tree sizes are kept in SQLite's signed 64-bit INTEGER.
MAX_SIZE = (1 << 63) - 1

EVIDENCE_SMALLER = "smaller"
EVIDENCE_FORK = "fork"
EVIDENCE_BAD_PROOF = "bad-proof"


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = TEXT


class Witness:
    """A cosigner named ``name`` with ``key``, for the logs ``logs`` (origin -> their verifier keys)."""

    def __init__(
        self, name: str, key: SigningKey, logs: Mapping[str, Sequence[note.VerifierKey]], state: WitnessState
    ) -> None:
        self.name = name
        self.key = key
        self.vkey = note.VerifierKey(name, note.SIG_COSIGNATURE_V1, key.public_key)
        self.logs = {origin: list(keys) for origin, keys in logs.items()}
        self.state = state
        self._origin_by_hash = {hashlib.sha256(origin.encode()).hexdigest(): origin for origin in self.logs}
        # One add-checkpoint at a time in this process; the SQLite write lock covers others.
        self._lock = threading.Lock()

    def add_checkpoint(self, body: bytes, now: int) -> Answer:
        """Answer one ``POST /add-checkpoint`` with ``body``, at Unix time ``now``."""
        # (1) the request body
        try:
            request = note.parse_add_checkpoint(body)
            signed = note.parse_note(request.checkpoint)
            checkpoint = note.parse_checkpoint(signed.text)
        except note.NoteError as err:
            return Answer(400, "not an add-checkpoint request: %s\n" % err.detail)
        if checkpoint.size > MAX_SIZE or request.old_size > MAX_SIZE:
            return Answer(400, "a tree size above 2^63-1 is not accepted here\n")
        # (2) a log we witness
        keys = self.logs.get(checkpoint.origin)
        if keys is None:
            return Answer(404, "this witness does not witness the log %r\n" % checkpoint.origin)
        # (3) signed by the log's key
        try:
            note.verify_note(signed, keys)
        except note.NoteError as err:
            log.warning("%s: refused a checkpoint of size %d: %s", checkpoint.origin, checkpoint.size, err.detail)
            return Answer(403, "the checkpoint is not signed by the log's key: %s\n" % err.detail)
        with self._lock, self.state.transaction():
            return self._against_latest(request, signed, checkpoint, body, now)

    def _against_latest(
        self, request: note.AddCheckpointRequest, signed: note.Note, checkpoint: note.Checkpoint, body: bytes, now: int
    ) -> Answer:
        origin = checkpoint.origin
        latest = self.state.latest(origin)
        latest_size = latest.size if latest is not None else 0
        latest_root = latest.root if latest is not None else note.EMPTY_ROOT
        # (4) what contradicts the latest cosigned checkpoint is evidence
        if latest is not None and checkpoint.size < latest.size:
            self._keep(EVIDENCE_SMALLER, latest, signed, checkpoint, body, now)
        elif latest is not None and checkpoint.size == latest.size and checkpoint.root != latest.root:
            self._keep(EVIDENCE_FORK, latest, signed, checkpoint, body, now)
        # (5) old size <= size
        if request.old_size > checkpoint.size:
            return Answer(400, "old size %d is above the checkpoint's size %d\n" % (request.old_size, checkpoint.size))
        # (6) old size == the size we cosigned
        if request.old_size != latest_size:
            log.info("%s: old size %d, but the latest cosigned size is %d", origin, request.old_size, latest_size)
            return Answer(409, "%d\n" % latest_size, TLOG_SIZE)
        # (7) the empty tree
        if checkpoint.size == 0 and checkpoint.root != note.EMPTY_ROOT:
            return Answer(422, "a checkpoint of size 0 has the root of the empty tree\n")
        # (8) consistency with what we cosigned
        if request.old_size == 0:
            if request.proof:
                return Answer(422, "from old size 0 the consistency proof is empty\n")
        elif request.old_size == checkpoint.size:
            if checkpoint.root != latest_root:
                # tlog-witness: "If they don't match, the witness MUST respond with a 409 Conflict".
                return Answer(409, "size %d was cosigned with another root hash\n" % checkpoint.size)
            if request.proof:
                return Answer(422, "between equal sizes the consistency proof is empty\n")
        elif not merkle.verify_consistency(
            request.old_size, checkpoint.size, request.proof, latest_root, checkpoint.root
        ):
            if latest is not None:  # always, as old size > 0 passed step (6)
                self._keep(EVIDENCE_BAD_PROOF, latest, signed, checkpoint, body, now)
            return Answer(
                422, "the consistency proof from size %d to %d does not verify\n" % (request.old_size, checkpoint.size)
            )
        # (9) cosign, persist, answer. A cosignature never predates one already given for
        # the log, even if the clock stepped back: each says "as of this time".
        timestamp = max(now, latest.cosigned_at if latest is not None else 1, 1)
        cosignature = note.cosign_v1(signed.text, self.name, self.key, timestamp)
        cosigned = signed.encode([*signed.verified, cosignature])
        self.state.set_latest(origin, LogState(checkpoint.size, checkpoint.root, cosigned, timestamp))
        log.info("%s: cosigned size %d (from %d)", origin, checkpoint.size, request.old_size)
        return Answer(200, cosignature.line())

    def _keep(
        self,
        reason: str,
        latest: LogState,
        signed: note.Note,
        checkpoint: note.Checkpoint,
        body: bytes,
        now: int,
    ) -> None:
        evidence = Evidence(
            origin=checkpoint.origin,
            reason=reason,
            received_at=now,
            latest_size=latest.size,
            latest_root=latest.root,
            latest_note=latest.note,
            size=checkpoint.size,
            root=checkpoint.root,
            note=signed.encode(),
            body=body.decode(),
        )
        new = self.state.keep_evidence(evidence)
        log.warning(
            "%s: EVIDENCE (%s): the log signed size %d with root %s, but this witness cosigned size %d with root %s%s",
            checkpoint.origin,
            reason,
            checkpoint.size,
            note.encode_base64(checkpoint.root),
            latest.size,
            note.encode_base64(latest.root),
            "; kept in %s" % self.state.path if new else " (already kept)",
        )

    def checkpoint(self, origin_hash: str) -> str | None:
        """tlog-witness monitoring: the latest cosigned checkpoint of the log whose origin hashes so."""
        origin = self._origin_by_hash.get(origin_hash)
        if origin is None:
            return None
        latest = self.state.latest(origin)
        return None if latest is None else latest.note
