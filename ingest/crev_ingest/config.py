"""The ingest TOML configuration (SPEC §7)."""

import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from crev import reconcile
from crev_ingest import ConfigError


@dataclass
class IngestConfig:
    path: Path
    mqtt_host: str
    mqtt_port: int
    mqtt_tls: bool
    mqtt_username: str | None
    mqtt_password_file: Path | None
    storage_path: Path  # the SQLite file, unless storage_url names a server
    ledger_key_path: Path
    origin: str
    block_interval_s: float
    block_max_leaves: int
    default_g_per_kwh: float
    # Where the default factor comes from, recorded with every site that uses it (SPEC §8).
    default_factor_label: str = "ingest [emission] default_g_per_kwh"
    site_g_per_kwh: dict[str, float] = field(default_factory=dict)
    device_sites: dict[str, str] = field(default_factory=dict)
    influx_url: str | None = None
    influx_token_file: Path | None = None
    influx_org: str = "crev"
    influx_bucket: str = "readings"
    # MQTT v5 with a shared subscription (several workers), or 3.1.1 with a
    # plain one (one worker), for brokers without v5 such as the embedded amqtt.
    mqtt_v5: bool = True
    client_id: str | None = None
    batch_max: int = 500
    batch_wait_s: float = 0.05
    max_future_s: int = 300
    max_per_minute: int = 60  # live messages per device and minute before a FLOOD alarm
    witnesses: list[Any] = field(default_factory=list)  # crev_ingest.witnessing.WitnessConfig
    # [storage] url: the ledger on PostgreSQL (postgresql://...), instead of the SQLite file.
    storage_url: str | None = None

    dashboard_listen: tuple[str, int] | None = None
    dashboard_token_file: Path | None = None
    # "Today" on the dashboard is a calendar day at this offset from UTC (Japan: 9).
    day_offset_h: float = 9
    metrics_listen: tuple[str, int] | None = None
    # `crev market run` serves the market's API here (SPEC §7, §9).
    market_listen: tuple[str, int] = ("127.0.0.1", 8090)
    # [reconciliation] (SPEC §13): the tolerance and the smart meters' resolution.
    reconciliation: reconcile.Params = field(default_factory=reconcile.Params)
    # [reconciliation] wait_s: how long (by the device's own t1) the registry waits for a final
    # verdict of a slot whose readings carry key 12 before it issues the slot UNCHECKED.
    reconciliation_wait_s: int = 900

    @property
    def store_location(self) -> Path | str:
        """Where the ledger lives: a postgresql:// URL, or the SQLite file's path."""
        return self.storage_url if self.storage_url is not None else self.storage_path

    def local_day(self, t: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(t + int(self.day_offset_h * 3600)))

    def site_of(self, dev: str) -> str:
        return self.device_sites.get(dev, dev)

    def factor_for(self, dev: str) -> float:
        return self.site_g_per_kwh.get(self.site_of(dev), self.default_g_per_kwh)


