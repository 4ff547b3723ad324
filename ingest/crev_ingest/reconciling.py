"""Smart-meter reconciliation as readings arrive (SPEC §13), with the core's rule (crev.reconcile).

After each batch commits, every accepted reading that carries key 12 with a
fixed-time value at t names the slot (t-1800, t]; a slot with no verdict yet
is reconciled from the device's stored readings of that slot and the one
before (their I and E, and the key 12 values at both ends). A reading of a
slot whose verdict is UNCHECKED (a reading was missing, late backfill) has
that slot reconciled again (only readings with key 12 are looked at: a
device without a smart meter costs nothing). The verdict goes in the ``reconciliation`` table;
a SMART_METER_MISMATCH also raises an alarm (kind SMART_METER_MISMATCH).
The registry holds a flagged slot's issuance until it is released (SPEC §13); it
recomputes the verdict from the ledger's readings with crev.reconcile.slot_verdict
rather than read this table, so that the audit's replay reaches the same verdict.

Verdicts are bookkeeping, recomputable from the ledger's readings: the same
function gives the offline auditor's verdicts from a bundle.
"""

import logging

from crev import reconcile
from crev.reading import Reading
from crev_ingest.store import Store

log = logging.getLogger("crev.ingest.reconcile")

SLOT_S = reconcile.SLOT_S


def slot_verdict(store: Store, dev: str, slot_t0: int, params: reconcile.Params) -> reconcile.Verdict | None:
    """The verdict for one slot from the stored readings; None if no reading carries its end value."""
    readings = [
        Reading.from_cose(cose)
        for _seq, _leaf, _ms, cose in store.readings_between(dev, slot_t0 - SLOT_S, slot_t0 + 2 * SLOT_S)
    ]
    verdicts: list[reconcile.Verdict] = reconcile.reconcile_readings(readings, params)
    for verdict in verdicts:
        if verdict.slot_t0 == slot_t0:
            return verdict
    return None


def candidates(store: Store, readings: list[Reading]) -> list[tuple[str, int]]:
    """The (dev, slot) pairs these newly stored readings may decide."""
    ends: set[tuple[str, int]] = set()
    touched: set[tuple[str, int]] = set()
    for reading in readings:
        if reading.smart_meter is not None:
            ends.add((reading.dev, reading.smart_meter[1] - SLOT_S))
            touched.add((reading.dev, reconcile.slot_of(reading.t1)))
    out = [key for key in sorted(ends) if store.reconciliation_verdict(*key) in (None, reconcile.UNCHECKED)]
    for key in sorted(touched - ends):
        if store.reconciliation_verdict(*key) == reconcile.UNCHECKED:
            out.append(key)
    return out


def reconcile_stored(
    store: Store, readings: list[Reading], params: reconcile.Params, now_ms: int
) -> list[reconcile.Verdict]:
    """Reconcile what ``readings`` (just committed) complete, in one transaction; the verdicts written."""
    if not any(r.smart_meter is not None for r in readings):
        return []  # devices without a smart meter cost nothing
    written = []
    with store.transaction():
        for dev, slot_t0 in candidates(store, readings):
            verdict = slot_verdict(store, dev, slot_t0, params)
            if verdict is None or not store.record_reconciliation(dev, verdict, now_ms):
                continue
            written.append(verdict)
            if verdict.verdict == reconcile.SMART_METER_MISMATCH:
                store.alarm(now_ms, reconcile.SMART_METER_MISMATCH, dev, "slot %d: %s" % (slot_t0, verdict.detail))
                log.warning("%s slot %d: SMART_METER_MISMATCH: %s", dev, slot_t0, verdict.detail)
    return written
