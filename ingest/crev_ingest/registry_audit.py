"""``crev audit ledger``, part two: replay the registry (SPEC §6, §8, §10).

Runs after the Merkle and block checks, over every leaf from 0 (the
registry's state is the whole history, so this part is not incremental):
the core's RegistryReplay checks each registry leaf against the state
before it, then every registry row is compared with what the leaves say,
so an edited row is caught as surely as an edited leaf.
"""

import json
from typing import Any

from crev import cbor, reconcile
from crev.ledger_format import LEAF_READING, LedgerFormatError, leaf_data
from crev.market_format import SIDE_CANCEL
from crev.reading import Reading
from crev.registry_format import LEAF_ACCOUNT, generation_entries
from crev.registry_replay import RegistryReplay, ReplayError
from crev_ingest import LedgerError
from crev_ingest.store import Store


def has_registry(store: Store) -> bool:
    row = store.db.execute("SELECT 1 FROM leaves WHERE type >= ? LIMIT 1", (LEAF_ACCOUNT,)).fetchone()
    return row is not None


def _reading_lookup(store: Store) -> Any:
    def lookup(leaf: int) -> tuple[str, int, list[Any] | None] | None:
        row = store.db.execute("SELECT type, data FROM leaves WHERE idx = ?", (leaf,)).fetchone()
        if row is None or int(row[0]) != LEAF_READING:
            return None
        decoded = cbor.loads(bytes(row[1]))
        assert isinstance(decoded, list)
        reading = Reading.from_cose(bytes(decoded[2]))
        return reading.dev, reading.t1, generation_entries(reading)

    return lookup


def _slot_readings(store: Store) -> Any:
    """For the replay's smart-meter holds: a device's readings around a slot, before a leaf."""

    def readings(dev: str, slot: int, before_leaf: int) -> list[Reading]:
        low, high = reconcile.window(slot)
        return [
            Reading.from_cose(cose)
            for _seq, leaf, _ms, cose in store.readings_between(dev, low, high)
            if leaf < before_leaf
        ]

    return readings


def replay_registry(store: Store, ledger_key: bytes, reconciliation: reconcile.Params | None = None) -> dict[str, int]:
    """Raise LedgerError at the first registry leaf or row that does not hold; return counts.

    With ``reconciliation``, issuances of slots held by a smart-meter mismatch (SPEC §13) are
    checked against the ledger's releases, the verdicts recomputed from the ledger's readings."""
    replay = RegistryReplay(ledger_key, False, reconciliation, _slot_readings(store))
    sizes = [int(r[0]) for r in store.db.execute("SELECT tree_size FROM blocks ORDER BY height")]
    block = 0
    lookup = _reading_lookup(store)
    for idx, leaf_type, data in store.db.execute("SELECT idx, type, data FROM leaves ORDER BY idx"):
        while block < len(sizes) and sizes[block] <= idx:
            replay.on_sealed(sizes[block])
            block += 1
        try:
            replay.on_leaf(idx, leaf_type, leaf_data(bytes(data)), lookup)
        except (ReplayError, LedgerFormatError) as err:
            raise LedgerError("registry: %s" % err) from err
    problem = replay.lot_conserved()
    if problem:
        raise LedgerError("registry: %s" % problem)
    _compare_rows(store, replay)
    counts: dict[str, int] = replay.counts()
    return counts


