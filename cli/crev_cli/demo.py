"""``crev demo``: the whole pipeline on one machine, on simulated meters.

A broker (mosquitto if installed, else the embedded amqtt), ingest, and for
each of three sites a simulated SDM630 pair and a gateway. Time runs
accelerated (a simulated day in about two minutes). A live table shows each
site's self-consumption, demand, renewable ratio, CO2 avoided and counts;
halfway, the demo sends a forged and an unknown-key reading to show the
quarantine. It ends with a summary, the result of `crev audit ledger`, and one site's
evidence bundle exported and verified offline (`crev audit export|verify`).

The ledger store is SQLite (``--store sqlite``, a file in the work directory)
or PostgreSQL (``--store postgres``): the database CREV_DEMO_POSTGRES_URL
names, else a server the demo starts in its work directory and stops at the
end (crev_cli.local_postgres). Everything the demo reads of the ledger goes
through crev_ingest.database, so both stores show the same.
"""

import argparse
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live
from rich.table import Table

from crev.keys import SigningKey
from crev.ledger_format import leaf_data
from crev.reading import ChainHead
from crev_cli import UsageError
from crev_cli.local_postgres import LocalPostgres
from crev_ingest import StoreUnavailable
from crev_ingest.database import Database, connect, is_postgres_url, redacted


@dataclass
class Site:
    device: str
    name: str
    pv_peak_w: int
    load_avg_w: int
    seed: int


SITES = [
    Site("dgc-demo-tokyo-0001", "Tokyo 3 kW", 3000, 450, 11),
    Site("dgc-demo-osaka-0002", "Osaka 6 kW", 6000, 700, 22),
    Site("dgc-demo-sapporo-0003", "Sapporo 10 kW", 10000, 900, 33),
]
G_PER_KWH = 423
# The gateways sign with a simulated clock that runs as fast as the simulators,
# so a simulated day has a day of timestamps and 48 slots to issue.
SIM_INTERVAL_S = 300
OWNERS = ("tokyo-home", "osaka-office", "sapporo-wind")
PLACES = ("Japan/Tokyo/Nerima", "Japan/Osaka/Kita", "Japan/Hokkaido/Sapporo")
RETIRE_KG = "0.5"
# Osaka's and Sapporo's owners let their controllers sell each slot's C-REV at a floor price;
# one buyer wants Osaka's C-REV, the other only Sapporo's seller.
CONTROLLER_SELLS = {"osaka-office": "12.50", "sapporo-wind": "15.00"}
BUYERS = (
    ("city-office", "Nerima city office", ("--place", "Japan/Osaka"), "0.8", "20"),
    ("green-fund", "Green Fund K.K.", ("--seller", "sapporo-wind"), "0.6", "18"),
)


def sim_epoch() -> int:
    """Yesterday, slot-aligned: the simulated day ends before now, so no timestamp lies ahead."""
    return (int(time.time()) - 86400 - 3600) // 1800 * 1800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise UsageError("%s did not start listening on port %d" % (what, port))


