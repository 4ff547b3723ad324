"""The integrator: on PostgreSQL, one worker at a time gives readings their leaf indices.

Sequencing is apart from integration, as in Trillian and Tessera. Every
worker verifies what it receives and commits it to ``pending`` (deduplicated
by device, seq and digest) before its PUBACK, side by side with the other
workers. One integrator, whichever worker holds a session-level advisory
lock, takes the oldest pending readings in one transaction: it checks each
against its device's chain (duplicates, conflicts, gaps, the recomputation),
appends the good to the ledger, quarantines the rest with their reason,
updates the tiles, seals blocks, and deletes what it took from ``pending``.

A crash anywhere in that transaction rolls all of it back, so the next
integrator simply does it again: integration is idempotent. The lock lives
as long as the integrator's connection, so when its process dies the server
frees the lock and another worker's integrator takes over within a second.
"""

import logging
import threading
import time

from crev.keys import SigningKey
from crev.reading import Reading
from crev_ingest import StoreUnavailable
from crev_ingest.config import IngestConfig
from crev_ingest.database import WRITER_LOCK, first_line
from crev_ingest.influx import InfluxWriter, reading_point
from crev_ingest.integrate import Item, integrate
from crev_ingest.ledger import Ledger
from crev_ingest.metrics import IngestMetrics
from crev_ingest.store import Store
from crev_ingest.validate import Ingestor, Rejected

try:
    from crev_ingest.fastcbor import decode_verified
except ImportError:  # without cbor2 the checking decoder does all
    decode_verified = None  # type: ignore[assignment]

log = logging.getLogger("crev.ingest.integrator")

# A database that went away is retried at least this often, so ingest resumes soon after it is back.
STORE_RETRY_MAX_S = 10.0
INTEGRATOR_LOCK = WRITER_LOCK + 1  # "crew": the advisory lock whose holder integrates
BATCH = 2000  # pending readings per transaction
IDLE_S = 0.1  # how often an idle integrator looks for pending readings
FOLLOW_S = 1.0  # how often a worker that does not integrate tries to take over


class Integrator:
    def __init__(
        self,
        config: IngestConfig,
        key: SigningKey,
        metrics: IngestMetrics,
        stop_event: threading.Event,
        name: str,
        influx: InfluxWriter | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.metrics = metrics
        self.stop_event = stop_event
        self.name = name
        self.influx = influx
        self.counts = {"accepted": 0, "duplicate": 0, "quarantined": 0}
        self.leading = False
        self._leading_on: object = None  # the connection that holds the lock
        self.thread = threading.Thread(target=self._run, name="integrator", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        store: Store | None = None
        ledger: Ledger | None = None
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                if store is None or ledger is None:
                    store = Store(self.config.store_location)
                    ledger = Ledger(
                        store, self.key, self.config.origin, self.config.block_interval_s, self.config.block_max_leaves
                    )
                    ingestor = Ingestor(store, ledger, self.config)
                if not self._lead(store):
                    self.stop_event.wait(FOLLOW_S)
                    continue
                if not self.integrate_once(store, ledger, ingestor):
                    self.stop_event.wait(IDLE_S)
                delay = 1.0
            except retryable(store) as err:
                self._follow()
                log.error("integrator: cannot write the store: %s; retrying in %.0f s", first_line(err), delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
            except Exception:  # a bug: never let it kill the thread silently
                self._follow()
                log.exception("integrator: internal error; retrying in %.0f s", delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
        if store is not None and ledger is not None:
            try:
                if self.leading:
                    self._seal_rest(store, ledger)
            except Exception as err:  # shutting down: say so, lose nothing (the next integrator seals)
                log.warning("integrator: could not seal on the way out: %s", first_line(err))
            store.close()
        self._follow()

    def _lead(self, store: Store) -> bool:
        connection = getattr(store.db, "connection", None)
        if self.leading and connection is self._leading_on and not getattr(connection, "broken", False):
            return True
        self.leading = False
        if not store.db.try_session_lock(INTEGRATOR_LOCK):
            self.metrics.integrating.set(0)
            return False
        self.leading, self._leading_on = True, getattr(store.db, "connection", None)
        self.metrics.integrating.set(1)
        log.info("integrating: %s now gives the leaf indices", self.name)
        return True

    def _follow(self) -> None:
        self.leading = False
        self._leading_on = None
        self.metrics.integrating.set(0)

    # ------------------------------------------------------------ one batch

    def integrate_once(self, store: Store, ledger: Ledger, ingestor: Ingestor) -> int:
        """Integrate the oldest pending readings in one transaction; how many were taken."""
        waiting = store.db.execute("SELECT id FROM pending LIMIT 1").fetchone() is not None
        if not waiting:
            if ledger.due():
                with store.transaction():
                    ledger.sync()
                    if ledger.due():
                        ledger.seal(int(time.time() * 1000))
            return 0
        started = time.monotonic()
        rows = store.pending_batch(BATCH)
        items: list[Item] = []
        for _id, received_ms, topic, cose in rows:
            checked = _decode_pending(cose)
            items.append((received_ms, topic, cose, checked))
        ids = [row[0] for row in rows]
        # Read outside the transaction, which is fine: only the lock holder takes from pending,
        # and the transaction that integrates these rows is the one that deletes them.
        outcomes = integrate(store, ledger, ingestor, items, lambda: store.drop_pending(ids))
        accepted: list[Reading] = []
        for (_ms, topic, _raw, _checked), outcome in zip(items, outcomes, strict=True):
            self.counts[outcome.status] += 1
            if outcome.status == "accepted":
                self.metrics.accepted.inc()
            elif outcome.status == "duplicate":
                self.metrics.duplicates.inc()
            else:
                self.metrics.quarantined.labels(outcome.reason or "UNKNOWN").inc()
                log.warning("quarantined %s from %s: %s", outcome.reason, topic, outcome.detail)
            if outcome.reading is not None:
                accepted.append(outcome.reading)
        self.metrics.commit.observe(time.monotonic() - started)
        self.metrics.height.set(ledger.height)
        self.metrics.pending.set(store.pending_count())
        now = time.time()
        for reading in accepted:
            self.metrics.lag.observe(max(0.0, now - reading.t1))
        if self.influx is not None and accepted:
            points = [reading_point(r, self.config.site_of(r.dev), self.config.factor_for(r.dev)) for r in accepted]
            self.influx.write([p for p in points if p is not None])
        return len(rows)

    def _seal_rest(self, store: Store, ledger: Ledger) -> None:
        """On the way out, integrate and seal what is left, so every stored reading is provable."""
        ingestor = Ingestor(store, ledger, self.config)
        while self.integrate_once(store, ledger, ingestor) >= BATCH:
            pass
        with store.transaction():
            ledger.sync()
            if ledger.size > ledger.sealed_size:
                ledger.seal(int(time.time() * 1000))


def _decode_pending(cose: bytes) -> "Reading | Rejected":
    if decode_verified is not None:
        try:
            # The worker verified it in full before committing it to pending: decode only.
            return decode_verified(cose)
        except Exception:
            pass  # the checking decoder, below, names what is wrong
    try:
        return Reading.from_cose(cose)
    except Exception as err:  # nothing a worker committed should fail this: keep it for inspection
        return Rejected("INTERNAL_ERROR", "pending reading does not decode: %s" % err)


def retryable(store: Store | None) -> tuple[type[BaseException], ...]:
    """What a lost or locked database raises: waited out and retried, never fatal."""
    return (*(store.db.errors if store is not None else ()), StoreUnavailable)


__all__ = ["INTEGRATOR_LOCK", "Integrator"]
