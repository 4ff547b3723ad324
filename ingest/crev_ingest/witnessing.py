"""The log side of witnessing (SPEC §11): each new block checkpoint goes to every configured witness.

For each ``[[witness]]`` of ingest.toml, a thread of ``crev ingest run``
keeps that witness up to date, following C2SP tlog-witness:

- it sends the newest sealed checkpoint with the consistency proof from the
  size that witness last cosigned (``old 0`` and no proof the first time);
- on 409 the witness says, in ``text/x.tlog.size``, which size it has; the
  client takes that size and sends again with the proof from it;
- on 200 it verifies the cosignature/v1 line with the witness's vkey, and
  keeps it with the block in ``cosignatures``, in the same transaction as
  the witness's new size in ``witness_state``;
- a witness that is down, slow or refusing delays nothing: it is retried
  with a backoff up to a minute, and the reason is logged and kept.

The thread has its own store connection, so ingest's batches never wait
for a witness.
"""

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from crev import merkle, note
from crev_ingest.metrics import IngestMetrics
from crev_ingest.store import Store

log = logging.getLogger("crev.ingest.witness")

MAX_BACKOFF_S = 60.0
TIMEOUT_S = 10.0


@dataclass
class WitnessConfig:
    url: str  # the witness's base URL; requests go to <url>/add-checkpoint
    vkey: note.VerifierKey  # type 0x04 (cosignature/v1)


@dataclass
class _Peer:
    config: WitnessConfig
    size: int = 0
    next_try: float = 0.0
    backoff: float = 1.0
    last_error: str | None = field(default=None)


class Refusal(Exception):
    pass


def cosignatures(store: Store, height: int) -> list[str]:
    """The cosignature lines kept for block ``height`` (none on a ledger that never had a witness)."""
    rows = store.db.execute("SELECT line FROM cosignatures WHERE height = ? ORDER BY witness", (height,))
    return [str(r[0]) for r in rows]


def newest_cosigned_height(store: Store) -> int | None:
    """The newest block any witness cosigned (None: none yet, or no witnesses)."""
    row = store.db.execute("SELECT max(height) FROM cosignatures").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def cosigned_checkpoint(store: Store, height: int) -> str:
    """The block's checkpoint note with every cosignature kept for it, as C2SP notes carry them."""
    return store.checkpoint(height) + "".join(cosignatures(store, height))


def witness_states(store: Store) -> list[dict[str, object]]:
    rows = store.db.execute("SELECT witness, size, checked_ms, error FROM witness_state ORDER BY witness")
    return [{"witness": r[0], "size": r[1], "checked_ms": r[2], "error": r[3]} for r in rows]


class Witnessing:
    def __init__(self, store_location: Path | str, witnesses: list[WitnessConfig], metrics: IngestMetrics) -> None:
        self.store_location = store_location
        self.peers = [_Peer(w) for w in witnesses]
        self.metrics = metrics
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="witnessing", daemon=True)

    def start(self) -> None:
        if self.peers:
            self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(TIMEOUT_S + 5)

    def _run(self) -> None:
        store = Store(self.store_location)
        try:
            with store.transaction():
                known = {str(r[0]): int(r[1]) for r in store.db.execute("SELECT witness, size FROM witness_state")}
            for peer in self.peers:
                peer.size = known.get(peer.config.vkey.name, 0)
            while not self.stop_event.is_set():
                try:
                    self.pass_once(store)
                except Exception:  # a locked store or a bug: witnessing must never stop ingest
                    log.exception("witnessing pass failed; trying again")
                    self.stop_event.wait(5)
                self.stop_event.wait(0.5)
        finally:
            store.close()

    def pass_once(self, store: Store) -> None:
        with store.transaction():
            latest = store.last_block()
            if latest is None:
                return
            height, _hash, size = latest
            checkpoint = store.checkpoint(height)
        for peer in self.peers:
            if peer.size >= size or time.monotonic() < peer.next_try:
                continue
            try:
                self._submit(store, peer, height, size, checkpoint)
            except Refusal as err:
                self._failed(store, peer, str(err))

    def _submit(self, store: Store, peer: _Peer, height: int, size: int, checkpoint: str) -> None:
        for _attempt in range(3):  # a 409 gives the witness's size: send again from there
            with store.transaction():
                proof = merkle.consistency_path(peer.size, size, store.node) if 0 < peer.size < size else []
            body = note.add_checkpoint_body(peer.size, proof, checkpoint)
            status, content_type, answer = _post(peer.config.url.rstrip("/") + "/add-checkpoint", body)
            if status == 409 and content_type.split(";")[0].strip() == "text/x.tlog.size":
                their = answer.decode("ascii", "replace").strip()
                if not their.isdigit() or int(their) > size:
                    raise Refusal("409 with a size %r this log never had: a fork, or another log" % their)
                peer.size = int(their)
                continue
            if status != 200:
                raise Refusal("%d %s" % (status, answer[:200].decode("utf-8", "replace").strip()))
            line = self._verified_line(peer, checkpoint, answer)
            timestamp = note.cosignature_timestamp(note.parse_signature_lines(line)[0])
            with store.transaction():
                store.db.execute(
                    "INSERT INTO cosignatures (height, witness, size, timestamp, line) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (height, witness) DO NOTHING",
                    (height, peer.config.vkey.name, size, timestamp, line),
                )
                self._record(store, peer.config.vkey.name, size, None)
            peer.size, peer.backoff, peer.last_error = size, 1.0, None
            self.metrics.witness_size.labels(peer.config.vkey.name).set(size)
            self.metrics.witness_up.labels(peer.config.vkey.name).set(1)
            log.info("witness %s cosigned block %d (size %d)", peer.config.vkey.name, height, size)
            return
        raise Refusal("the witness kept answering 409")

    def _verified_line(self, peer: _Peer, checkpoint: str, answer: bytes) -> str:
        """The one cosignature line of this witness in a 200 answer, verified over our checkpoint."""
        try:
            signatures = note.parse_signature_lines(answer)
        except note.NoteError as err:
            raise Refusal("200 without signature lines: %s" % err) from err
        key = peer.config.vkey
        text = note.parse_note(checkpoint).text
        for signature in signatures:
            if signature.name == key.name and signature.key_id == key.key_id:
                if not key.verify(text, signature.signature):
                    raise Refusal("its cosignature does not verify with its vkey")
                return str(signature.line())
        raise Refusal("200 without a cosignature by %s" % key.name)

    def _failed(self, store: Store, peer: _Peer, error: str) -> None:
        if error != peer.last_error:
            log.warning("witness %s: %s; retrying with backoff", peer.config.vkey.name, error)
        peer.last_error = error
        peer.next_try = time.monotonic() + peer.backoff
        peer.backoff = min(peer.backoff * 2, MAX_BACKOFF_S)
        self.metrics.witness_up.labels(peer.config.vkey.name).set(0)
        with store.transaction():
            self._record(store, peer.config.vkey.name, peer.size, error)

    @staticmethod
    def _record(store: Store, witness: str, size: int, error: str | None) -> None:
        store.db.execute(
            "INSERT INTO witness_state (witness, size, checked_ms, error) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (witness) DO UPDATE SET size = excluded.size, checked_ms = excluded.checked_ms, "
            "error = excluded.error",
            (witness, size, int(time.time() * 1000), error),
        )


def _post(url: str, body: bytes) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, body, {"Content-Type": "text/plain"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return int(response.status), response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.headers.get("Content-Type", ""), err.read()
    except (OSError, ValueError) as err:
        raise Refusal("cannot reach %s: %s" % (url, getattr(err, "reason", err))) from err
