"""Checked messages into the ledger, a batch per transaction: what the SQLite worker and the
PostgreSQL integrator both do once a message has passed (or failed) its signature checks.

A batch goes in one transaction with its rows buffered by the store
(``Store.begin_batch``): a few statements per batch instead of a dozen per
reading. If the batch fails on a bug, it is rolled back whole and done again
one message at a time, each under a savepoint, so the one message that
trips the bug is quarantined as INTERNAL_ERROR and the rest go in.
"""

import logging
import time
import traceback
from collections.abc import Callable

from crev.reading import Reading
from crev_ingest.ledger import Ledger
from crev_ingest.reconciling import reconcile_stored
from crev_ingest.store import Store
from crev_ingest.validate import Ingestor, Outcome, Rejected, topic_device

log = logging.getLogger("crev.ingest")

# (received_ms, topic, raw bytes, what check_message made of it)
Item = tuple[int, str, bytes, "Reading | Rejected"]


def integrate(
    store: Store, ledger: Ledger, ingestor: Ingestor, items: list[Item], before_commit: Callable[[], None] | None = None
) -> list[Outcome]:
    """Store ``items`` in one write transaction (sealing if due); one Outcome per item, in order.

    ``before_commit`` runs inside the transaction, after the items: what must
    commit or roll back with them (the integrator's removal from pending).
    """
    try:
        with store.transaction():
            ledger.sync()
            store.begin_batch([(c.dev, c.seq) for _ms, _topic, _raw, c in items if isinstance(c, Reading)])
            outcomes = [ingestor.store_checked(topic, raw, ms, checked) for ms, topic, raw, checked in items]
            _finish(ledger, before_commit)
        _reconcile(store, ingestor, outcomes)
        return outcomes
    except store.db.errors:
        raise  # the store, not the batch: the caller waits and retries
    except Exception:
        log.exception("a batch of %d messages failed; storing them one at a time", len(items))
    with store.transaction():
        ledger.sync()
        outcomes = [_one(store, ledger, ingestor, item) for item in items]
        _finish(ledger, before_commit)
    _reconcile(store, ingestor, outcomes)
    return outcomes


def _reconcile(store: Store, ingestor: Ingestor, outcomes: list[Outcome]) -> None:
    """SPEC §13, once the readings are durable: bookkeeping only, so a failure never fails the batch."""
    accepted = [o.reading for o in outcomes if o.reading is not None and o.reading.smart_meter is not None]
    if not accepted:
        return
    try:
        reconcile_stored(store, accepted, ingestor.config.reconciliation, int(time.time() * 1000))
    except Exception:
        # The next reading that carries the same fixed-time value tries again.
        log.exception("smart-meter reconciliation failed for a batch; the readings are stored")


def _one(store: Store, ledger: Ledger, ingestor: Ingestor, item: Item) -> Outcome:
    received_ms, topic, raw, checked = item
    store.savepoint()
    try:
        outcome = ingestor.store_checked(topic, raw, received_ms, checked)
        store.release()
        return outcome
    except store.db.errors:
        raise
    except Exception:  # a bug must not lose the message: keep it for inspection
        # Undo this message's partial rows, and the frontier with them.
        store.rollback_to_savepoint()
        ledger.sync()
        store.quarantine(received_ms, topic, "INTERNAL_ERROR", traceback.format_exc(limit=3), raw)
        log.exception("internal error on a message from %s; quarantined", topic)
        return Outcome("quarantined", "INTERNAL_ERROR", "see the quarantine row", topic_device(topic))


def _finish(ledger: Ledger, before_commit: Callable[[], None] | None) -> None:
    if before_commit is not None:
        before_commit()
    if ledger.due():
        ledger.seal(int(time.time() * 1000))
