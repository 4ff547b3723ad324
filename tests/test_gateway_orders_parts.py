"""The controller's sells piece by piece: [market] configuration, the outbox's slot closing, PUBACK routing.

The whole gateway is exercised in test_gateway_orders.py; these pin down
what is hard to provoke there: a failure in the middle of closing a slot,
a second signature for a (slot, type), and PUBACKs of readings and orders
that share ids.
"""

import queue
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Mosquitto, crev_command, free_port, wait_for

from crev.keys import SigningKey
from crev.market_format import Order
from crev_gateway import config as gateway_config
from crev_gateway._backends.mqtt import ReadingPublisher
from crev_gateway.config import MarketConfig
from crev_gateway.metrics import GatewayMetrics
from crev_gateway.orders import SlotSeller, self_by_source
from crev_gateway.outbox import Outbox

DEVICE = "dgc-parts-0001"
BASE = """
[device]
id = "dgc-parts-0001"
key = "device.key"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[meter]]
name = "pv"
profile = "sdm630"
url = "tcp://127.0.0.1:%d"
role = "generation"
source = "solar"
[[meter]]
name = "turbine"
profile = "sdm630"
url = "tcp://127.0.0.1:%d"
role = "generation"
source = "wind"
"""
MARKET = """
[market]
sell = true
owner = "osaka-home"
site = "osaka-home"
place = "Japan/Osaka/Suita"
price = "30.00"
expires = "7d"
"""


class PowerCut(Exception):
    pass


def parse(text: str) -> gateway_config.GatewayConfig:
    return gateway_config.parse(tomllib.loads(text), Path("gw.toml"))


