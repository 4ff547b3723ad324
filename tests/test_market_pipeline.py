"""SPEC §9 on real components: a controller's, the CLI's and the API's orders in one ledger sequence.

Simulated SDM630 meters -> a real `crev gateway run` that sells its site's slots
(`[market] sell = true`) on a simulated clock -> a real mosquitto -> a real
`crev ingest run` (readings and the controller's orders) -> a real
`crev market run`, which issues, places the controller's orders and serves
the API. While the controller sells, one buyer bids through `crev market
order` and another through the HTTP API. Every order and trade lands in the
one ledger, interleaved, and the audit's replay agrees with what was recorded.
"""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Mosquitto,
    Service,
    free_port,
    gateway_config,
    ingest_config,
    init_gateway,
    port_open,
    run_crev,
    sim_config,
    wait_for,
)
from market_support import replay_market

from crev import cbor
from crev.keyfile import load_key
from crev.market_format import SIDE_BUY, Order
from crev.registry_format import LEAF_ORDER
from crev_ingest.database import connect
from crev_market.market import new_nonce, sign_order

DEVICE = "dgc-seller-0001"
OWNER, SITE, PLACE = "koriyama-pv", "koriyama-pv-site", "Japan/Fukushima/Koriyama"
FLOOR, PRICE = "10.00", "12.50"
SPEED = 1800  # a 30-minute slot a wall second
INTERVAL_S = 300


def checked(workdir: Path, *args: str) -> str:
    done = run_crev(workdir, *args)
    assert done.returncode == 0, "crev %s: %s%s" % (" ".join(args[:3]), done.stdout, done.stderr)
    return done.stdout


def account(workdir: Path, config: str, name: str) -> Path:
    pubkey = checked(workdir, "registry", "keygen", "--out", "%s.key" % name).split()[1]
    checked(
        workdir, "registry", "account", "add", "--config", config, "--account", name, "--name", name, "--pubkey", pubkey
    )
    return workdir / ("%s.key" % name)