class Processes:
    """Child processes with logs in the work directory; all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / (name + ".log")).open("ab")
        process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.workdir)
        self.running.append((name, process))
        return process

    def crev(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "crev_cli.main", *args])

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for _name, process in reversed(self.running):
            self.stop(process, timeout=10)


def run_crev(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "crev_cli.main", *args], capture_output=True, text=True, cwd=workdir, check=False
    )
    if done.returncode != 0:
        raise UsageError("`crev %s` failed: %s" % (" ".join(args[:2]), done.stderr.strip() or done.stdout.strip()))
    return done.stdout


def start_broker(processes: Processes, choice: str) -> tuple[int, bool]:
    """Start a broker; return (port, whether it speaks MQTT v5)."""
    port = _free_port()
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if choice == "mosquitto" and mosquitto is None:
        raise UsageError("mosquitto is not installed (apt-get install mosquitto), or use --broker embedded")
    workdir = processes.workdir
    if mosquitto and choice in ("auto", "mosquitto"):
        data = workdir / "mosquitto-data"
        data.mkdir(exist_ok=True)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            "user %s\nlistener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n"
            "max_queued_messages 0\nmax_queued_bytes 0\n" % (getpass.getuser(), port, data)
        )
        processes.start("mosquitto", [mosquitto, "-c", str(conf)])
        _wait_port(port, 15, "mosquitto")
        return port, True
    conf = workdir / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n" % port
    )
    amqtt = Path(sys.executable).with_name("amqtt")
    processes.start("amqtt", [str(amqtt) if amqtt.exists() else "amqtt", "-c", str(conf)])
    _wait_port(port, 30, "the embedded amqtt broker")
    return port, False


@dataclass
class WebPorts:
    dashboard: int
    market: int
    token: str

    def announce(self, console: Console) -> None:
        console.print("dashboard: http://127.0.0.1:%d/  (login token: %s)" % (self.dashboard, self.token))
        console.print(
            "market:    http://127.0.0.1:%d/  (the book, trades and receipts; API under /api/v1)" % self.market
        )


ENV_URL = "CREV_DEMO_POSTGRES_URL"
DATABASE = "crev_demo"


@dataclass
class DemoStore:
    """The demo's ledger store: where it is, how ingest.toml names it, and the server to stop, if any."""

    location: Path | str  # what crev_ingest.database.connect takes
    toml: str  # the [storage] table of ingest.toml
    label: str  # for the summary; never a password
    server: LocalPostgres | None = None

    def start(self, console: Console) -> None:
        """Make the store ready: start the demo's own server and create its database, or check the given one."""
        if self.server is not None:
            self.server.start()
            self.server.create_database(DATABASE)
            if self.server.note:
                console.print("PostgreSQL: %s" % self.server.note)
        elif isinstance(self.location, str):
            db = open_ledger(self.location)
            try:
                # A ledger there has another ledger key: the demo would fail its audit, or worse, add to it.
                if db.has_table("leaves"):
                    raise UsageError("%s names a database that already holds a ledger; give an empty one" % ENV_URL)
            finally:
                db.close()
        console.print("ledger store: %s" % self.label)

    def stop(self, console: Console) -> None:
        if self.server is not None and not self.server.stop():
            console.print("PostgreSQL did not stop; stop it with: pg_ctl -D %s -m fast stop" % self.server.data)


def choose_store(workdir: Path, kind: str) -> DemoStore:
    """The store for ``--store``; nothing is started yet."""
    if kind == "sqlite":
        path = workdir / "crev.sqlite"
        return DemoStore(path, '[storage]\npath = "crev.sqlite"\n', "SQLite, %s" % path)
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        if not is_postgres_url(url):
            raise UsageError("%s must be a postgresql:// URL, got %r" % (ENV_URL, url))
        return DemoStore(url, storage_toml(workdir, url), "PostgreSQL, %s (from %s)" % (redacted(url), ENV_URL))
    server = LocalPostgres.create(workdir)
    url = server.url(DATABASE)
    return DemoStore(
        url,
        storage_toml(workdir, url),
        "PostgreSQL, database %s on the demo's own server in %s (stopped at the end, data kept)"
        % (DATABASE, server.root),
        server,
    )


def storage_toml(workdir: Path, url: str) -> str:
    """[storage] url, with a password in a 0600 password_file rather than in ingest.toml."""
    parts = urlsplit(url)
    if parts.password is None:
        return "[storage]\nurl = %s\n" % json.dumps(url)
    password = workdir / "postgres.password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(unquote(parts.password) + "\n")
    userinfo, host = parts.netloc.rsplit("@", 1)
    bare = urlunsplit((parts.scheme, "%s@%s" % (userinfo.split(":", 1)[0], host), parts.path, parts.query, ""))
    return '[storage]\nurl = %s\npassword_file = "postgres.password"\n' % json.dumps(bare)


