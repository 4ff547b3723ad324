"""SIGKILL of `crev market run` between and during orders: no order lost, no trade duplicated, the same book.

On both stores: the ledger in crev.sqlite, or in a PostgreSQL database.
"""

import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import free_port, wait_for
from ingest_support import LEDGER_KEY, NOW
from market_support import SELLER, buy_order, make_market, payload, replay_market, sell_order
from registry_support import write_ledger_key
from store_support import location, storage_toml
from trace_support import BASE, ORIGIN, PLACE, SITE

from crev import cbor
from crev.keys import SigningKey
from crev.market_format import SIDE_SELL, Order
from crev_ingest.ledger import Ledger
from crev_ingest.orders import store_order
from crev_ingest.registry_audit import replay_registry
from crev_ingest.store import Store
from crev_market.market import Market, new_nonce, sign_order
from crev_market.registry import Registry


def _spawn(directory: Path) -> subprocess.Popen[str]:
    crev = Path(sys.executable).parent / "crev"
    return subprocess.Popen(
        [str(crev), "market", "run", "--config", str(directory / "ingest.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=directory,
    )


def _placed(store: Store) -> int:
    with store.transaction():
        return int(store.db.execute("SELECT count(*) FROM order_inbox WHERE state = 'placed'").fetchone()[0])


def _start(directory: Path, port: int) -> subprocess.Popen[str]:
    crev = Path(sys.executable).parent / "crev"
    process = subprocess.Popen(
        [str(crev), "market", "run", "--config", str(directory / "ingest.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=directory,
    )

    def answers() -> bool:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/book" % port, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(lambda: answers() or process.poll() is not None, 30, "crev market run to serve")
    assert process.poll() is None, process.communicate()
    return process


def _post(port: int, signed: bytes) -> int | None:
    """The HTTP status, or None when the service died under the request."""
    request = urllib.request.Request(
        "http://127.0.0.1:%d/api/v1/orders" % port, signed, {"Content-Type": "application/cose"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def _post_into(port: int, signed: bytes, answer: list[int | None]) -> None:
    answer.append(_post(port, signed))


@pytest.mark.slow
def test_sigkill_of_the_market_service_loses_no_order_and_duplicates_no_trade(
    tmp_path: Path, store_url: str | None
) -> None:
    made = make_market(tmp_path, store_url)
    made.traced.ingest.store.close()
    write_ledger_key(tmp_path / "ledger.key")
    port = free_port()
    (tmp_path / "ingest.toml").write_text(
        '[storage]\n%s\n\n[ledger]\nkey = "ledger.key"\norigin = "%s"\nblock_interval_s = 3600\n\n'
        '[market]\nlisten = "127.0.0.1:%d"\n' % (storage_toml(store_url), ORIGIN, port)
    )
    rng = random.Random(7)
    accepted: list[bytes] = []
    unknown: list[bytes] = []  # sent when the service was killed: committed or not, never twice
    for round_ in range(6):
        process = _start(tmp_path, port)
        orders = [sell_order(20, 1500 + 10 * i) if i % 2 == 0 else buy_order(15, 1600) for i in range(8)]
        kill_at = rng.randrange(len(orders))
        for i, signed in enumerate(orders):
            if i == kill_at:
                # Kill the service while this order is in flight: it is either all there or not at all.
                answer: list[int | None] = []
                sender = threading.Thread(target=_post_into, args=(port, signed, answer))
                sender.start()
                time.sleep(rng.random() * 0.03)
                process.send_signal(signal.SIGKILL)
                sender.join(timeout=30)
                (accepted if answer == [200] else unknown).append(signed)
                break
            assert _post(port, signed) == 200, "round %d order %d" % (round_, i)
            accepted.append(signed)
        process.wait(timeout=30)
    # Every order that was answered 200 is in the ledger exactly once; the others at most once.
    replay = replay_market(location(tmp_path, store_url))
    recorded = list(replay.orders.values())
    assert len(recorded) == len({(o.account, o.nonce) for o in recorded}), "an order recorded twice"
    nonces = {o.nonce for o in recorded}
    for signed in accepted:
        assert payload(signed)[14] in nonces, "an acknowledged order was lost"
    # The trades in the ledger are exactly the ones the committed orders give, each once.
    assert [(t.buy, t.sell, t.grams, t.price) for t in replay.trade_leaves.values()] == [
        (buy, sell, grams, price) for buy, sell, grams, price, _lots in replay.trades
    ]
    # A restarted market rebuilds the same book as the replay; replaying an acknowledged order is refused.
    store = Store(location(tmp_path, store_url))
    try:
        registry = Registry(store, Ledger(store, LEDGER_KEY, ORIGIN, 3600, 1000), 423000, "default")
        assert Market(registry).book() == replay.book
    finally:
        store.close()
    process = _start(tmp_path, port)
    try:
        assert _post(port, accepted[0]) == 409
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_while_placing_controllers_orders_places_each_once(tmp_path: Path, store_url: str | None) -> None:
    """The inbox row of a controller's order settles in the order's own transaction: never placed twice."""
    made = make_market(tmp_path, store_url)
    made.traced.registry.change_site(SITE, None, None, [], {}, None, None, 2000, made.ms)
    store = made.traced.ingest.store
    write_ledger_key(tmp_path / "ledger.key")
    port = free_port()
    (tmp_path / "ingest.toml").write_text(
        '[storage]\n%s\n\n[ledger]\nkey = "ledger.key"\norigin = "%s"\nblock_interval_s = 0.05\n\n'
        '[market]\nlisten = "127.0.0.1:%d"\n' % (storage_toml(store_url), ORIGIN, port)
    )
    rng = random.Random(11)
    devices = [("dgc-a-0000", SigningKey(bytes([3]) * 32)), ("dgc-a-0001", SigningKey(bytes([4]) * 32))]
    sent = 0
    cut: list[int] = []  # orders still waiting after each kill
    for _round in range(4):
        with store.transaction():
            for _ in range(150):
                dev, key = devices[sent % 2]
                fields = Order.to_map(
                    SIDE_SELL,
                    SELLER,
                    NOW,
                    new_nonce(),
                    0,
                    2500,
                    PLACE,
                    "solar",
                    site=SITE,
                    slot=BASE + 1800 * (sent % 3),
                )
                store_order(store, "crev/v1/%s/order" % dev, sign_order(fields, key), made.ms)
                sent += 1
        placed_before = _placed(store)
        process = _spawn(tmp_path)
        wait_for(
            lambda before=placed_before, p=process: _placed(store) > before or p.poll() is not None,  # type: ignore[misc]
            30,
            "placing to begin",
        )
        time.sleep(rng.random() * 0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        cut.append(len(store.waiting_inbox_orders()))
    # Some kills fell while the service was still placing (the rest after it had placed all).
    assert any(waiting > 0 for waiting in cut), cut
    process = _start(tmp_path, port)  # a last clean run takes whatever is left
    wait_for(lambda: not store.waiting_inbox_orders(), 30, "the inbox to empty")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    rows = store.inbox_orders()
    assert len(rows) == sent and {row["state"] for row in rows} == {"placed"}, rows
    replay = replay_market(location(tmp_path, store_url))
    controller = sorted(leaf for leaf, order in replay.orders.items() if order.by_controller)
    assert controller == sorted(row["order"] for row in rows), "each inbox order placed exactly once"
    with store.transaction():
        for row in rows:
            signed = store.db.execute("SELECT data FROM order_inbox WHERE id = ?", (row["id"],)).fetchone()[0]
            assert payload(bytes(signed)) == payload(_order_data(store.leaf(row["order"])))
    replay_registry(store, LEDGER_KEY.public_key)
    store.close()


def _order_data(leaf: bytes) -> bytes:
    decoded = cbor.loads(leaf)
    assert isinstance(decoded, list)
    return bytes(decoded[2])
