"""The controller as bidder (SPEC §9): a real gateway sells its site's closed slots.

Real processes throughout: `crev sim meters` serving Modbus TCP, `crev
gateway run` with its [simulation] clock (1800 times faster, so a 30-minute
slot passes in a wall second), mosquitto from the fixture, and a paho
subscriber on crev/v1/{dev}/order. What the gateway should have sold is
worked out here from the readings it published, independently of its code.
"""

import random
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import (
    Mosquitto,
    ReadingCollector,
    Service,
    check_chain,
    free_port,
    gateway_config,
    init_gateway,
    port_open,
    wait_for,
    write_toml,
)

from crev import cbor
from crev.cose import Sign1
from crev.dgcc import ROLE_GENERATION, SOURCE_NAMES
from crev.keys import key_id
from crev.market_format import SIDE_SELL, Order
from crev.reading import Reading, verify_reading
from crev.registry_format import slot_of

DEVICE = "dgc-sell-0001"
SPEED = 1800
INTERVAL_S = 600  # three readings per slot
OWNER = "osaka-home"
SITE = "osaka-home"
PLACE = "Japan/Osaka/Suita"
PRICE = 3000  # "30.00" yen per kg-CO2
EXPIRES_S = 7 * 86400
MARKET = '[market]\nsell = true\nowner = "%s"\nsite = "%s"\nplace = "%s"\nprice = "30.00"\nexpires = "7d"\n' % (
    OWNER,
    SITE,
    PLACE,
)


class OrderCollector(ReadingCollector):
    """The readings collector, also subscribed to the devices' order topics."""

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe([("crev/v1/+/reading", 1), ("crev/v1/+/status", 1), ("crev/v1/+/order", 1)])

    def orders(self, device: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == "crev/v1/%s/order" % device]


@pytest.fixture
def make_site(tmp_path: Path, broker: Mosquitto) -> Iterator[Callable[..., "Site"]]:
    """Site(tmp_path, broker, ...) whose processes are all killed when the test ends, passed or not."""
    made: list[Site] = []

    def make(start: str, market: str, metrics_port: int = 0) -> Site:
        made.append(Site(tmp_path, broker, start, market, metrics_port))
        return made[-1]

    yield make
    for site in made:
        site.close()


@pytest.fixture
def orders_collector(broker: Mosquitto) -> Iterator[OrderCollector]:
    client = OrderCollector(broker.port, "crev-test-orders")
    yield client
    client.close()