def open_ledger(location: Path | str) -> Database:
    """A read-only connection to the demo's ledger, on either store; a UsageError if it cannot be opened."""
    try:
        return connect(location, read_only=True)
    except StoreUnavailable as err:
        raise UsageError(str(err)) from None
    except sqlite3.Error as err:  # read-only SQLite: the file is missing or unreadable
        raise UsageError("cannot open %s: %s" % (location, err)) from None


def query(location: Path | str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one read of the ledger; the store's errors as one line, not a traceback."""
    db = open_ledger(location)
    try:
        return db.execute(sql, params).fetchall()
    except db.errors as err:
        raise UsageError("reading the ledger store %s: %s" % (db.label, err)) from None
    finally:
        db.close()


def write_configs(
    workdir: Path, broker_port: int, v5: bool, speed: float, web: WebPorts, storage: str
) -> list[tuple[Site, Path, Path, list[int]]]:
    (workdir / "dashboard.token").write_text(web.token + "\n")
    os.chmod(workdir / "dashboard.token", 0o600)
    (workdir / "ingest.toml").write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:%d"\nprotocol = "%s"\nclient_id = "crev-demo-ingest"\n\n'
        '%s\n[ledger]\nkey = "ledger.key"\norigin = "crev.demo/ledger"\n'
        "block_interval_s = 5\nblock_max_leaves = 1000\n\n[emission]\ndefault_g_per_kwh = %d\n\n"
        '[dashboard]\nlisten = "127.0.0.1:%d"\ntoken_file = "dashboard.token"\n\n[market]\nlisten = "127.0.0.1:%d"\n'
        % (broker_port, "5" if v5 else "3.1.1", storage, G_PER_KWH, web.dashboard, web.market)
    )
    sites = []
    for site in SITES:
        pv_port, grid_port = _free_port(), _free_port()
        sim = workdir / ("%s-sim.toml" % site.device)
        sim.write_text(
            "update_s = 1.0\nupdate_phase_s = 0.5\n\n[site]\nseed = %d\nspeed = %g\ntick_s = 60\n"
            'start = "2026-06-21T00:00:00+09:00"\npv_peak_w = %d\nload_avg_w = %d\n\n'
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nport = %d\nmeasures = "pv"\nserial = %d\n\n'
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nport = %d\nmeasures = "grid"\nserial = %d\n'
            % (
                site.seed,
                speed,
                site.pv_peak_w,
                site.load_avg_w,
                pv_port,
                630000 + site.seed,
                grid_port,
                631000 + site.seed,
            )
        )
        # The accelerated clock makes a site look `speed` times more powerful.
        rating = max(site.pv_peak_w, site.load_avg_w * 4) * speed * 2
        gateway = workdir / ("%s.toml" % site.device)
        owner, place = OWNERS[SITES.index(site)], PLACES[SITES.index(site)]
        selling = (
            '\n[market]\nsell = true\nowner = "%s"\nsite = "%s-site"\nplace = "%s"\ntypes = ["solar"]\nprice = "%s"\n'
            % (owner, owner, place, CONTROLLER_SELLS[owner])
            if owner in CONTROLLER_SELLS
            else ""
        )
        gateway.write_text(
            '[device]\nid = "%s"\nkey = "%s.key"\ninterval_s = %d\nclock = "synchronised"\n\n'
            "[simulation]\nepoch = %d\nspeed = %g\n\n"
            '[mqtt]\nurl = "mqtt://127.0.0.1:%d"\nkeepalive_s = 10\n\n[outbox]\npath = "%s-outbox.sqlite"\n\n'
            '[[meter]]\nname = "pv"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
            'source = "solar"\ncounter = "export"\nmax_power_w = %d\n\n'
            '[[meter]]\nname = "grid"\nprofile = "sdm630"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\n'
            "max_power_w = %d\n"
            % (
                site.device,
                site.device,
                SIM_INTERVAL_S,
                sim_epoch(),
                speed,
                broker_port,
                site.device,
                pv_port,
                rating,
                grid_port,
                rating,
            )
            + selling
        )
        sites.append((site, sim, gateway, [pv_port, grid_port]))
    return sites