def test_market_settings_and_their_defaults() -> None:
    base = BASE % (1, 2)
    assert parse(base).market is None, "no [market]: no orders"
    assert parse(base + MARKET.replace("sell = true", "sell = false")).market is None
    market = parse(base + MARKET).market
    assert market == MarketConfig(
        owner="osaka-home",
        site="osaka-home",
        place="Japan/Osaka/Suita",
        types=("solar", "wind"),  # the sources of the generation meters, in their order
        price=3000,
        expires_s=7 * 86400,
    )
    chosen = parse(base + MARKET.replace('price = "30.00"', 'price = "12.5"\ntypes = ["wind/small"]')).market
    assert chosen is not None and chosen.types == ("wind/small",) and chosen.price == 1250
    for text, seconds in (('"12h"', 43200), ('"30m"', 1800), ('"2w"', 14 * 86400), ("3600", 3600)):
        lasting = parse(base + MARKET.replace('expires = "7d"', "expires = " + text)).market
        assert lasting is not None and lasting.expires_s == seconds
    forever = parse(base + MARKET.replace('expires = "7d"\n', "")).market
    assert forever is not None and forever.expires_s is None
    assert (m := parse(base + MARKET.replace('"30.00"', "30")).market) is not None and m.price == 3000


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("sell = true", 'sell = "yes"'), "[market] sell must be true or false"),
        (lambda t: t.replace('owner = "osaka-home"', 'owner = "Osaka Home"'), "[market] owner 'Osaka Home' is not"),
        (lambda t: t.replace('site = "osaka-home"\n', ""), "[market] site is missing"),
        (lambda t: t.replace('place = "Japan/Osaka/Suita"', 'place = "Japan//Suita"'), "[market] place is not"),
        (lambda t: t + 'types = ["hydro"]\n', "[market] types has 'hydro', which is not under the source"),
        (lambda t: t + 'types = "solar"\n', "[market] types must be a list"),
        (lambda t: t + 'types = ["solar", "solar"]\n', "[market] types lists 'solar' twice"),
        (lambda t: t.replace('"30.00"', '"30.001"'), "[market] price '30.001' has more than 2 decimals"),
        (lambda t: t.replace('"30.00"', "30.5"), "[market] price is missing or not in quotes"),
        (lambda t: t.replace('"30.00"', '"0"'), "[market] price must be more than zero"),
        (lambda t: t.replace('price = "30.00"\n', ""), "[market] price is missing"),
        (lambda t: t.replace('"7d"', '"7 days"'), "[market] expires must be a duration"),
        (lambda t: t.replace('"7d"', '"10s"'), "[market] expires must be between 1 minute"),
        (lambda t: t.replace("price =", "prize ="), "[market] prize is not a setting"),
    ],
)
def test_a_bad_market_setting_is_one_line_naming_it(
    tmp_path: Path, change: Callable[[str], str], expected: str
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(change(BASE % (free_port(), free_port()) + MARKET))
    done = subprocess.run(
        crev_command("gateway", "run", "--config", str(config)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("crev: gw.toml: ") and expected in lines[0], lines[0]


def _commit_readings(outbox: Outbox, key: SigningKey, t1s: list[int], gen_mwh: list[int]) -> None:
    """Readings of one solar meter and a grid meter that exports nothing, committed as the gateway does."""
    head = outbox.head()
    for t1, counter in zip(t1s, gen_mwh, strict=True):
        channels = [(0, "PV1", 1, counter), (1, "GRID", 0, 0), (2, "GRID", 0, 0)]
        reading = head.next_reading(DEVICE, t1, 1, channels, "t/1", t0=t1 - 600)
        cose = reading.sign(key)
        outbox.commit(reading.seq, t1, cose, self_by_source(reading))
        head = head.advance(reading, cose)


def _seller(outbox: Outbox, key: SigningKey, now: float) -> SlotSeller:
    market = MarketConfig("osaka-home", "osaka-home", "Japan/Osaka/Suita", ("solar",), 3000, None)
    return SlotSeller(market, key, outbox, lambda: now, GatewayMetrics(), DEVICE)


def test_closing_a_slot_is_all_or_nothing_and_happens_once(tmp_path: Path) -> None:
    key = SigningKey(bytes(range(32)))
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, DEVICE, key.kid)
    slot = 1_790_001_000  # a multiple of 1800
    # Baseline, then 5 Wh and 0 Wh of self-consumption in slot, then a reading of the next slot closes it.
    _commit_readings(outbox, key, [slot + 600, slot + 1200, slot + 1800, slot + 2400], [1000, 6000, 6000, 6000])
    assert outbox.slots_before(slot + 1800) == [slot]
    seller = _seller(outbox, key, slot + 2400)

    def crash_after_signing(s: int, sums: dict[int, int]) -> list[tuple[str, int, bytes]]:
        seller.sign(s, sums)
        raise PowerCut

    with pytest.raises(PowerCut):
        outbox.close_slot(slot, crash_after_signing)
    assert outbox.order_depth() == 0 and outbox.last_closed_slot() is None
    assert outbox.slots_before(slot + 1800) == [slot], "the slot is still to be closed"

    def twice(s: int, sums: dict[int, int]) -> list[tuple[str, int, bytes]]:
        return seller.sign(s, sums) * 2

    with pytest.raises(sqlite3.IntegrityError):
        outbox.close_slot(slot, twice)
    assert outbox.order_depth() == 0, "a second signature for one (slot, type) is refused with the first"

    assert seller.close_through(slot + 2400) == 1
    assert seller.close_through(slot + 2400) == 0
    assert outbox.last_closed_slot() == slot and outbox.slots_before(slot + 3600) == [slot + 1800]
    assert outbox.close_slot(slot, twice) == [], "a closed slot is never closed again"
    [(order_id, cose)] = outbox.orders_after(0, 10)
    order = Order.parse(cose, key.public_key)
    assert (order.slot, order.type, order.time_s, order.grams) == (slot, "solar", slot + 2400, 0)
    outbox.close()

    reopened = Outbox(path, DEVICE, key.kid)
    assert reopened.last_closed_slot() == slot and reopened.orders_after(0, 10) == [(order_id, cose)]
    reopened.acknowledge_orders([order_id])
    assert reopened.order_depth() == 0
    # The next slot has readings, none with self-consumption: it closes without an order.
    _commit_readings(reopened, key, [slot + 3000, slot + 4200], [6000, 6000])
    assert _seller(reopened, key, slot + 4200).close_through(slot + 4200) == 0
    assert reopened.last_closed_slot() == slot + 1800
    reopened.close()


def test_pubacks_of_readings_and_orders_go_to_their_own_queues(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    mqtt_config = parse((BASE % (1, 2)).replace("mqtt://127.0.0.1:1", broker.url)).mqtt
    reading_acks: queue.Queue[int] = queue.Queue()
    order_acks: queue.Queue[int] = queue.Queue()
    publisher = ReadingPublisher(mqtt_config, DEVICE, reading_acks, order_acks)
    publisher.start()
    try:
        wait_for(publisher.connected.is_set, 10, "the publisher to connect")
        for ident in (5, 6, 7):
            publisher.publish(ident, b"reading %d" % ident)
            publisher.publish_order(ident, b"order %d" % ident)
        publisher.publish_order(8, b"order 8")
        wait_for(lambda: reading_acks.qsize() >= 3 and order_acks.qsize() >= 4, 10, "the PUBACKs")
        time.sleep(0.3)  # nothing more may arrive
        got_readings = [reading_acks.get() for _ in range(reading_acks.qsize())]
        got_orders = [order_acks.get() for _ in range(order_acks.qsize())]
        assert sorted(got_readings) == [5, 6, 7]
        assert sorted(got_orders) == [5, 6, 7, 8]
    finally:
        publisher.stop()
        broker.stop()
