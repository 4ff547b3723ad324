"""``crev market run`` (SPEC §7, §9): issuance as blocks seal, and the market's API.

One process, two threads on one store connection:

- the main thread issues every closed slot every ``[ledger] block_interval_s``
  seconds (``Registry.issue``), so C-REV appears as ingest seals the blocks
  that close its slots, and logs what it issued; then it places the
  controllers' sell orders ingest received (``crev_market.controllers``);
- uvicorn serves the API (``crev_market.api``) on ``[market] listen`` from
  its own thread. Matching happens as each signed order arrives.

A lock serialises the two. SIGTERM or SIGINT stops both cleanly: the
current pass or request finishes, its transaction commits, then the store
closes. A bad configuration or a port already in use is one line, exit 2,
before anything runs.
"""

import logging
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from crev.registry_format import format_kg
from crev_ingest import ConfigError, IngestError
from crev_ingest import config as ingest_config
from crev_ingest.keyfile import load_key
from crev_ingest.ledger import Ledger
from crev_ingest.store import Store
from crev_market import Refused
from crev_market.controllers import take_controller_orders
from crev_market.market import Market
from crev_market.registry import Registry

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("crev.market")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP, and without it
    # the body of each answer waits for the client's delayed ACK of its headers (40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            "[market] listen %s:%d: cannot listen there (%s); stop what uses the port or choose another"
            % (host, port, err.strerror or err)
        ) from err
    sock.setblocking(False)
    return sock


class MarketService:
    def __init__(self, config: ingest_config.IngestConfig) -> None:
        self.config = config
        key = load_key(config.ledger_key_path)
        if config.storage_url is None and not config.storage_path.exists():
            raise Refused(
                "no ledger at %s (storage.path in %s); run `crev ingest run` first" % (config.storage_path, config.path)
            )
        host, port = config.market_listen
        self.sock = _bind(host, port)
        self.store = Store(config.store_location)
        ledger = Ledger(self.store, key, config.origin, config.block_interval_s, config.block_max_leaves)
        factor_mg = round(config.default_g_per_kwh * 1000)
        self.registry = Registry(
            self.store,
            ledger,
            factor_mg,
            config.default_factor_label,
            config.reconciliation,
            config.reconciliation_wait_s,
        )
        self.market = Market(self.registry)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server: uvicorn.Server | None = None

    def issue_once(self) -> None:
        with self.lock:
            summary = self.registry.issue(int(time.time() * 1000))
        if summary.issuances:
            log.info(
                "issued %d slots from %d readings: %s kg-CO2",
                summary.issuances,
                summary.readings,
                format_kg(summary.grams),
            )
        for dev in sorted(set(summary.held)):
            log.warning("held: %s has a reading whose meter type does not fit its site; fix the site's --type", dev)
        with self.lock:
            take_controller_orders(self.market, int(time.time() * 1000))

    def start_api(self) -> threading.Thread:
        import uvicorn

        from crev_market.api import create_app

        app = create_app(self.registry, self.lock, self.market)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="market-api")
        thread.start()
        host, port = self.config.market_listen
        deadline = time.monotonic() + 10
        while not self.server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.server.should_exit = True
            thread.join(5)
            raise ConfigError("the market API did not start on %s:%d" % (host, port))
        log.info("market API on http://%s:%d/api/v1/ (OpenAPI at /api/v1/openapi.json)", host, port)
        return thread

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        thread = self.start_api()
        try:
            while not self.stopping.is_set():
                try:
                    self.issue_once()
                except (IngestError, Refused) as err:
                    log.error("issuance pass failed: %s; trying again next block", err)
                except Exception:  # a locked or broken store: keep serving, try again next block
                    log.exception("issuance pass failed; trying again next block")
                self.stopping.wait(self.config.block_interval_s)
                if not thread.is_alive():
                    log.error("the market API stopped; stopping")
                    break
        finally:
            assert self.server is not None
            self.server.should_exit = True
            thread.join(15)
            with self.lock:
                self.store.close()
            self.sock.close()
        log.info("market service stopped")


def run(config_path: Path) -> int:
    config = ingest_config.load(config_path)
    service = MarketService(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()
    return 0
