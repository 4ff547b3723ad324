"""``crev audit trace``: the trace bundle of one retirement (SPEC §10; layout in ``crev.trace``).

It reads one snapshot of the store (a single read transaction), proves
every entry and reading against the latest sealed block, and writes the
file aside, fsynced, then renamed, as the evidence export does.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from crev import cbor, merkle, trace
from crev.keys import key_id
from crev.market_format import Order, Trade
from crev.registry_format import LEAF_TRADE, Issuance, Retirement
from crev_ingest.export import written_aside
from crev_ingest.store import Store
from crev_ingest.witnessing import cosigned_checkpoint
from crev_market import Refused


@dataclass
class TraceSummary:
    path: Path
    grams: int
    issuances: int
    readings: int
    entries: int
    bytes: int


def _data(leaf: bytes) -> tuple[int, int, bytes]:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list) and len(decoded) == 3
    return int(decoded[0]), int(decoded[1]), bytes(decoded[2])


def export_trace(
    store: Store, retirement_id: int, out: Path, origin: str, ledger_public_key: bytes, now_ms: int
) -> TraceSummary:
    store.begin_snapshot()  # one snapshot, while ingest and the market write on
    try:
        return _export(store, retirement_id, out, origin, ledger_public_key, now_ms)
    finally:
        store.db.execute("COMMIT")


def _export(
    store: Store, retirement_id: int, out: Path, origin: str, ledger_public_key: bytes, now_ms: int
) -> TraceSummary:
    found = store.retirement(retirement_id)
    if found is None:
        raise Refused("there is no retirement %d; `crev registry retire` prints the ids" % retirement_id)
    latest = store.last_block()
    if latest is None or latest[2] <= retirement_id:
        raise Refused("retirement %d is not sealed in a block yet; trace it again shortly" % retirement_id)
    height, _hash, size = latest
    account, leaf = found
    retirement = Retirement.parse(_data(leaf)[2], None)

    issuance_leaves = sorted({lot[0] for lot in retirement.lots})
    issuances = {i: Issuance.parse(_data(store.leaf(i))[2], None) for i in issuance_leaves}
    lots = [(lot[0], lot[1]) for lot in retirement.lots]
    moves = store.lot_move_leaves(lots, retirement_id)
    accounts = {account} | {i.owner for i in issuances.values()}
    orders: set[int] = set()
    for move in moves:
        move_type, _ms, move_data = _data(store.leaf(move))
        if move_type == LEAF_TRADE:
            # A trade slots in between issuance and retirement, with the two orders behind it.
            trade = Trade.parse(move_data, None)
            accounts.update((trade.buyer, trade.seller))
            orders.update((trade.buy, trade.sell))
        else:
            accounts.add(Retirement.parse(move_data, None).account)
    sites = {i.site for i in issuances.values()}
    devices = {i.dev for i in issuances.values()}
    for order_leaf in orders:
        order = Order.parse(_data(store.leaf(order_leaf))[2], None)
        if order.by_controller:  # signed by a device: its key events and its site's rules go along
            sites.add(order.site)
            devices.update(dev for _action, dev, _key, _time in store.key_events_for_kid(order.kid))

    entry_leaves: set[int] = set(issuance_leaves) | set(moves) | orders | {retirement_id}
    for name in accounts:
        entry_leaves.update(store.account_event_leaves(name, retirement_id))
    for site in sites:
        entry_leaves.update(idx for idx, _leaf in store.site_event_leaves(site, retirement_id))
    for dev in devices:
        entry_leaves.update(idx for idx, _leaf in store.key_event_leaves(dev) if idx < size)
    reading_dev = {r: i.dev for i in issuances.values() for r in i.readings}
    reading_leaves = sorted(reading_dev, key=lambda r: (reading_dev[r], r))

    node = functools.lru_cache(maxsize=1 << 16)(store.node)
    header, _size = store.block_header(height)
    meta = {
        trace.T_ORIGIN: origin,
        trace.T_LEDGER_KID: key_id(ledger_public_key),
        trace.T_RETIREMENT: retirement_id,
        trace.T_EXPORTED: now_ms,
        trace.T_CHECKPOINT: cosigned_checkpoint(store, height),
    }
    with written_aside(out) as handle:
        handle.write(cbor.encode_head(4, 6) + cbor.dumps(trace.MAGIC) + cbor.dumps(trace.VERSION))
        handle.write(cbor.dumps(meta))
        handle.write(cbor.encode_head(4, 1) + cbor.dumps([height, header, []]))
        handle.write(cbor.encode_head(4, len(entry_leaves)))
        for idx in sorted(entry_leaves):
            leaf_type, received_ms, data = _data(store.leaf(idx))
            path = merkle.inclusion_path(idx, size, node)
            handle.write(cbor.dumps([idx, leaf_type, received_ms, data, height, path]))
        handle.write(cbor.encode_head(4, len(reading_leaves)))
        for idx in reading_leaves:
            _type, received_ms, cose = _data(store.leaf(idx))
            path = merkle.inclusion_path(idx, size, node)
            handle.write(cbor.dumps(cbor.dumps([idx, received_ms, cose, height, path])))
    return TraceSummary(
        out, retirement.grams, len(issuances), len(reading_leaves), len(entry_leaves), out.stat().st_size
    )
