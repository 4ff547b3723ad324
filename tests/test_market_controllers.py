"""SPEC §9, the controller as bidder: a site's controller sells the site's lots, signed by its device key.

The ledger is the trace recipe's (owner-1's site-1 with devices dgc-a-0000 and
dgc-a-0001, three closed slots issued) plus buyer-1. The owner lets the
controller sell by setting a floor price on the site.
"""

import dataclasses
from pathlib import Path

import pytest
from ingest_support import LEDGER_KEY, NOW, Device
from market_support import BUYER, BUYER_KEY, SELLER, TYPE, MarketLedger, cancel_order, make_market, replay_market
from trace_support import BASE, BENEFICIARY, PLACE, PURPOSE, SITE, YEAR, verify

from crev.keys import SigningKey
from crev.market_format import SIDE_SELL, Order
from crev.registry_format import slot_of
from crev_ingest import LedgerError
from crev_ingest.orders import store_order
from crev_ingest.registry_audit import replay_registry
from crev_market import Refused
from crev_market.controllers import take_controller_orders
from crev_market.market import new_nonce, sign_order
from crev_market.registry import sign_retirement
from crev_market.trace_export import export_trace

DEVICE_KEY = SigningKey(bytes([3]) * 32)  # dgc-a-0000's, in make_traced
DEVICE = "dgc-a-0000"
FLOOR = 2000  # 20.00 yen per kg


def controller_sell(
    slot: int,
    price: int = 2500,
    key: SigningKey = DEVICE_KEY,
    account: str = SELLER,
    site: str = SITE,
    place: str = PLACE,
    type_path: str = TYPE,
) -> bytes:
    fields = Order.to_map(SIDE_SELL, account, NOW, new_nonce(), 0, price, place, type_path, site=site, slot=slot)
    return sign_order(fields, key)


def allow(mkt: MarketLedger, floor: int = FLOOR) -> None:
    mkt.traced.registry.change_site(SITE, None, None, [], {}, None, None, floor, mkt.ms)


def held_of_slot(mkt: MarketLedger, account: str, site: str, slot: int) -> int:
    store = mkt.traced.ingest.store
    return sum(lot[7] for lot in store.holdings(account) if lot[2] == site and lot[6] == slot)


def issuance_sites(mkt: MarketLedger, lots: list[list[int]]) -> set[str]:
    rows = mkt.db.execute("SELECT leaf_idx, site FROM issuances").fetchall()
    by_leaf = {int(r[0]): str(r[1]) for r in rows}
    return {by_leaf[lot[0]] for lot in lots}


@pytest.fixture
def mkt(tmp_path: Path) -> MarketLedger:
    return make_market(tmp_path)


def test_a_controller_sells_what_its_owner_holds_of_the_slot_at_or_above_the_floor(mkt: MarketLedger) -> None:
    allow(mkt)
    expected = held_of_slot(mkt, SELLER, SITE, BASE)
    assert expected > 0
    placed = mkt.place(controller_sell(BASE))
    row = mkt.db.execute("SELECT account, grams, price FROM orders WHERE leaf_idx = ?", (placed.order,)).fetchone()
    assert tuple(row) == (SELLER, expected, 2500)
    assert placed.grams_left == expected
    bought = mkt.buy(expected + 500, 3000)
    trade = mkt.trade(bought.trades[0][0])
    assert (trade.sell, trade.grams, trade.price, trade.seller) == (placed.order, expected, 2500, SELLER)
    assert issuance_sites(mkt, trade.lots) == {SITE}
    # The book rebuilt from the ledger alone agrees, and so does the audit's replay.
    assert replay_market(Path(mkt.traced.ingest.store.path)).book == [
        (bought.order, "buy", BUYER, 500, 3000),
    ]
    assert mkt.market.verify_matching() == 1
    replay_registry(mkt.traced.ingest.store, LEDGER_KEY.public_key)


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        ("no permission", "NOT_ALLOWED", "does not let its controller sell"),
        ("below the floor", "NOT_ALLOWED", "below the site's floor"),
        ("another account", "NOT_ALLOWED", "belongs to owner-1"),
        ("another place", "NOT_ALLOWED", "is at Japan/Tokyo"),
        ("unknown key", "NOT_SIGNED", "no device's"),
        ("not issued yet", "NOT_ISSUED_YET", "not issued yet"),
    ],
)
def test_a_controller_sell_is_refused_whole(mkt: MarketLedger, case: str, reason: str, words: str) -> None:
    if case != "no permission":
        allow(mkt)
    order = {
        "no permission": lambda: controller_sell(BASE),
        "below the floor": lambda: controller_sell(BASE, price=FLOOR - 1),
        "another account": lambda: controller_sell(BASE, account=BUYER),
        "another place": lambda: controller_sell(BASE, place="Japan/Osaka"),
        "unknown key": lambda: controller_sell(BASE, key=SigningKey(bytes([99]) * 32)),
        "not issued yet": lambda: controller_sell(BASE + 4 * 1800),
    }[case]()
    before = mkt.counts()
    with pytest.raises(Refused) as refused:
        mkt.place(order)
    assert refused.value.reason == reason
    assert words in str(refused.value)
    assert mkt.counts() == before


