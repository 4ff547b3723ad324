"""The market's sequencer for controllers' sell orders (SPEC §9, the controller as bidder).

ingest keeps each controller's sell it received over MQTT, verified as the
device's, in ``order_inbox``. ``take_controller_orders`` places them in the
order ingest received them, through the same ``Market.place`` as the CLI's
and the API's orders, so all three interleave in the one ledger sequence.

A controller sells the lots of a slot it has just closed, which the registry
issues only once a later reading is sealed. An order whose slot is not
issued yet therefore waits, and later orders of the same device wait behind
it, so a device's orders keep their order. It is refused (and its reason
recorded in the inbox) when the site does not let its controller sell, the
price is below the floor, the slot gave nothing to sell, or it has waited
longer than ``max_wait_s``. Marking the inbox row commits in the order's own
transaction, so a SIGKILL never places an order twice.
"""

import logging
from dataclasses import dataclass, field

from crev_market import Refused
from crev_market.market import Market

log = logging.getLogger("crev.market")
DEFAULT_MAX_WAIT_S = 86_400


@dataclass
class Taken:
    placed: list[tuple[str, int]] = field(default_factory=list)  # (dev, order id)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (dev, reason, detail)
    waiting: int = 0


def take_controller_orders(market: Market, now_ms: int, max_wait_s: int = DEFAULT_MAX_WAIT_S) -> Taken:
    store = market.store
    taken = Taken()
    with store.transaction():
        waiting = store.waiting_inbox_orders()
    blocked: set[str] = set()
    for inbox_id, received_ms, dev, data in waiting:
        if dev in blocked:
            taken.waiting += 1
            continue

        def mark(order_leaf: int, inbox_id: int = inbox_id) -> None:
            store.settle_inbox_order(inbox_id, "placed", order_leaf, None, None)

        try:
            placed = market.place(data, now_ms, on_placed=mark)
        except Refused as refusal:
            if refusal.reason == "NOT_ISSUED_YET" and now_ms - received_ms < max_wait_s * 1000:
                blocked.add(dev)
                taken.waiting += 1
                continue
            reason = "WAITED_TOO_LONG" if refusal.reason == "NOT_ISSUED_YET" else refusal.reason
            with store.transaction():
                store.settle_inbox_order(inbox_id, "refused", None, reason, str(refusal))
            taken.refused.append((dev, reason, str(refusal)))
            log.warning("refused %s's controller sell: %s", dev, refusal)
            continue
        taken.placed.append((dev, placed.order))
        log.info("placed %s's controller sell as order %d: %d trades", dev, placed.order, len(placed.trades))
    return taken
