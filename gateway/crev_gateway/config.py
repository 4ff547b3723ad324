"""The gateway's TOML configuration (SPEC §7), validated into plain objects.

Every mistake raises ConfigError with one line that names the file, the
setting and what to write instead.
"""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crev import dgcc, skstack
from crev.market_format import MAX_PRICE
from crev.reading import valid_device_id
from crev.registry_format import parse_decimal, path_problem
from crev_gateway import ConfigError
from crev_gateway.profiles import available_profiles

ROLES = ("generation", "grid")
COUNTERS = ("import", "export", "total")
CLOCK_MODES = ("auto", "synchronised", "unsynchronised")
MARKET_KEYS = ("sell", "owner", "site", "place", "types", "price", "expires")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class BusURL:
    """A parsed meter URL: ``tcp://host:port`` or ``rtu:///dev/ttyUSB0?baudrate=9600&parity=N``."""

    scheme: str
    host: str = ""
    port: int = 502
    device: str = ""
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1

    @property
    def key(self) -> str:
        """Meters with the same key share one bus, one lock and one connection."""
        return "tcp://%s:%d" % (self.host, self.port) if self.scheme == "tcp" else "rtu://" + self.device


@dataclass
class MeterConfig:
    name: str
    profile: str
    url: BusURL
    unit: int
    role: str
    source: int
    counter: str
    word_order: str | None = None  # None: as each point of the profile says
    byte_order: str | None = None
    max_power_w: float | None = None
    meter_id: str | None = None  # overrides the serial number read from the meter


@dataclass
class MqttConfig:
    url: str
    host: str
    port: int
    tls: bool
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    keepalive_s: int = 30


@dataclass(frozen=True)
class MarketConfig:
    """[market]: the controller sells the site's new lots (SPEC §9, the controller as bidder)."""

    owner: str  # the site's owner account: the order's account (key 2)
    site: str
    place: str
    types: tuple[str, ...]  # one order per type per slot
    price: int  # 1/100 yen per kg-CO2
    expires_s: int | None  # an order lapses this long after it was signed


@dataclass(frozen=True)
class SmartMeterConfig:
    """[smartmeter]: the utility's smart meter over the B-route (SPEC §13), for key 12 of each reading."""

    meter_id: str  # as key 12 carries it: the smart meter's id (its supply point or serial)
    port: str  # the Wi-SUN module's serial port
    model: str  # crev.skstack's module: bp35a1 or bp35c0
    rbid: str  # the B-route ID the utility issued (32 characters)
    password: str = field(repr=False)  # the B-route password (12 characters), read from password_file
    baudrate: int = 115200
    utc_offset_s: int = 9 * 3600  # the meter's local time: Japan
    refresh_s: float = 60.0  # how often EA/EB are read; the 30-minute pushes are taken in between
    request_timeout_s: float = 20.0
    join_timeout_s: float = 180.0


@dataclass
class GatewayConfig:
    path: Path
    device_id: str
    key_path: Path
    interval_s: int
    clock: str
    mqtt: MqttConfig
    outbox_path: Path
    outbox_max_readings: int
    outbox_max_age_s: float
    outbox_alarm_fraction: float
    modbus_timeout_s: float
    modbus_retries: int
    modbus_backoff_s: float
    modbus_pause_s: float
    metrics_listen: tuple[str, int] | None
    publish_window: int
    meters: list[MeterConfig] = field(default_factory=list)
    # [simulation], for demos only: sign with a clock that starts at epoch and runs speed times faster.
    sim_epoch: int | None = None
    sim_speed: float = 1.0
    market: MarketConfig | None = None  # None: the controller signs no orders
    # [[operator]] (SPEC §12): who may command the inverters, id -> Ed25519 public key; empty: nobody.
    operators: dict[str, bytes] = field(default_factory=dict)
    smart_meter: SmartMeterConfig | None = None  # None: readings carry no key 12


