"""Orders per second end to end through the market's HTTP API (`make bench`).

A real uvicorn server on loopback serves the market API over a real SQLite
ledger. Each request POSTs one pre-signed order; the server checks its
signature, gives it its place in the ledger, matches it, commits and seals.
The baseline is the same request, over the same connection kind, to a route
of the same shape that returns at once, measured in the same run.
"""

import http.client
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from registry_bench import FACTOR_MG, LEDGER_KEY, ORIGIN, OWNER, OWNER_KEY, PLACE, START, build_ledger

from crev.keys import SigningKey
from crev.market_format import SIDE_BUY, SIDE_SELL, Order
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store
from crev_market.api import create_app
from crev_market.market import new_nonce, sign_order
from crev_market.registry import Registry

BUYER = "bench-buyer"
BUYER_KEY = SigningKey(bytes([77]) * 32)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(app: FastAPI) -> tuple[uvicorn.Server, int]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the benchmark's server did not start")
        time.sleep(0.05)
    return server, port


def _post_all(port: int, path: str, bodies: list[bytes]) -> float:
    """Seconds to POST every body in turn over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    for body in bodies:
        connection.request("POST", path, body, {"Content-Type": "application/cose"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit("the benchmark's order was refused: %d" % response.status)
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def _orders(count: int) -> list[bytes]:
    """Alternating sells (owner) and buys (buyer) that cross: every buy fills one sell of 1 g."""
    signed = []
    for i in range(count):
        if i % 2 == 0:
            fields = Order.to_map(SIDE_SELL, OWNER, START, new_nonce(), 1, 1500, PLACE, "solar")
            signed.append(sign_order(fields, OWNER_KEY))
        else:
            fields = Order.to_map(SIDE_BUY, BUYER, START, new_nonce(), 1, 2000, places=["Japan"])
            signed.append(sign_order(fields, BUYER_KEY))
    return signed


def report(orders: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="crev-market-bench-") as tmp:
        path = Path(tmp) / "crev.sqlite"
        build_ledger(path, 2, 100)
        store = Store(path)
        ledger = Ledger(store, LEDGER_KEY, ORIGIN, 3600, 1000)
        registry = Registry(store, ledger, FACTOR_MG, "bench factor")
        now_ms = int(time.time() * 1000)
        registry.issue(now_ms)
        registry.add_account(BUYER, "Bench buyer", BUYER_KEY.public_key, True, now_ms)
        market_server, market_port = _serve(create_app(registry))

        echo = FastAPI()

        @echo.post("/api/v1/orders")
        async def returns_at_once(request: Request) -> dict[str, int]:
            await request.body()
            return {"order": 0}

        echo_server, echo_port = _serve(echo)
        market_s: list[float] = []
        echo_s: list[float] = []
        try:
            for _ in range(rounds):
                bodies = _orders(orders)
                echo_s.append(_post_all(echo_port, "/api/v1/orders", bodies))
                market_s.append(_post_all(market_port, "/api/v1/orders", bodies))
        finally:
            market_server.should_exit = True
            echo_server.should_exit = True
            time.sleep(0.3)
            store.close()
    market_rate = orders / statistics.median(market_s)
    echo_rate = orders / statistics.median(echo_s)
    print("== market API: %d signed orders per round (half of them fill), %d rounds ==" % (orders, rounds))
    print("%-52s %12s %8s" % ("setup", "orders/s", "ratio"))
    print("%-52s %12.0f %7.2fx" % ("the same POST to a route that returns at once", echo_rate, 1.0))
    print(
        "%-52s %12.0f %7.2fx"
        % ("POST /api/v1/orders: signature, ledger, matching, commit", market_rate, market_rate / echo_rate)
    )


if __name__ == "__main__":
    report(400, 3)