def _table(raw: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError("%s: [%s] must be a table" % (path.name, name))
    return value


def load(path: Path) -> IngestConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("%s does not exist; write one (see ingest/examples/ingest.toml)" % path) from None
    except OSError as err:
        raise ConfigError("cannot read %s: %s" % (path, err.strerror)) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s is not valid TOML: %s" % (path.name, err)) from err
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> IngestConfig:
    base = path.parent
    mqtt = _table(raw, "mqtt", path)
    url = mqtt.get("url", "mqtt://127.0.0.1:1883")
    parts = urlsplit(str(url))
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            "%s: [mqtt] url must look like mqtt://host:1883 or mqtts://host:8883, got %r" % (path.name, url)
        )
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError("%s: [mqtt] url has a bad port: %r" % (path.name, url)) from None
    storage = _table(raw, "storage", path)
    ledger = _table(raw, "ledger", path)
    emission = _table(raw, "emission", path)
    sites = emission.get("sites", {})
    factor = emission.get("default_g_per_kwh", 423)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 <= factor <= 2000:
        raise ConfigError("%s: [emission] default_g_per_kwh must be a number of g-CO2/kWh (0-2000)" % path.name)
    interval = ledger.get("block_interval_s", 10)
    max_leaves = ledger.get("block_max_leaves", 10000)
    if not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError("%s: [ledger] block_interval_s must be a positive number" % path.name)
    if not isinstance(max_leaves, int) or max_leaves < 1:
        raise ConfigError("%s: [ledger] block_max_leaves must be a positive whole number" % path.name)
    origin = ledger.get("origin", "crev.example/ledger")
    if not isinstance(origin, str) or not origin or "\n" in origin:
        raise ConfigError("%s: [ledger] origin must be one line of text" % path.name)
    password_file = mqtt.get("password_file")
    return IngestConfig(
        path=path,
        mqtt_host=parts.hostname,
        mqtt_port=port,
        mqtt_tls=parts.scheme == "mqtts",
        mqtt_username=mqtt.get("username"),
        mqtt_password_file=(base / password_file).resolve() if password_file else None,
        storage_path=(base / storage.get("path", "crev.sqlite")).resolve(),
        ledger_key_path=(base / ledger.get("key", "ledger.key")).resolve(),
        origin=origin,
        block_interval_s=float(interval),
        block_max_leaves=max_leaves,
        default_g_per_kwh=float(factor),
        default_factor_label=_label(emission.get("label", "ingest [emission] default_g_per_kwh"), path),
        site_g_per_kwh={str(k): float(v) for k, v in sites.items()},
        device_sites={str(k): str(v) for k, v in _table(raw, "sites", path).items()},
        max_future_s=int(raw.get("validation", {}).get("max_future_s", 300)),
        max_per_minute=_per_minute(raw.get("validation", {}).get("max_per_minute", 60), path),
        mqtt_v5=_protocol(mqtt.get("protocol", "5"), path),
        client_id=mqtt.get("client_id"),
        **_influx(_table(raw, "influxdb", path), base, path),
        **_dashboard(_table(raw, "dashboard", path), _table(raw, "metrics", path), base, path),
        **_market(_table(raw, "market", path), path),
        witnesses=_witnesses(raw.get("witness", []), path),
        storage_url=_storage_url(storage, base, path),
        reconciliation=reconciliation_params(_table(raw, "reconciliation", path), path.name),
        reconciliation_wait_s=reconciliation_wait(_table(raw, "reconciliation", path), path.name),
    )


RECONCILIATION_KEYS = ("tolerance_percent", "steps", "step_mwh", "digits", "wait_s")


def reconciliation_wait(table: dict[str, Any], where: str) -> int:
    """[reconciliation] wait_s (default 900, at most 86400): the registry's wait for a final verdict."""
    value = table.get("wait_s", 900)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 86400:
        raise ConfigError("%s: [reconciliation] wait_s must be a whole number of seconds from 0 to 86400" % where)
    return value