class Site:
    """A simulated site (PV, wind and grid SDM630 meters) and its gateway's configuration."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, start: str, market: str, metrics_port: int = 0) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.services: list[Service] = []  # everything started, so a failing test leaves no process behind
        self.market = market
        self.metrics = '[metrics]\nlisten = "127.0.0.1:%d"\n\n' % metrics_port if metrics_port else ""
        ports = [free_port() for _ in range(3)]
        self.ports = ports
        self.meters = (
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
            'source = "solar"\ncounter = "export"\nmax_power_w = 1e9\n\n'
            '[[meter]]\nname = "wind"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
            'source = "wind"\ncounter = "export"\nmax_power_w = 1e9\n\n'
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\n'
            "max_power_w = 1e9\n" % tuple(ports)
        )
        sim = write_toml(
            tmp_path / "sim.toml",
            # update_s = 0: the registers are always current, however fast the gateway reads.
            "update_s = 0\ntimeout_sleep_s = 5\n\n[site]\nseed = 11\nspeed = %d\ntick_s = 60\n"
            'start = "2026-06-21T%s:00+09:00"\npv_peak_w = 5000\nwind_peak_w = 2000\nload_avg_w = 700\n\n'
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\nregister = "export"\n'
            "serial = 630101\n\n"
            '[[meter]]\nname = "wind"\nprofile = "sdm630"\nport = %d\nmeasures = "wind"\nregister = "export"\n'
            "serial = 630102\n\n"
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\nserial = 630103\n'
            % (SPEED, start, ports[0], ports[1], ports[2]),
        )
        self.sim = Service("sim", ["sim", "meters", "--config", str(sim)], tmp_path).start()
        self.services.append(self.sim)
        try:
            wait_for(lambda: all(port_open(p) for p in ports), 20, "the simulated meters")
            # Slot-aligned and in the past, like the demo's clock: no timestamp lies ahead of the real one.
            self.config = self.write_config((int(time.time()) - 2 * 86400) // 1800 * 1800)
            self.public_key = init_gateway(tmp_path, self.config)
        except BaseException:
            self.close()
            raise
        self.outbox = tmp_path / ("%s-outbox.sqlite" % DEVICE)

    def write_config(self, epoch: int) -> Path:
        simulation = "[simulation]\nepoch = %d\nspeed = %d\n\n" % (epoch, SPEED)
        return gateway_config(
            self.tmp_path,
            DEVICE,
            self.broker.url,
            self.meters,
            interval_s=INTERVAL_S,
            extra=simulation + self.metrics + self.market,
        )

    def gateway(self) -> Service:
        service = Service("gateway", ["gateway", "run", "--config", str(self.config)], self.tmp_path).start()
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            service.kill()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if not self.outbox.exists():
            return []
        try:
            with sqlite3.connect(self.outbox, timeout=10) as db:
                return list(db.execute(sql))
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):  # the gateway is still creating its outbox
                return []
            raise

    def signed_keys(self) -> set[tuple[int, str]]:
        return {(int(s), str(t)) for s, t in self.query("SELECT slot, type_path FROM order_signed")}

    def pending_keys(self) -> set[tuple[int, str]]:
        return {(int(s), str(t)) for s, t in self.query("SELECT slot, type_path FROM order_pending")}

    def wait_for_new_order(self, before: int, unsent: bool = False) -> None:
        """Until the gateway signed an order beyond the first ``before`` (and, with ``unsent``, one waits unsent)."""
        wait_for(
            lambda: len(self.signed_keys()) > before and (not unsent or self.pending_orders() > 0),
            30,
            "an order signed in this run",
        )

    def pending_orders(self) -> int:
        rows = self.query("SELECT count(*) FROM order_pending")
        return int(rows[0][0]) if rows else 0

    def last_t1(self) -> int:
        return Reading.from_cose(bytes(self.query("SELECT last_cose FROM chain")[0][0])).t1


def slot_self(readings: list[Reading]) -> dict[int, dict[str, int]]:
    """Per slot (by each reading's t1), self-consumption per source name, from the signed readings."""
    sums: dict[int, dict[str, int]] = {}
    for reading in readings:
        per_source = sums.setdefault(slot_of(reading.t1), {})
        sources = {c[1]: SOURCE_NAMES[c[2]] for c in reading.channels if c[0] == ROLE_GENERATION}
        for meter_id, self_j in reading.generator_self or []:
            per_source[sources[meter_id]] = per_source.get(sources[meter_id], 0) + self_j
    return sums


def expected_orders(readings: list[Reading], types: tuple[str, ...]) -> set[tuple[int, str]]:
    """(slot, type) of every closed slot whose type's source had self-consumption."""
    if not readings:
        return set()
    open_slot = slot_of(max(r.t1 for r in readings))
    return {
        (slot, type_path)
        for slot, per_source in slot_self(readings).items()
        for type_path in types
        if slot < open_slot and per_source.get(type_path.split("/")[0], 0) > 0
    }


def parse_orders(payloads: list[bytes], public_key: bytes) -> list[Order]:
    """Parse and verify every order; checks everything the configuration fixes."""
    orders = []
    for raw in payloads:
        order = Order.parse(raw, public_key)  # raises unless the device key signed it
        fields = cbor.loads(Sign1.from_bytes(raw).payload)
        assert isinstance(fields, dict)
        assert 3 not in fields, "a controller's sell names no grams"
        assert order.side == SIDE_SELL and order.by_controller
        assert order.kid == key_id(public_key)
        assert (order.account, order.site, order.place, order.price) == (OWNER, SITE, PLACE, PRICE)
        assert order.slot is not None and order.slot % 1800 == 0 and fields[17] == order.slot
        assert order.expires == order.time_s + EXPIRES_S
        # Signed by the gateway's (simulated) clock once the slot had closed, not by the wall clock.
        assert order.slot + 1800 < order.time_s <= order.slot + 1800 + 3 * INTERVAL_S, (order.slot, order.time_s)
        orders.append(order)
    return orders


def distinct_per_key(payloads: list[bytes]) -> Counter[tuple[int, str]]:
    """How many different signed orders each (slot, type) got: more than one is a double signature."""
    keys = Counter[tuple[int, str]]()
    for raw in set(payloads):
        order = Order.parse(raw, None)
        assert order.slot is not None
        keys[(order.slot, order.type)] += 1
    return keys


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("metric %s not exported" % name)


def readings_of(collector: OrderCollector, public_key: bytes) -> list[Reading]:
    payloads = collector.payloads(DEVICE)
    for raw in payloads:
        verify_reading(raw, public_key)
    return check_chain(payloads)


@pytest.mark.slow
def test_sells_each_closed_slot_with_self_consumption_once_per_type(
    broker: Mosquitto, orders_collector: OrderCollector, make_site: Callable[..., Site]
) -> None:
    metrics_port = free_port()
    # The afternoon into the night: PV fades out, wind goes on, so some slots have no solar lot to sell.
    site = make_site("16:00", MARKET, metrics_port)  # no types: the meters' sources
    types = ("solar", "wind")
    gateway = site.gateway()
    seen: dict[str, set[tuple[int, str]]] = {}

    def enough() -> bool:
        readings = [Reading.from_cose(p) for p in orders_collector.payloads(DEVICE)]
        closed = {slot_of(r.t1) for r in readings} - {slot_of(max(r.t1 for r in readings))} if readings else set()
        received = {(o.slot, o.type) for o in (Order.parse(p, None) for p in orders_collector.orders(DEVICE))}
        expected = expected_orders(readings, types)
        seen["expected"] = expected
        return len(closed) >= 6 and expected <= received and any(t == "wind" for _, t in expected)

    try:
        wait_for(enough, 40, "orders for six closed slots")
        wait_for(
            lambda: (
                metric(metrics_port, "crev_gateway_orders_pending") == 0
                and metric(metrics_port, "crev_gateway_orders_signed_total") == len(orders_collector.orders(DEVICE))
            ),
            10,
            "the order metrics to agree with what was received",
        )
    finally:
        assert gateway.stop() == 0, gateway.log()
        site.sim.stop()

    payloads = orders_collector.orders(DEVICE)
    orders = parse_orders(payloads, site.public_key)
    keys = Counter((o.slot, o.type) for o in orders)
    assert keys and max(keys.values()) == 1, "a (slot, type) was sold twice: %s" % keys
    readings = readings_of(orders_collector, site.public_key)
    sums = slot_self(readings)
    for order in orders:
        assert order.slot is not None
        assert sums[order.slot].get(order.type, 0) > 0, "slot %d had no %s self-consumption" % (order.slot, order.type)
    assert seen["expected"] <= set(keys)
    night = [s for s in sums if s in {k[0] for k in keys} and sums[s].get("solar", 0) == 0]
    assert night, "a slot without solar self-consumption got a wind order only"
    assert all((s, "solar") not in keys for s in night)
    assert {t for _, t in keys} == {"solar", "wind"}
    # The gateway ran on a moment after the check above: what it signed since may still wait in the outbox.
    assert site.signed_keys() == set(keys) | site.pending_keys(), "every order signed was delivered, and only those"
    assert gateway.log().count('"event": "order"') == len(site.signed_keys())


@pytest.mark.slow
def test_sell_false_publishes_no_orders(orders_collector: OrderCollector, make_site: Callable[..., Site]) -> None:
    site = make_site("11:00", MARKET.replace("sell = true", "sell = false"))
    gateway = site.gateway()
    try:
        wait_for(
            lambda: (
                len(expected_orders([Reading.from_cose(p) for p in orders_collector.payloads(DEVICE)], ("solar",))) >= 3
            ),
            30,
            "three closed slots with self-consumption",
        )
        time.sleep(0.5)
    finally:
        assert gateway.stop() == 0, gateway.log()
        site.sim.stop()
    assert orders_collector.orders(DEVICE) == []
    assert site.query("SELECT count(*) FROM order_signed") == [(0,)]
    assert site.query("SELECT count(*) FROM slot_self") == [(0,)]
    assert '"event": "order"' not in gateway.log()


@pytest.mark.slow
def test_an_order_committed_while_the_broker_is_down_is_sent_when_it_returns(
    broker: Mosquitto, orders_collector: OrderCollector, make_site: Callable[..., Site]
) -> None:
    site = make_site("10:00", MARKET + 'types = ["solar"]\n')
    gateway = site.gateway()
    try:
        wait_for(lambda: bool(orders_collector.orders(DEVICE)), 30, "a first order")
        broker.stop()
        before = site.signed_keys()
        wait_for(lambda: site.pending_orders() >= 2, 30, "orders committed during the outage")
        during = site.signed_keys() - before
        assert during
        broker.start()
        wait_for(orders_collector.client.is_connected, 20, "the collector to reconnect")

        def delivered() -> bool:
            received = {(o.slot, o.type) for o in (Order.parse(p, None) for p in orders_collector.orders(DEVICE))}
            return during <= received and site.pending_orders() == 0

        wait_for(delivered, 30, "the orders of the outage")
    finally:
        assert gateway.stop() == 0, gateway.log()
        site.sim.stop()
    payloads = orders_collector.orders(DEVICE)
    parse_orders(payloads, site.public_key)
    assert max(distinct_per_key(payloads).values()) == 1
    first_seen = list(dict.fromkeys(payloads))  # a PUBACK lost in the outage gets the same order resent
    slots = [int(Order.parse(p, None).slot or 0) for p in first_seen]
    assert slots == sorted(slots), "orders are sent in the order they were committed"
    assert "disconnected from the broker" in gateway.log()


@pytest.mark.slow
def test_sigkill_never_signs_a_slot_twice_and_loses_no_order(
    broker: Mosquitto, orders_collector: OrderCollector, make_site: Callable[..., Site]
) -> None:
    site = make_site("09:00", MARKET + 'types = ["solar"]\n')
    rng = random.Random(7)

    def resume_clock() -> None:
        # The demo clock starts again at its epoch in every process; a real clock runs on
        # through the downtime. Starting at the last reading's t1 is what a real one shows.
        site.config = site.write_config(site.last_t1())

    for _ in range(3):
        gateway = site.gateway()
        site.wait_for_new_order(len(site.signed_keys()))
        time.sleep(rng.uniform(0, 1.0))  # somewhere between two slots' orders
        gateway.kill()
        resume_clock()

    # Committed but never sent: the broker is down when the gateway dies.
    broker.stop()
    gateway = site.gateway()
    site.wait_for_new_order(len(site.signed_keys()), unsent=True)
    gateway.kill()
    unsent = site.pending_keys()
    assert unsent
    resume_clock()
    broker.start()
    wait_for(orders_collector.client.is_connected, 20, "the collector to reconnect")

    final = site.gateway()
    try:

        def complete() -> bool:
            received = {(o.slot, o.type) for o in (Order.parse(p, None) for p in orders_collector.orders(DEVICE))}
            readings = [Reading.from_cose(p) for p in orders_collector.payloads(DEVICE)]
            return (
                site.pending_orders() == 0
                and site.signed_keys() <= received
                and expected_orders(readings, ("solar",)) <= received
            )

        wait_for(complete, 30, "every order signed to be delivered")
    finally:
        assert final.stop() == 0, final.log()
        site.sim.stop()

    payloads = orders_collector.orders(DEVICE)
    orders = parse_orders(payloads, site.public_key)
    per_key = distinct_per_key(payloads)
    assert max(per_key.values()) == 1, "a (slot, type) was signed twice: %s" % per_key
    assert set(per_key) == site.signed_keys(), "every order signed was delivered, and only those"
    assert unsent <= set(per_key)
    sums = slot_self(readings_of(orders_collector, site.public_key))
    for order in orders:
        assert order.slot is not None
        assert sums[order.slot].get("solar", 0) > 0
    assert len(per_key) >= 4
