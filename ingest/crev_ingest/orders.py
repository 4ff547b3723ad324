"""Controllers' sell orders over MQTT (SPEC §9, the controller as bidder).

A controller publishes its signed sell on ``crev/v1/{dev}/order``. ingest
checks only what makes it the device's: a COSE_Sign1 controller's sell,
signed by the enrolled, unrevoked key of the device the topic names. Then it
keeps the order in ``order_inbox``, in the same transaction as the batch, so
the PUBACK leaves only once it is durable. Whether the site lets its
controller sell, at what floor, and what the owner holds are the market's
to decide, when its sequencer takes the order: ingest does not import the
market. Anything else is quarantined with its reason, like a reading.
"""

import hashlib

from crev.keys import key_id
from crev.ledger_format import ACTION_ENROL
from crev.market_format import Order
from crev.reading import valid_device_id
from crev.registry_format import RegistryFormatError
from crev_ingest.store import Store
from crev_ingest.validate import MAX_MESSAGE, Rejected


def order_topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["crev", "v1"] and parts[3] == "order" and valid_device_id(parts[2]):
        return parts[2]
    return None


def is_order_topic(topic: str) -> bool:
    return topic.endswith("/order")


def check_order(store: Store, topic: str, payload: bytes) -> str:
    """The device whose controller's sell this is; raises Rejected with a reason code."""
    dev = order_topic_device(topic)
    if dev is None:
        raise Rejected("BAD_TOPIC", "an order's topic is crev/v1/{device id}/order, not %s" % topic)
    if len(payload) > MAX_MESSAGE:
        raise Rejected("MALFORMED", "an order of %d bytes is larger than %d" % (len(payload), MAX_MESSAGE))
    try:
        order = Order.parse(payload, None)
    except RegistryFormatError as err:
        raise Rejected("BAD_SCHEMA", err.detail) from err
    if not order.by_controller:
        raise Rejected("NOT_A_CONTROLLER_ORDER", "only a controller's sell (with a slot, no grams) comes over MQTT")
    events = store.key_events_for_kid(order.kid)
    if not events:
        raise Rejected("UNKNOWN_KEY", "key %s is not enrolled" % order.kid.hex())
    action, key_dev, pubkey, when = events[-1]
    if action != ACTION_ENROL and order.time_s >= when:
        raise Rejected("REVOKED_KEY", "device %s's key was revoked at %d, before this order" % (key_dev, when))
    if key_id(pubkey) != order.kid:
        raise Rejected("UNKNOWN_KEY", "key %s does not match its enrolment" % order.kid.hex())
    try:
        Order.parse(payload, pubkey)
    except RegistryFormatError as err:
        raise Rejected("BAD_SIGNATURE", err.detail) from err
    if key_dev != dev:
        raise Rejected("DEVICE_MISMATCH", "the topic names %s, the key is %s's" % (dev, key_dev))
    return dev


def store_order(store: Store, topic: str, payload: bytes, received_ms: int) -> str:
    """Check and keep one order message inside the caller's transaction; return accepted, duplicate or quarantined."""
    try:
        dev = check_order(store, topic, payload)
    except Rejected as rejected:
        store.quarantine(received_ms, topic, rejected.reason, rejected.detail, payload)
        return "quarantined"
    fresh = store.add_inbox_order(received_ms, dev, payload, hashlib.sha256(payload).digest())
    return "accepted" if fresh else "duplicate"