LIVE_TABLES = ("readings", "series", "quarantine", "leaves", "blocks")


def site_totals(location: Path | str) -> tuple[dict[str, dict[str, float]], dict[str, int], int, int]:
    """Per device: readings, self, demand, generation, CO2; quarantine by reason; ledger size and height.

    For the live table: a store not there yet, busy or unreachable shows as empty rather than
    ending the demo. Sums are converted, as PostgreSQL sums integers to Decimal.
    """
    totals: dict[str, dict[str, float]] = {}
    quarantine: dict[str, int] = {}
    if isinstance(location, Path) and not location.exists():
        return totals, quarantine, 0, -1
    try:
        db = open_ledger(location)
    except UsageError:
        return totals, quarantine, 0, -1
    try:
        if not all(db.has_table(name) for name in LIVE_TABLES):  # ingest has not created its tables yet
            return totals, quarantine, 0, -1
        for dev, count in db.execute("SELECT dev, count(*) FROM readings GROUP BY dev"):
            totals[str(dev)] = {"readings": int(count), "self": 0, "demand": 0, "gen": 0, "co2": 0}
        for dev, self_mwh, demand, gen, co2 in db.execute(
            "SELECT dev, sum(self_mwh), sum(demand_mwh), sum(gen_mwh), sum(co2_g) FROM series GROUP BY dev"
        ):
            totals.setdefault(str(dev), {"readings": 0})
            totals[str(dev)].update(
                self=float(self_mwh or 0), demand=float(demand or 0), gen=float(gen or 0), co2=float(co2 or 0)
            )
        quarantine = {str(r): int(n) for r, n in db.execute("SELECT reason, count(*) FROM quarantine GROUP BY reason")}
        size = int(db.execute("SELECT count(*) FROM leaves").fetchone()[0])
        height = int(db.execute("SELECT coalesce(max(height), -1) FROM blocks").fetchone()[0])
    except db.errors:  # locked, or the server went away: the next refresh tries again
        return {}, {}, 0, -1
    finally:
        db.close()
    return totals, quarantine, size, height