def _compare_rows(store: Store, replay: RegistryReplay) -> None:
    db = store.db
    stored = {
        int(r[0]): tuple(r[1:])
        for r in db.execute(
            "SELECT leaf_idx, site, dev, slot, supplement, owner, place, factor_mg, factor_label, readings "
            "FROM issuances"
        )
    }
    if set(stored) != set(replay.issuances):
        extra = sorted(set(stored) ^ set(replay.issuances))
        raise LedgerError("issuances row leaf %d: no such issuance leaf, or its row is missing" % extra[0])
    for leaf, issuance in replay.issuances.items():
        expected = (
            issuance.site,
            issuance.dev,
            issuance.slot,
            issuance.supplement,
            issuance.owner,
            issuance.place,
            issuance.factor_mg,
            issuance.factor_label,
            len(issuance.readings),
        )
        if stored[leaf] != expected:
            raise LedgerError("issuances row leaf %d: differs from its signed issuance" % leaf)
    lots = {
        (int(r[0]), int(r[1])): [str(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6])]
        for r in db.execute("SELECT issuance_leaf, lot_index, type, self_mwh, carry_in, grams, carry_out FROM lots")
    }
    expected_lots = {
        (leaf, index): list(lot)
        for leaf, issuance in replay.issuances.items()
        for index, lot in enumerate(issuance.lots)
    }
    if lots != expected_lots:
        wrong = sorted(k for k in set(lots) | set(expected_lots) if lots.get(k) != expected_lots.get(k))
        raise LedgerError("lots row %d.%d: differs from its signed issuance" % wrong[0])
    moves: dict[tuple[Any, ...], int] = {}
    for leaf, issuance in replay.issuances.items():
        for index, lot in enumerate(issuance.lots):
            if lot[3]:
                moves[(leaf, leaf, index, None, issuance.owner)] = lot[3]
    for leaf, retirement in replay.retirements.items():
        for issuance_leaf, index, grams in retirement.lots:
            moves[(leaf, issuance_leaf, index, retirement.account, None)] = grams
    for leaf, trade in replay.trades.items():
        for issuance_leaf, index, grams in trade.lots:
            moves[(leaf, issuance_leaf, index, trade.seller, trade.buyer)] = grams
    stored_moves = {
        tuple(r[:5]): int(r[5])
        for r in db.execute("SELECT leaf_idx, issuance_leaf, lot_index, from_account, to_account, grams FROM lot_moves")
    }
    if stored_moves != moves:
        wrong_moves = sorted(
            (k for k in set(moves) | set(stored_moves) if moves.get(k) != stored_moves.get(k)), key=lambda k: k[:3]
        )
        raise LedgerError("lot_moves row leaf %d lot %d.%d: differs from the ledger" % wrong_moves[0][:3])
    for row in db.execute("SELECT leaf_idx, account, grams, beneficiary, purpose, year FROM retirements"):
        found = replay.retirements.get(int(row[0]))
        if found is None or tuple(row[1:]) != (
            found.account,
            found.grams,
            found.beneficiary,
            found.purpose,
            found.year,
        ):
            raise LedgerError("retirements row leaf %d: differs from its signed retirement" % int(row[0]))
    if db.execute("SELECT count(*) FROM retirements").fetchone()[0] != len(replay.retirements):
        raise LedgerError("retirements: a row is missing")
    _compare_market(db, replay)
    for row in db.execute("SELECT leaf_idx, account, name, disclosed FROM account_events"):
        event = replay.accounts.get(str(row[1]))
        if event is None:
            raise LedgerError("account_events row leaf %d: no such account in the ledger" % int(row[0]))
    for dev, site, _leaf in db.execute("SELECT dev, site, leaf_idx FROM site_devices"):
        if replay.device_site.get(str(dev)) != str(site):
            raise LedgerError("site_devices row %s: not the site the ledger gives it" % dev)
    releases: dict[int, tuple[Any, ...]] = {
        leaf: (event.site, event.dev, event.slot, event.reason, event.time_s)
        for leaf, event in replay.release_events.items()
    }
    stored_releases: dict[int, tuple[Any, ...]] = {row[0]: row[1:] for row in store.releases()}
    if stored_releases != releases:
        bad = [k for k in set(releases) | set(stored_releases) if releases.get(k) != stored_releases.get(k)]
        raise LedgerError("releases row leaf %d: differs from its signed release, or is missing" % min(bad))
    for leaf, site, devices in db.execute("SELECT leaf_idx, site, devices FROM site_events"):
        if str(site) not in replay.sites or not isinstance(json.loads(devices), list):
            raise LedgerError("site_events row leaf %d: differs from the ledger" % int(leaf))


def _compare_market(db: Any, replay: RegistryReplay) -> None:
    """The orders and trades rows against their signed leaves."""
    orders = {**replay.orders, **replay.cancels}
    stored = {
        int(r[0]): tuple(r[1:]) for r in db.execute("SELECT leaf_idx, side, account, grams, price, cancels FROM orders")
    }
    expected = {
        leaf: (o.side, o.account, o.grams, o.price, o.cancels if o.side == SIDE_CANCEL else None)
        for leaf, o in orders.items()
    }
    if stored != expected:
        wrong = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        raise LedgerError("orders row leaf %d: differs from its signed order" % wrong[0])
    trades = {
        int(r[0]): tuple(r[1:])
        for r in db.execute("SELECT leaf_idx, buy, sell, grams, price, amount, buyer, seller FROM trades")
    }
    expected_trades = {
        leaf: (t.buy, t.sell, t.grams, t.price, t.amount, t.buyer, t.seller) for leaf, t in replay.trades.items()
    }
    if trades != expected_trades:
        wrong = sorted(k for k in set(trades) | set(expected_trades) if trades.get(k) != expected_trades.get(k))
        raise LedgerError("trades row leaf %d: differs from its signed trade" % wrong[0])