def test_a_slot_already_sold_leaves_nothing_to_sell(mkt: MarketLedger) -> None:
    allow(mkt)
    grams = held_of_slot(mkt, SELLER, SITE, BASE)
    mkt.place(controller_sell(BASE))
    mkt.buy(grams, 3000)
    with pytest.raises(Refused) as refused:
        mkt.place(controller_sell(BASE))
    assert refused.value.reason == "NOTHING_TO_SELL"


def test_a_controller_never_sells_another_sites_lots(mkt: MarketLedger) -> None:
    """The owner's second site: its controller takes only its own lots, although site-1's are as old."""
    ingest, registry = mkt.traced.ingest, mkt.traced.registry
    other = Device("dgc-b-0000", SigningKey(bytes([42]) * 32), t1=BASE)
    ingest.enroll(other)
    for _ in range(100):
        assert ingest.send(other.next(gen=20_000, imp=10_000, exp=5_000)).status == "accepted"
    mkt.traced.seal()
    registry.add_site("site-2", SELLER, PLACE, [other.dev], {}, None, None, FLOOR, mkt.ms)
    registry.issue(mkt.ms)
    allow(mkt)
    # A device of site-2 cannot sell for site-1, nor can site-1's for site-2.
    for key, site in ((other.key, SITE), (DEVICE_KEY, "site-2")):
        with pytest.raises(Refused, match="is not a device of"):
            mkt.place(controller_sell(BASE, key=key, site=site))
    placed = mkt.place(controller_sell(BASE + 1800, key=other.key, site="site-2"))
    expected = held_of_slot(mkt, SELLER, "site-2", BASE + 1800)
    assert placed.grams_left == expected
    bought = mkt.buy(10_000_000, 3000)
    sold = [mkt.trade(leaf) for leaf, _execution in bought.trades]
    assert sum(t.grams for t in sold) == expected
    assert issuance_sites(mkt, [lot for t in sold for lot in t.lots]) == {"site-2"}
    # The oldest lot it took is site-2's slot BASE: oldest first within its own site.
    first = sold[0].lots[0]
    slot = mkt.db.execute("SELECT slot FROM issuances WHERE leaf_idx = ?", (first[0],)).fetchone()[0]
    assert slot == BASE
    replay_registry(ingest.store, LEDGER_KEY.public_key)


def test_the_audit_catches_a_controller_sell_the_market_should_have_refused(mkt: MarketLedger) -> None:
    allow(mkt)
    mkt.record_order_unmatched(controller_sell(BASE, price=FLOOR - 1))
    with pytest.raises(LedgerError, match="below the site's floor"):
        replay_registry(mkt.traced.ingest.store, LEDGER_KEY.public_key)


def test_the_audit_catches_a_sell_signed_by_a_key_no_device_has(mkt: MarketLedger) -> None:
    allow(mkt)
    mkt.record_order_unmatched(controller_sell(BASE, key=SigningKey(bytes([98]) * 32)))
    with pytest.raises(LedgerError, match="which no device has"):
        replay_registry(mkt.traced.ingest.store, LEDGER_KEY.public_key)


def test_a_retirement_of_grams_a_controller_sold_traces_offline(mkt: MarketLedger, tmp_path: Path) -> None:
    allow(mkt)
    grams = held_of_slot(mkt, SELLER, SITE, BASE)
    mkt.place(controller_sell(BASE))
    mkt.buy(grams, 3000)
    registry, store = mkt.traced.registry, mkt.traced.ingest.store
    with store.transaction():
        mkt.traced.ingest.ledger.sync()
        prepared = registry.prepare_retirement(BUYER, grams, BENEFICIARY, PURPOSE, YEAR, mkt.ms)
        retirement = registry.retire(sign_retirement(prepared, BUYER_KEY), mkt.ms)
    out = tmp_path / "trace.cbor"
    export_trace(store, retirement, out, "crev.test/ledger", LEDGER_KEY.public_key, mkt.ms)
    result = verify(out.read_bytes())
    assert result.failure_count == 0, [f.describe() for f in result.failures]
    assert result.trace is not None and result.trace["grams"] == grams