def render(location: Path | str, elapsed: float, duration: float, speed: float) -> Table:
    totals, quarantine, size, height = site_totals(location)
    simulated_h = min(elapsed, duration) * speed / 3600
    table = Table(
        title="crev demo: simulated %02d:%02d of 24:00, ledger %d leaves, block height %d"
        % (int(simulated_h) % 25, int(simulated_h % 1 * 60), size, height)
    )
    for column in ("site", "readings", "self kWh", "demand kWh", "renewable", "CO2 avoided kg"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site in SITES:
        t = totals.get(site.device, {})
        demand = t.get("demand", 0)
        ratio = "%.0f %%" % (100 * t.get("self", 0) / demand) if demand else "-"
        table.add_row(
            site.name,
            "%d" % t.get("readings", 0),
            "%.2f" % (t.get("self", 0) / 1e6),
            "%.2f" % (demand / 1e6),
            ratio,
            "%.2f" % (t.get("co2", 0) / 1000),
        )
    table.caption = "quarantined: %s" % (", ".join("%s %d" % kv for kv in sorted(quarantine.items())) or "none")
    return table


def inject_hostile(broker_port: int, location: Path | str) -> None:
    """Send a forged copy of a stored reading and one from an unknown key."""
    # The latest stored reading: leaf order (SQLite's rowid is not there on PostgreSQL).
    rows = query(
        location,
        "SELECT r.dev, l.data FROM readings r JOIN leaves l ON l.idx = r.leaf_idx ORDER BY r.leaf_idx DESC LIMIT 1",
    )
    if not rows:
        return
    dev, cose = str(rows[0][0]), bytearray(leaf_data(bytes(rows[0][1])))
    cose[-5] ^= 0xFF  # a changed signature byte
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-demo-intruder")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    client.publish("crev/v1/%s/reading" % dev, bytes(cose), qos=1).wait_for_publish(5)
    stranger = SigningKey(os.urandom(32))
    reading = ChainHead().next_reading(
        dev, int(time.time()), 1, [(0, "X-1", 1, 5)], "intruder/1", t0=int(time.time()) - 60
    )
    client.publish("crev/v1/%s/reading" % dev, reading.sign(stranger), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def export_and_verify_bundle(console: Console, workdir: Path, location: Path | str, device: str) -> bool:
    """What an auditor gets: one site's evidence bundle, verified offline."""
    first, last = query(location, "SELECT min(t0), max(t1) FROM readings WHERE dev = ?", (device,))[0]
    if first is None:
        console.print("crev audit export: %s stored no readings" % device)
        return False
    bundle = "%s.bundle" % device
    exported = run_crev(
        workdir,
        *("audit", "export", "--config", "ingest.toml", "--device", device),
        *("--from", str(int(first)), "--to", str(int(last) + 1), "--out", bundle),
    )
    console.print("crev audit export: %s" % exported.splitlines()[0])
    verified = subprocess.run(
        [sys.executable, "-m", "crev_cli.main", "audit", "verify", bundle, "--ledger-key", "ledger.pub"],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    result = verified.stdout.strip().splitlines()[-1] if verified.stdout.strip() else verified.stderr.strip()
    console.print("crev audit verify %s --ledger-key ledger.pub: %s" % (bundle, result))
    return verified.returncode == 0


def register_sites(workdir: Path) -> None:
    """Owners' accounts and their sites, before the day starts, so C-REV is issued as blocks seal."""
    for site, owner, place in zip(SITES, OWNERS, PLACES, strict=True):
        pubkey = run_crev(workdir, "registry", "keygen", "--out", "%s.key" % owner).split()[1]
        run_crev(
            workdir,
            *("registry", "account", "add", "--config", "ingest.toml", "--account", owner),
            *("--name", site.name + " owner", "--pubkey", pubkey),
        )
        floor = ("--controller-sells-at", CONTROLLER_SELLS[owner]) if owner in CONTROLLER_SELLS else ()
        run_crev(
            workdir,
            *("registry", "site", "add", "--config", "ingest.toml", "--site", owner + "-site"),
            *("--owner", owner, "--place", place, "--device", site.device, *floor),
        )


def issue_and_retire(console: Console, workdir: Path, location: Path | str) -> int | None:
    """The registry's and market's part: what is left is issued, owners sell, buyers trade, one buyer retires."""
    console.print("crev registry issue: %s" % run_crev(workdir, "registry", "issue", "--config", "ingest.toml").strip())
    time.sleep(6)  # a pass of `crev market run`: it places the controllers' sells of the slots just issued
    slots, grams = query(
        location,
        "SELECT count(DISTINCT i.leaf_idx), coalesce(sum(l.grams), 0) FROM issuances i "
        "JOIN lots l ON l.issuance_leaf = i.leaf_idx",
    )[0]
    console.print(
        "C-REV issued in all: %d slots, %.3f kg-CO2 (most of it by `crev market run` as blocks sealed)"
        % (int(slots), int(grams) / 1000)
    )
    for owner in OWNERS:
        held = json.loads(
            run_crev(workdir, "registry", "holdings", "--config", "ingest.toml", "--account", owner, "--json")
        )
        console.print("  %-14s holds %8.3f kg-CO2 in %d lots" % (owner, held["grams"] / 1000, len(held["lots"])))
    trade(console, workdir, location)
    buyer = BUYERS[0][0]
    retired = subprocess.run(
        [
            *(sys.executable, "-m", "crev_cli.main", "registry", "retire", "--config", "ingest.toml"),
            *("--account", buyer, "--key", "%s.key" % buyer, "--kg", RETIRE_KG, "--json"),
            *("--beneficiary", "Nerima Elementary School", "--purpose", "FY2026 school CO2 report"),
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    if retired.returncode != 0:
        console.print("crev registry retire: %s" % retired.stderr.strip())
        return None
    result = json.loads(retired.stdout)
    console.print(
        "crev registry retire: %s retired %s kg-CO2 for %s: retirement %d"
        % (buyer, RETIRE_KG, result["beneficiary"], result["retirement"])
    )
    return int(result["retirement"])


def trade(console: Console, workdir: Path, location: Path | str) -> None:
    """Two controllers have offered their sites' C-REV slot by slot; two buyers bid with conditions."""
    for owner in CONTROLLER_SELLS:
        placed, refused, grams = query(
            location,
            "SELECT count(*) FILTER (WHERE i.state = 'placed'), count(*) FILTER (WHERE i.state = 'refused'), "
            "coalesce(sum(o.grams), 0) FROM order_inbox i LEFT JOIN orders o ON o.leaf_idx = i.order_leaf "
            "WHERE i.dev = ?",
            (SITES[OWNERS.index(owner)].device,),
        )[0]
        console.print(
            "controller of %s: %d sell orders placed (%.3f kg-CO2 at %s yen/kg), %d refused"
            % (owner, int(placed), int(grams) / 1000, CONTROLLER_SELLS[owner], int(refused))
        )
    for buyer, name, condition, kg, price in BUYERS:
        pubkey = run_crev(workdir, "registry", "keygen", "--out", "%s.key" % buyer).split()[1]
        run_crev(
            workdir,
            *("registry", "account", "add", "--config", "ingest.toml", "--account", buyer),
            *("--name", name, "--pubkey", pubkey),
        )
        placed = json.loads(
            run_crev(
                workdir,
                *("market", "order", "--config", "ingest.toml", "--account", buyer, "--key", "%s.key" % buyer),
                *("--buy", *condition, "--kg", kg, "--price", price, "--json"),
            )
        )
        filled = sum(fill["grams"] for fill in placed["fills"])
        console.print(
            "crev market order: %s buys %s kg-CO2 (%s) at up to %s yen/kg: %d trades, %.3f kg filled"
            % (buyer, kg, " ".join(condition), price, len(placed["fills"]), filled / 1000)
        )


def trace_and_verify(console: Console, workdir: Path, retirement: int) -> bool:
    """What a buyer's auditor gets: the retirement traced to the meters, verified offline."""
    bundle = "retirement-%d.trace" % retirement
    exported = run_crev(
        workdir, "audit", "trace", "--config", "ingest.toml", "--retirement", str(retirement), "--out", bundle
    )
    console.print("crev audit trace: %s" % exported.splitlines()[0])
    verified = subprocess.run(
        [sys.executable, "-m", "crev_cli.main", "audit", "verify", bundle, "--ledger-key", "ledger.pub"],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    console.print(verified.stdout.rstrip() or verified.stderr.strip(), markup=False, highlight=False)
    return verified.returncode == 0


def keep_running(console: Console, processes: "Processes", web: WebPorts, market: "subprocess.Popen[bytes]") -> None:
    """--keep: the dashboard (inside ingest) and the market stay up for a newcomer to look around."""
    processes.crev("ingest", "ingest", "run", "--config", "ingest.toml")
    _wait_port(web.dashboard, 20, "the dashboard")
    if market.poll() is not None:
        processes.crev("market", "market", "run", "--config", "ingest.toml")
        _wait_port(web.market, 20, "the market")
    web.announce(console)
    console.print("kept running; press Ctrl-C to stop everything")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping")


def demo(args: argparse.Namespace) -> int:
    console = Console()
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="crev-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # A config or ledger there is an earlier demo's: never write over it.
    if (workdir / "crev.sqlite").exists() or (workdir / "ingest.toml").exists():
        raise UsageError("%s already holds a demo; give an empty --workdir" % workdir)
    speed = 86400 / (args.minutes * 60)
    duration = args.minutes * 60
    console.print("crev demo in %s (logs and databases stay there)" % workdir)
    store = choose_store(workdir, getattr(args, "store", "sqlite"))
    processes = Processes(workdir)
    try:
        store.start(console)
        broker_port, v5 = start_broker(processes, args.broker)
        console.print("broker: %s on port %d" % ("mosquitto" if v5 else "embedded amqtt (MQTT 3.1.1)", broker_port))
        web = WebPorts(_free_port(), _free_port(), secrets.token_urlsafe(18))
        sites = write_configs(workdir, broker_port, v5, speed, web, store.toml)
        ledger_pubkey = next(
            line.split()[1]
            for line in run_crev(workdir, "ingest", "init", "--config", "ingest.toml").splitlines()
            if line.startswith("pubkey")
        )
        (workdir / "ledger.pub").write_text(ledger_pubkey + "\n")
        for site, sim, gateway_config, ports in sites:
            pubkey = next(
                line.split()[1]
                for line in run_crev(workdir, "gateway", "init", "--config", str(gateway_config)).splitlines()
                if line.startswith("pubkey")
            )
            run_crev(
                workdir, "ingest", "enroll", "--config", "ingest.toml", "--device", site.device, "--pubkey", pubkey
            )
            processes.crev("%s-sim" % site.device, "sim", "meters", "--config", str(sim))
            for port in ports:
                _wait_port(port, 20, "the simulated meters of %s" % site.name)
        ingest = processes.crev("ingest", "ingest", "run", "--config", "ingest.toml")
        deadline = time.monotonic() + 20
        while "subscribed" not in (workdir / "ingest.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        register_sites(workdir)
        # The market service issues C-REV as blocks seal, and serves the market's page and API.
        market = processes.crev("market", "market", "run", "--config", "ingest.toml")
        _wait_port(web.dashboard, 20, "the dashboard")
        _wait_port(web.market, 20, "the market")
        web.announce(console)
        gateways = [processes.crev(site.device, "gateway", "run", "--config", str(cfg)) for site, _s, cfg, _p in sites]
        location = store.location
        start = time.monotonic()
        injected = False
        with Live(
            render(location, 0, duration, speed), console=console, refresh_per_second=2, transient=not args.live
        ) as live:
            while (elapsed := time.monotonic() - start) < duration:
                if not injected and elapsed > duration / 2:
                    inject_hostile(broker_port, location)
                    injected = True
                time.sleep(0.5)
                if args.live:
                    live.update(render(location, elapsed, duration, speed))
            for process in gateways:
                processes.stop(process)
            time.sleep(6)  # ingest drains and seals its last block
            processes.stop(ingest)
            live.update(render(location, duration, duration, speed))
        console.print(render(location, duration, duration, speed))
        retirement = issue_and_retire(console, workdir, location)
        audit = subprocess.run(
            [sys.executable, "-m", "crev_cli.main", "audit", "ledger", "--config", "ingest.toml"],
            capture_output=True,
            text=True,
            cwd=workdir,
            check=False,
        )
        console.print("crev audit ledger: %s" % audit.stdout.strip())
        bundle_ok = export_and_verify_bundle(console, workdir, location, SITES[0].device)
        trace_ok = retirement is not None and trace_and_verify(console, workdir, retirement)
        console.print("ledger store: %s" % store.label)
        code = 0 if audit.returncode == 0 and bundle_ok and trace_ok else 1
        if args.keep:
            keep_running(console, processes, web, market)
        return code
    finally:
        # The services first, so that they close their connections and ingest seals its last
        # block; the demo's own PostgreSQL server last, also after an error or Ctrl-C.
        try:
            processes.stop_all()
        finally:
            store.stop(console)