def _rows(location: str, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    db = connect(location, read_only=True)
    try:
        return [tuple(r) for r in db.execute(query, params)]
    finally:
        db.close()


def controller_orders_with_slots(location: str) -> list[tuple[int, str, str | None, int]]:
    """(inbox id, state, reason, slot) of every controller order ingest kept."""
    rows = _rows(location, "SELECT id, state, reason, data FROM order_inbox ORDER BY id")
    return [(int(r[0]), str(r[1]), r[2], int(Order.parse(bytes(r[3]), None).slot or 0)) for r in rows]


def solar_grams(location: str, slot: int) -> int:
    """The grams of C-REV issued in solar lots for ``slot``, supplements included."""
    query = (
        "SELECT coalesce(sum(l.grams), 0) FROM lots l JOIN issuances i ON i.leaf_idx = l.issuance_leaf "
        "WHERE i.slot = ? AND l.type LIKE ?"
    )
    return int(_rows(location, query, (slot, "%solar%"))[0][0])


def placed_controller_orders(location: str) -> list[int]:
    query = "SELECT order_leaf FROM order_inbox WHERE state = 'placed' ORDER BY order_leaf"
    return [int(r[0]) for r in _rows(location, query)]


def post(port: int, signed: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        "http://127.0.0.1:%d/api/v1/orders" % port, signed, {"Content-Type": "application/cose"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())


@pytest.mark.slow
def test_controller_cli_and_api_orders_interleave_in_one_sequence(
    tmp_path: Path, broker: Mosquitto, store_url: str | None
) -> None:
    market_port = free_port()
    location = store_url or str(tmp_path / "crev.sqlite")
    config_path = ingest_config(tmp_path, broker.url, store_url=store_url)
    config_path.write_text(config_path.read_text() + '\n[market]\nlisten = "127.0.0.1:%d"\n' % market_port)
    config = str(config_path)
    initialised = checked(tmp_path, "ingest", "init", "--config", config)
    ledger_pubkey = bytes.fromhex(
        next(line.split()[1] for line in initialised.splitlines() if line.startswith("pubkey"))
    )
    pv, grid = free_port(), free_port()
    sim = sim_config(
        tmp_path,
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\nserial = 640001\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\nserial = 640002\n' % (pv, grid),
        SPEED,
    )
    epoch = (int(time.time()) - 86400) // 1800 * 1800 + 8 * 3600  # yesterday, from a sunny hour
    gateway = gateway_config(
        tmp_path,
        DEVICE,
        broker.url,
        '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "solar"\ncounter = "export"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\n'
        "max_power_w = 1e8\n" % (pv, grid),
        interval_s=INTERVAL_S,
        extra='[simulation]\nepoch = %d\nspeed = %d\n\n[market]\nsell = true\nowner = "%s"\nsite = "%s"\n'
        'place = "%s"\ntypes = ["solar"]\nprice = "%s"\n' % (epoch, SPEED, OWNER, SITE, PLACE, PRICE),
    )
    pubkey = init_gateway(tmp_path, gateway).hex()
    checked(tmp_path, "ingest", "enroll", "--config", config, "--device", DEVICE, "--pubkey", pubkey)
    account(tmp_path, config, OWNER)
    checked(
        tmp_path,
        *("registry", "site", "add", "--config", config, "--site", SITE, "--owner", OWNER, "--place", PLACE),
        *("--device", DEVICE, "--controller-sells-at", FLOOR),
    )
    account(tmp_path, config, "buyer-cli")
    api_key = load_key(account(tmp_path, config, "buyer-api"), "account")

    services = [Service("sim", ["sim", "meters", "--config", str(sim)], tmp_path).start()]
    try:
        wait_for(lambda: port_open(pv) and port_open(grid), 20, "the simulated meters")
        ingest = Service("ingest", ["ingest", "run", "--config", config], tmp_path).start()
        services.append(ingest)
        wait_for(lambda: "subscribed" in ingest.log(), 30, "ingest to subscribe")
        market = Service("market", ["market", "run", "--config", config], tmp_path).start()
        services.append(market)
        wait_for(lambda: port_open(market_port) or not market.alive(), 30, "crev market run")
        assert market.alive(), market.log()
        seller = Service("gateway", ["gateway", "run", "--config", str(gateway)], tmp_path).start()
        services.append(seller)
        wait_for(lambda: len(placed_controller_orders(location)) >= 2, 60, "two controller sells on the book")

        # A buyer bids with the CLI, while the controller goes on selling.
        bought = json.loads(
            checked(
                tmp_path,
                *("market", "order", "--config", config, "--account", "buyer-cli", "--key", "buyer-cli.key"),
                *("--buy", "--place", "Japan/Fukushima", "--kg", "0.010", "--price", "20", "--json"),
            )
        )
        cli_order = int(bought["order"])
        assert bought["fills"], "the controller's resting sells fill the CLI's buy"
        wait_for(
            lambda: any(leaf > cli_order for leaf in placed_controller_orders(location)),
            60,
            "a controller sell after the CLI's buy",
        )
        # Another bids through the API.
        fields = Order.to_map(SIDE_BUY, "buyer-api", int(time.time()), new_nonce(), 1_000_000, 1500, types=["solar"])
        status, answer = post(market_port, sign_order(fields, api_key))
        assert status == 200, answer
        api_order = int(answer["order"])  # type: ignore[call-overload]
        wait_for(
            lambda: any(leaf > api_order for leaf in placed_controller_orders(location)),
            60,
            "a controller sell after the API's buy",
        )
        assert seller.stop() == 0, seller.log()
        time.sleep(3)  # a pass of the market service over what the last readings issued
        for service in reversed(services[1:]):
            assert service.stop() == 0, service.log()
    finally:
        for service in services:
            service.stop()

    controller = placed_controller_orders(location)
    # One sequence: controller orders before, between and after the CLI's and the API's.
    assert controller[0] < cli_order < api_order < controller[-1]
    assert any(cli_order < leaf < api_order for leaf in controller) or controller[0] < cli_order
    # A controller sells every slot its own readings had self-consumption in; a slot whose lot came to
    # 0 g (the few seconds of the first slot after start-up, carried over to the next) has nothing to sell.
    for _id, state, reason, slot in controller_orders_with_slots(location):
        if state == "refused":
            assert reason == "NOTHING_TO_SELL" and solar_grams(location, slot) == 0, (slot, reason)
    signed_by = {}
    for idx, data in _rows(location, "SELECT idx, data FROM leaves WHERE type = ?", (LEAF_ORDER,)):
        leaf = cbor.loads(bytes(data))
        assert isinstance(leaf, list)
        order = Order.parse(bytes(leaf[2]), None)
        signed_by[int(idx)] = "controller" if order.by_controller else order.account
    trades = _rows(location, "SELECT buyer, seller, buy, sell FROM trades ORDER BY leaf_idx")
    assert {signed_by[leaf] for leaf in controller} == {"controller"}
    assert (signed_by[cli_order], signed_by[api_order]) == ("buyer-cli", "buyer-api")
    buyers = {t[0] for t in trades}
    assert buyers == {"buyer-cli", "buyer-api"} and {t[1] for t in trades} == {OWNER}
    assert all(signed_by[t[3]] == "controller" for t in trades)
    # The ledger alone gives the same book as the market recorded, and the full audit replays it all.
    replayed = replay_market(location, ledger_pubkey)
    assert [t[:2] for t in replayed.trades] == [(t[2], t[3]) for t in trades]
    audit = checked(tmp_path, "audit", "ledger", "--config", config)
    assert "OK" in audit, audit
