"""The controller as bidder (SPEC §9): sell orders for the site's new lots, slot by slot.

A site owner who set a floor price (``crev registry site add
--controller-sells-at``) lets the site's controller sell the site's lots.
With ``[market] sell = true`` the gateway signs, with its device key, one
controller's sell (crev.market_format: no grams, key 17 = the slot) per
configured type for each 30-minute slot (S, S+1800] that closed: the slot
closes when the gateway makes its first reading with t1 > S+1800.

Only what the gateway itself signed counts: each reading's self-consumption
per source (its key 9 values, by their channel's source) is summed per slot
in the outbox as the reading commits. A type gets an order for a slot only
if its source had self-consumption there, since otherwise the slot has no
lot of that type to sell.

Orders are committed to the outbox before they are sent and leave it only
after the broker's PUBACK, like readings (see outbox.py for why a crash can
neither skip a slot nor sign a (slot, type) twice).
"""

import logging
import secrets
from collections.abc import Callable

from crev import cbor
from crev.cose import sign1
from crev.dgcc import ROLE_GENERATION, SOURCE_NAMES
from crev.keys import SigningKey
from crev.market_format import SIDE_SELL, Order
from crev.reading import Reading
from crev.registry_format import generation_entries, slot_of
from crev_gateway.config import MarketConfig
from crev_gateway.metrics import GatewayMetrics
from crev_gateway.outbox import Outbox

log = logging.getLogger("crev.gateway.orders")
NONCE_BYTES = 16


def self_by_source(reading: Reading) -> dict[int, int]:
    """A reading's self-consumption per generation source, in mWh; 0 for each source when it has no energies."""
    sums = {channel[2]: 0 for channel in reading.channels if channel[0] == ROLE_GENERATION}
    for _meter_id, source, self_j in generation_entries(reading) or ():
        sums[source] += self_j
    return sums


def source_of(type_path: str) -> int:
    """The reading source a type path lies under (its first segment; checked by the config)."""
    return SOURCE_NAMES.index(type_path.split("/")[0])


class SlotSeller:
    def __init__(
        self,
        config: MarketConfig,
        key: SigningKey,
        outbox: Outbox,
        clock: Callable[[], float],
        metrics: GatewayMetrics,
        device_id: str,
    ) -> None:
        self.config = config
        self.key = key
        self.outbox = outbox
        self.clock = clock  # the clock readings are stamped with, so orders and readings agree
        self.metrics = metrics
        self.device_id = device_id

    def sign(self, slot: int, sums: dict[int, int]) -> list[tuple[str, int, bytes]]:
        """The controller's sells of one closed slot: ``[(type path, time_s, cose)]``."""
        time_s = int(self.clock())
        expires = None if self.config.expires_s is None else time_s + self.config.expires_s
        signed = []
        for type_path in self.config.types:
            if sums.get(source_of(type_path), 0) <= 0:
                continue
            fields = Order.to_map(
                SIDE_SELL,
                account=self.config.owner,
                time_s=time_s,
                nonce=secrets.token_bytes(NONCE_BYTES),
                price=self.config.price,
                place=self.config.place,
                type_path=type_path,
                site=self.config.site,
                slot=slot,
                expires=expires,
            )
            signed.append((type_path, time_s, sign1(cbor.dumps(fields), self.key)))
        return signed

    def close_through(self, latest_t1: int) -> int:
        """Close every slot before the one that holds ``latest_t1``, oldest first; return the orders signed."""
        count = 0
        for slot in self.outbox.slots_before(slot_of(latest_t1)):
            for order_id, type_path, time_s, _cose in self.outbox.close_slot(slot, self.sign):
                count += 1
                self.metrics.orders_signed.inc()
                log.info(
                    "order %d signed: sell %s of slot %d at %d.%02d yen per kg",
                    order_id,
                    type_path,
                    slot,
                    self.config.price // 100,
                    self.config.price % 100,
                    extra={
                        "fields": {
                            "event": "order",
                            "order": order_id,
                            "device": self.device_id,
                            "site": self.config.site,
                            "slot": slot,
                            "type": type_path,
                            "price": self.config.price,
                            "time_s": time_s,
                        }
                    },
                )
        self.metrics.orders_pending.set(self.outbox.order_depth())
        return count