def reconciliation_params(table: dict[str, Any], where: str) -> reconcile.Params:
    """[reconciliation]: tolerance_percent (default 1, up to 2 decimals), steps (2) of the smart
    meter's resolution step_mwh (100000: 0.1 kWh), and its effective digits (6; 0: roll-over unknown)."""
    unknown = sorted(set(table) - set(RECONCILIATION_KEYS))
    if unknown:
        raise ConfigError(
            "%s: [reconciliation] %s is not a setting (one of %s)" % (where, unknown[0], ", ".join(RECONCILIATION_KEYS))
        )
    percent = table.get("tolerance_percent", 1)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise ConfigError("%s: [reconciliation] tolerance_percent must be a number from 0 to 100" % where)
    basis_points = round(percent * 100)
    if abs(basis_points - percent * 100) > 1e-6:
        raise ConfigError("%s: [reconciliation] tolerance_percent takes at most 2 decimals" % where)
    values = {}
    for key, default, low, high in (("steps", 2, 0, 1000), ("step_mwh", 100000, 1, 10**12), ("digits", 6, 0, 8)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError("%s: [reconciliation] %s must be a whole number from %d to %d" % (where, key, low, high))
        values[key] = value
    return reconcile.Params(basis_points, values["steps"], values["step_mwh"], values["digits"] or None)


def _storage_url(storage: dict[str, Any], base: Path, path: Path) -> str | None:
    """[storage] url (PostgreSQL), with the password from password_file rather than the config."""
    url = storage.get("url")
    if url is None:
        return None
    if "path" in storage:
        raise ConfigError("%s: [storage] has both path and url: keep one (url for PostgreSQL)" % path.name)
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "%s: [storage] url must be a PostgreSQL URL like postgresql://crev@db.example/crev, got %r"
            % (path.name, url)
        )
    password_file = storage.get("password_file")
    if password_file is None:
        return url
    try:
        password = (base / str(password_file)).read_text().strip()
    except OSError as err:
        raise ConfigError("%s: [storage] password_file: %s" % (path.name, err.strerror or err)) from None
    parts = urlsplit(url)
    if parts.password is not None:
        raise ConfigError("%s: [storage] url has a password and password_file gives another" % path.name)
    netloc = "%s:%s@%s" % (quote(parts.username or "", safe=""), quote(password, safe=""), parts.netloc.split("@")[-1])
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _witnesses(entries: object, path: Path) -> list[Any]:
    from crev import note
    from crev_ingest.witnessing import WitnessConfig

    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("%s: [[witness]] entries are tables with url and vkey" % path.name)
    out = []
    for entry in entries:
        url, vkey = entry.get("url"), entry.get("vkey")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
            raise ConfigError(
                "%s: [[witness]] url must be the witness's http(s)://host:port, got %r" % (path.name, url)
            )
        try:
            key = note.parse_vkey(vkey) if isinstance(vkey, str) else None
        except note.NoteError as err:
            raise ConfigError("%s: [[witness]] vkey %r: %s" % (path.name, vkey, err.detail)) from err
        if key is None or key.sig_type != 0x04:
            raise ConfigError(
                "%s: [[witness]] vkey must be the witness's cosignature/v1 key (`crev witness init` prints it)"
                % path.name
            )
        out.append(WitnessConfig(url, key))
    return out


def _per_minute(value: object, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            "%s: [validation] max_per_minute must be a whole number of messages a minute (default 60)" % path.name
        )
    return value


def _label(value: object, path: Path) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100 or "\n" in value:
        raise ConfigError("%s: [emission] label must be one line of at most 100 characters" % path.name)
    return value.strip()


def _protocol(value: object, path: Path) -> bool:
    if str(value) not in ("5", "3.1.1"):
        raise ConfigError('%s: [mqtt] protocol must be "5" or "3.1.1"' % path.name)
    return str(value) == "5"


def _influx(table: dict[str, Any], base: Path, path: Path) -> dict[str, Any]:
    if not table:
        return {}
    url = table.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("%s: [influxdb] url must be http(s)://host:8086" % path.name)
    token_file = table.get("token_file")
    if not isinstance(token_file, str):
        raise ConfigError("%s: [influxdb] token_file is missing (a file holding the API token)" % path.name)
    return {
        "influx_url": url,
        "influx_token_file": (base / token_file).resolve(),
        "influx_org": str(table.get("org", "crev")),
        "influx_bucket": str(table.get("bucket", "readings")),
    }


def _listen(text: object, where: str, path: Path) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not isinstance(text, str) or not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("%s: %s listen must be host:port, e.g. 127.0.0.1:8080" % (path.name, where))
    return host or "127.0.0.1", int(port)


def _dashboard(table: dict[str, Any], metrics: dict[str, Any], base: Path, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "listen" in metrics:
        out["metrics_listen"] = _listen(metrics["listen"], "[metrics]", path)
    if not table:
        return out
    token_file = table.get("token_file")
    if not isinstance(token_file, str):
        raise ConfigError(
            "%s: [dashboard] token_file is missing: the dashboard is never open without a token" % path.name
        )
    offset = table.get("day_offset_h", 9)
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not -12 <= offset <= 14:
        raise ConfigError("%s: [dashboard] day_offset_h must be hours from UTC (-12..14)" % path.name)
    out["dashboard_listen"] = _listen(table.get("listen", "127.0.0.1:8080"), "[dashboard]", path)
    out["dashboard_token_file"] = (base / token_file).resolve()
    out["day_offset_h"] = float(offset)
    return out


def _market(table: dict[str, Any], path: Path) -> dict[str, Any]:
    if not table:
        return {}
    return {"market_listen": _listen(table.get("listen", "127.0.0.1:8090"), "[market]", path)}