def test_ingest_keeps_controllers_orders_and_the_sequencer_places_them_in_order(mkt: MarketLedger) -> None:
    """Over MQTT a controller's order waits in ingest's inbox until its slot is issued; then it is placed."""
    allow(mkt)
    store = mkt.traced.ingest.store
    topic = "crev/v1/%s/order" % DEVICE
    waiting = controller_sell(BASE + 4 * 1800)  # not issued: it waits, and the next one of this device with it
    ready = controller_sell(BASE)
    forged = controller_sell(BASE, key=SigningKey(bytes([99]) * 32))
    below = controller_sell(BASE + 1800, key=SigningKey(bytes([4]) * 32), price=FLOOR - 1)  # dgc-a-0001's
    with store.transaction():
        outcomes = [
            store_order(store, topic, waiting, mkt.ms),
            store_order(store, topic, ready, mkt.ms),
            store_order(store, topic, ready, mkt.ms),
            store_order(store, topic, forged, mkt.ms),
            store_order(store, "crev/v1/dgc-a-0000/order", below, mkt.ms),  # signed by the other device
            store_order(store, "crev/v1/dgc-a-0001/order", below, mkt.ms),
        ]
    assert outcomes == ["accepted", "accepted", "duplicate", "quarantined", "quarantined", "accepted"]
    assert store.quarantine_counts() == {"UNKNOWN_KEY": 1, "DEVICE_MISMATCH": 1}
    taken = take_controller_orders(mkt.market, mkt.ms)
    assert taken.placed == [] and taken.waiting == 2
    assert taken.refused == [("dgc-a-0001", "NOT_ALLOWED", taken.refused[0][2])]
    # An account's order comes in between; then the slot is issued and the two are placed, in order.
    account_order = mkt.buy(10, 3000).order
    device = mkt.traced.devices[0]
    ingestor = mkt.traced.ingest.ingestor
    ingestor.config = dataclasses.replace(ingestor.config, max_future_s=86_400)  # readings past NOW close the slot
    for _ in range(90):
        for dev in mkt.traced.devices:
            assert mkt.traced.ingest.send(dev.next()).status == "accepted"
    mkt.traced.seal()
    mkt.traced.registry.issue(mkt.ms)
    assert slot_of(device.t1) > BASE + 5 * 1800
    taken = take_controller_orders(mkt.market, mkt.ms)
    assert [dev for dev, _order in taken.placed] == [DEVICE, DEVICE]
    first, second = (order for _dev, order in taken.placed)
    assert account_order < first < second
    rows = [tuple(r) for r in store.db.execute("SELECT state, order_leaf, reason FROM order_inbox ORDER BY id")]
    assert rows == [("placed", first, None), ("placed", second, None), ("refused", None, "NOT_ALLOWED")]
    # Taken once, never again: the rows are settled in the orders' own transactions.
    assert take_controller_orders(mkt.market, mkt.ms).placed == []
    traded = [int(r[0]) for r in store.db.execute("SELECT leaf_idx FROM trades")]
    assert traded, "the first controller sell meets the resting buy"
    trade = mkt.trade(traded[0])
    assert (trade.buy, trade.sell, trade.grams, trade.price) == (account_order, first, 10, 3000)
    replay_registry(store, LEDGER_KEY.public_key)


def test_an_order_that_waits_too_long_is_refused_with_its_reason(mkt: MarketLedger) -> None:
    allow(mkt)
    store = mkt.traced.ingest.store
    with store.transaction():
        store_order(store, "crev/v1/%s/order" % DEVICE, controller_sell(BASE + 40 * 1800), mkt.ms)
    assert take_controller_orders(mkt.market, mkt.ms, max_wait_s=60).waiting == 1
    taken = take_controller_orders(mkt.market, mkt.ms + 61_000, max_wait_s=60)
    assert [r[1] for r in taken.refused] == ["WAITED_TOO_LONG"]
    assert store.inbox_orders()[0]["state"] == "refused"


def test_the_owner_withdraws_the_permission_and_cancels_what_rests(mkt: MarketLedger) -> None:
    allow(mkt)
    resting = mkt.place(controller_sell(BASE)).order
    mkt.traced.registry.change_site(SITE, None, None, [], {}, None, None, 0, mkt.ms)  # --controller-sells-at off
    with pytest.raises(Refused, match="does not let its controller sell"):
        mkt.place(controller_sell(BASE + 1800))
    mkt.place(cancel_order(resting))  # the owner's own key cancels the controller's order
    assert mkt.market.book() == []
    replay_registry(mkt.traced.ingest.store, LEDGER_KEY.public_key)