class _Reader:
    """Typed access to one TOML table, with errors that name the setting."""

    def __init__(self, path: Path, table: dict[str, Any], where: str) -> None:
        self.path = path
        self.table = table
        self.where = where

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError("%s: %s %s %s" % (self.path.name, self.where, key, message))

    def text(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is missing")
        if not isinstance(value, str):
            raise self.fail(key, "must be a string in quotes")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if key in self.table else None

    def number(self, key: str, default: float, minimum: float, maximum: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "must be a number")
        if not minimum <= value <= maximum:
            raise self.fail(key, "must be between %g and %g, got %g" % (minimum, maximum, value))
        return float(value)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be a whole number")
        if not minimum <= value <= maximum:
            raise self.fail(key, "must be between %d and %d, got %d" % (minimum, maximum, value))
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(key, default)
        if value not in choices:
            raise self.fail(key, "must be one of %s, got %r" % (", ".join(choices), value))
        return value

    def path_value(self, key: str, default: str | None = None) -> Path:
        return (self.path.parent / self.text(key, default)).resolve()


def parse_bus_url(text: str, fail: ConfigError) -> BusURL:
    parts = urlsplit(text)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            raise fail from None
        if not parts.hostname or port is None:
            raise fail
        return BusURL("tcp", host=parts.hostname, port=port)
    if parts.scheme == "rtu":
        if not parts.path:
            raise fail
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            url = BusURL(
                "rtu",
                device=parts.path,
                baudrate=int(query.get("baudrate", 9600)),
                parity=query.get("parity", "N").upper(),
                bytesize=int(query.get("bytesize", 8)),
                stopbits=int(query.get("stopbits", 1)),
            )
        except ValueError:
            raise fail from None
        if url.parity not in ("N", "E", "O") or url.stopbits not in (1, 2) or url.bytesize not in (7, 8):
            raise fail
        return url
    raise fail


def _listen(text: str, reader: _Reader, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise reader.fail(key, "must be host:port, e.g. 127.0.0.1:9108")
    return host or "0.0.0.0", int(port)


def _mqtt(reader: _Reader) -> MqttConfig:
    url = reader.text("url", "mqtt://127.0.0.1:1883")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise reader.fail("url", "must look like mqtt://host:1883 or mqtts://host:8883, got %r" % url)
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise reader.fail("url", "has a bad port: %r" % url) from None
    password_file = reader.path_value("password_file") if "password_file" in reader.table else None
    ca_file = reader.path_value("ca_file") if "ca_file" in reader.table else None
    return MqttConfig(
        url=url,
        host=parts.hostname,
        port=port,
        tls=tls,
        username=reader.optional_text("username"),
        password_file=password_file,
        ca_file=ca_file,
        keepalive_s=reader.integer("keepalive_s", 30, 5, 3600),
    )


def _meter(path: Path, raw: dict[str, Any], index: int, seen: set[str]) -> MeterConfig:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError('%s: [[meter]] number %d needs a name, e.g. name = "pv"' % (path.name, index + 1))
    if name in seen:
        raise ConfigError("%s: two meters are called %r; give each a unique name" % (path.name, name))
    seen.add(name)
    r = _Reader(path, raw, "meter %r:" % name)
    profile = r.text("profile")
    if profile not in available_profiles():
        raise r.fail("profile", "%r is unknown (available: %s)" % (profile, ", ".join(available_profiles())))
    url_text = r.text("url")
    url = parse_bus_url(
        url_text,
        r.fail("url", "%r is not tcp://HOST:PORT or rtu:///dev/ttyX?baudrate=9600&parity=N" % url_text),
    )
    role = r.choice("role", ROLES)
    if role == "generation":
        source_name = r.choice("source", dgcc.SOURCE_NAMES[1:])
        source = dgcc.SOURCE_NAMES.index(source_name)
        counter = r.choice("counter", COUNTERS, "total" if profile == "sunspec" else "export")
    else:
        if "source" in raw or "counter" in raw:
            raise r.fail("role", "grid meters give an import and an export channel; remove source and counter")
        source, counter = dgcc.SOURCE_GRID, "import"
    max_power = raw.get("max_power_w")
    return MeterConfig(
        name=name,
        profile=profile,
        url=url,
        unit=r.integer("unit", 1, 0, 247),
        role=role,
        source=source,
        counter=counter,
        word_order=r.choice("word_order", ("big", "little")) if "word_order" in raw else None,
        byte_order=r.choice("byte_order", ("big", "little")) if "byte_order" in raw else None,
        max_power_w=r.number("max_power_w", 0, 1, 1e12) if max_power is not None else None,
        meter_id=r.optional_text("meter_id"),
    )


def load(path: Path) -> GatewayConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("%s does not exist; write one (see gateway/examples/gw.toml)" % path) from None
    except OSError as err:
        raise ConfigError("cannot read %s: %s" % (path, err.strerror)) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s is not valid TOML: %s" % (path.name, err)) from err
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> GatewayConfig:
    device = _Reader(path, raw.get("device", {}), "[device]")
    device_id = device.text("id")
    if not valid_device_id(device_id):
        raise device.fail("id", "%r is not a device id: use 3-63 lowercase letters, digits and '-'" % device_id)
    outbox = _Reader(path, raw.get("outbox", {}), "[outbox]")
    modbus = _Reader(path, raw.get("modbus", {}), "[modbus]")
    metrics = _Reader(path, raw.get("metrics", {}), "[metrics]")
    listen = metrics.optional_text("listen")
    meters_raw = raw.get("meter", [])
    if not isinstance(meters_raw, list) or not meters_raw:
        raise ConfigError("%s: no [[meter]] configured; add at least one generation meter" % path.name)
    seen: set[str] = set()
    meters = [_meter(path, m, i, seen) for i, m in enumerate(meters_raw)]
    if not any(m.role == "generation" for m in meters):
        raise ConfigError('%s: no meter has role = "generation"; crev certifies renewable generation' % path.name)
    return GatewayConfig(
        path=path,
        device_id=device_id,
        key_path=device.path_value("key", "device.key"),
        interval_s=device.integer("interval_s", 60, 1, 3600),
        clock=device.choice("clock", CLOCK_MODES, "auto"),
        mqtt=_mqtt(_Reader(path, raw.get("mqtt", {}), "[mqtt]")),
        outbox_path=outbox.path_value("path", "outbox.sqlite"),
        outbox_max_readings=outbox.integer("max_readings", 1_051_200, 1, 100_000_000),
        outbox_max_age_s=outbox.number("max_age_days", 365, 0.001, 3650) * 86400,
        outbox_alarm_fraction=outbox.number("alarm_fraction", 0.8, 0.1, 0.99),
        modbus_timeout_s=modbus.number("timeout_s", 1.0, 0.05, 60),
        modbus_retries=modbus.integer("retries", 2, 0, 10),
        modbus_backoff_s=modbus.number("backoff_s", 0.2, 0, 30),
        modbus_pause_s=modbus.number("pause_s", 0.02, 0, 5),
        metrics_listen=_listen(listen, metrics, "listen") if listen else None,
        publish_window=outbox.integer("publish_window", 200, 1, 10000),
        meters=meters,
        market=_market(_Reader(path, raw.get("market", {}), "[market]"), meters),
        operators=_operators(path, raw.get("operator", [])),
        smart_meter=_smart_meter(path, raw.get("smartmeter")),
        **_simulation(_Reader(path, raw.get("simulation", {}), "[simulation]")),
    )


def _operators(path: Path, entries: object) -> dict[str, bytes]:
    """[[operator]] id = "...", pubkey = "HEX": the keys whose signed commands this controller obeys."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError('%s: operators are [[operator]] tables with id = "..." and pubkey = "HEX"' % path.name)
    operators: dict[str, bytes] = {}
    for index, entry in enumerate(entries):
        reader = _Reader(path, entry, "[[operator]] number %d:" % (index + 1))
        unknown = sorted(k for k in entry if k not in ("id", "pubkey"))
        if unknown:
            raise reader.fail(unknown[0], "is not a setting (an operator has id and pubkey)")
        operator = reader.text("id")
        if not valid_device_id(operator):
            raise reader.fail("id", "%r is not an operator id: use 3-63 lowercase letters, digits and '-'" % operator)
        try:
            pubkey = bytes.fromhex(reader.text("pubkey"))
        except ValueError:
            pubkey = b""
        if len(pubkey) != 32:
            raise reader.fail("pubkey", "must be 64 hex digits: the public key `crev registry keygen` printed")
        if operator in operators:
            raise reader.fail("id", "%r is listed twice" % operator)
        if pubkey in operators.values():
            raise reader.fail("pubkey", "is already the key of another operator; each has its own")
        operators[operator] = pubkey
    return operators


SMART_METER_KEYS = (
    "meter_id",
    "port",
    "model",
    "rbid",
    "password_file",
    "baudrate",
    "utc_offset_h",
    "refresh_s",
    "request_timeout_s",
    "join_timeout_s",
)


def _smart_meter(path: Path, table: object) -> SmartMeterConfig | None:
    """[smartmeter]: the B-route smart meter whose fixed-time values go in key 12 (SPEC §13)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("%s: [smartmeter] must be a table" % path.name)
    reader = _Reader(path, table, "[smartmeter]")
    unknown = sorted(set(table) - set(SMART_METER_KEYS))
    if unknown:
        raise reader.fail(unknown[0], "is not a setting (one of %s)" % ", ".join(SMART_METER_KEYS))
    meter_id = reader.text("meter_id")
    if not 0 < len(meter_id) <= 64:
        raise reader.fail("meter_id", "must be 1 to 64 characters")
    rbid = reader.text("rbid")
    if len(rbid) != 32:
        raise reader.fail("rbid", "must be the 32-character B-route ID from the utility")
    password_path = reader.path_value("password_file")
    try:
        password = password_path.read_text().strip()
    except OSError as err:
        raise reader.fail("password_file", "cannot be read: %s (%s)" % (err.strerror, password_path)) from err
    if len(password) != 12:
        raise reader.fail("password_file", "must hold the 12-character B-route password")
    return SmartMeterConfig(
        meter_id=meter_id,
        port=reader.text("port"),
        model=reader.choice("model", tuple(skstack.MODELS)),
        rbid=rbid,
        password=password,
        baudrate=reader.integer("baudrate", 115200, 1200, 921600),
        utc_offset_s=int(reader.number("utc_offset_h", 9, -12, 14) * 3600),
        refresh_s=reader.number("refresh_s", 60, 0.05, 1800),
        request_timeout_s=reader.number("request_timeout_s", 20, 0.1, 120),
        join_timeout_s=reader.number("join_timeout_s", 180, 1, 3600),
    )


def _simulation(table: _Reader) -> dict[str, Any]:
    """A simulated clock for demos: a day of timestamps in minutes of wall time."""
    if not table.table:
        return {}
    return {
        "sim_epoch": table.integer("epoch", 0, 0, 1 << 40),
        "sim_speed": table.number("speed", 1.0, 1.0, 100000.0),
    }


def _duration(reader: _Reader, key: str) -> int | None:
    """A duration such as "7d", "12h", "30m", "90s", or a whole number of seconds."""
    if key not in reader.table:
        return None
    value = reader.table[key]
    seconds = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and len(value) >= 2 and value[-1] in DURATION_UNITS:
        number = value[:-1]
        if number and all("0" <= c <= "9" for c in number):
            seconds = int(number) * DURATION_UNITS[value[-1]]
    if seconds is None:
        raise reader.fail(key, 'must be a duration such as "7d", "12h" or "30m", got %r' % (value,))
    if not 60 <= seconds <= 3650 * 86400:
        raise reader.fail(key, "must be between 1 minute and 3650 days, got %d s" % seconds)
    return seconds


def _market(reader: _Reader, meters: list[MeterConfig]) -> MarketConfig | None:
    table = reader.table
    if not isinstance(table, dict):
        raise ConfigError("%s: [market] must be a table" % reader.path.name)
    # A misspelt setting would otherwise be ignored, and the owner would sell on defaults.
    unknown = sorted(k for k in table if k not in MARKET_KEYS)
    if unknown:
        raise reader.fail(unknown[0], "is not a setting (the settings are %s)" % ", ".join(MARKET_KEYS))
    sell = table.get("sell", False)
    if not isinstance(sell, bool):
        raise reader.fail("sell", "must be true or false, without quotes")
    if not sell:
        return None
    owner = reader.text("owner")
    if not valid_device_id(owner):
        raise reader.fail("owner", "%r is not an account id: use 3-63 lowercase letters, digits and '-'" % owner)
    site = reader.text("site")
    if not valid_device_id(site):
        raise reader.fail("site", "%r is not a site id: use 3-63 lowercase letters, digits and '-'" % site)
    place = reader.text("place")
    problem = path_problem(place)
    if problem:
        raise reader.fail("place", "is not a place path such as Japan/Osaka/Suita: %s" % problem)
    sources: list[str] = []
    for meter in meters:
        name = dgcc.SOURCE_NAMES[meter.source]
        if meter.role == "generation" and name not in sources:
            sources.append(name)
    types = table.get("types", sources)
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise reader.fail("types", 'must be a list of type paths in quotes, such as ["solar"]')
    for type_path in types:
        problem = path_problem(type_path)
        if problem:
            raise reader.fail(
                "types", "has %r, which is not a type path such as solar/rooftop: %s" % (type_path, problem)
            )
        # A site's type is a path under its meter's source (SPEC §8), so any
        # other type would never name a lot of this gateway's site.
        if type_path.split("/")[0] not in sources:
            raise reader.fail(
                "types",
                "has %r, which is not under the source of a generation meter (%s)" % (type_path, ", ".join(sources)),
            )
        if types.count(type_path) > 1:
            raise reader.fail("types", "lists %r twice" % type_path)
    price_raw = table.get("price")
    if isinstance(price_raw, int) and not isinstance(price_raw, bool):
        price_raw = str(price_raw)
    if not isinstance(price_raw, str):
        raise reader.fail(
            "price",
            'is missing or not in quotes: write yen per kg-CO2 with up to 2 decimals, e.g. price = "30.00"',
        )
    try:
        price = parse_decimal(price_raw, 2, "[market] price")
    except ValueError as err:
        raise ConfigError("%s: %s" % (reader.path.name, err)) from None
    if price > MAX_PRICE:
        raise reader.fail("price", "%r is beyond any market's prices" % price_raw)
    return MarketConfig(
        owner=owner,
        site=site,
        place=place,
        types=tuple(types),
        price=price,
        expires_s=_duration(reader, "expires"),
    )
