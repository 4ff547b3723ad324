"""The witness's TOML configuration (SPEC §11).

::

    [witness]
    name = "witness.example"     # the cosigner name on its signature lines
    key = "witness.key"          # written by `crev witness init`; mode 0600
    listen = "127.0.0.1:8100"
    state = "witness.sqlite"
    [[log]]                      # repeatable: the logs it witnesses
    origin = "crev.example/ledger"
    vkey = "crev.example/ledger+be87d359+A…"

Paths are relative to the configuration file. Every mistake is one
ConfigError line that names the setting to fix.
"""

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crev import note
from crev_witness import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8100"
_WITNESS_KEYS = ("name", "key", "listen", "state")
_LOG_KEYS = ("origin", "vkey")


@dataclass(frozen=True)
class LogConfig:
    origin: str
    key: note.VerifierKey


@dataclass(frozen=True)
class WitnessConfig:
    path: Path
    name: str
    key_path: Path
    listen: tuple[str, int]
    state_path: Path
    logs: tuple[LogConfig, ...]


def load(path: Path) -> WitnessConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("%s does not exist; write one (see docs/witnesses.md)" % path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("cannot read %s: %s" % (path, getattr(err, "strerror", None) or err)) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("%s is not valid TOML: %s" % (path.name, err)) from err
    return parse(raw, path)


def _unknown(table: dict[str, Any], allowed: tuple[str, ...], where: str, path: Path) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                "%s: unknown setting %r in %s; the settings there are %s" % (path.name, key, where, ", ".join(allowed))
            )


def _listen(text: object, path: Path) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not isinstance(text, str) or not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("%s: [witness] listen must be host:port, e.g. %s" % (path.name, DEFAULT_LISTEN))
    return host.strip("[]") or "127.0.0.1", int(port)


def _file(table: dict[str, Any], key: str, default: str, path: Path) -> Path:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError("%s: [witness] %s must be a file name" % (path.name, key))
    return (path.parent / value).resolve()


def _log(entry: object, number: int, path: Path) -> LogConfig:
    where = "[[log]] %d" % number
    if not isinstance(entry, dict):
        raise ConfigError("%s: %s must be a table with origin and vkey" % (path.name, where))
    _unknown(entry, _LOG_KEYS, where, path)
    origin = entry.get("origin")
    # tlog-checkpoint: the origin is the first line of the note, so one non-empty line.
    if not isinstance(origin, str) or not origin or note.note_text(origin) is None or "\n" in origin:
        raise ConfigError("%s: %s origin must be the log's checkpoint origin, one line of text" % (path.name, where))
    vkey = entry.get("vkey")
    if not isinstance(vkey, str):
        raise ConfigError(
            "%s: %s (%s) needs vkey, the log's verifier key name+keyid+base64" % (path.name, where, origin)
        )
    try:
        key = note.parse_vkey(vkey)
    except note.NoteError as err:
        raise ConfigError("%s: %s (%s) vkey: %s" % (path.name, where, origin, err.detail)) from err
    if key.sig_type != note.SIG_ED25519:
        raise ConfigError(
            "%s: %s (%s) vkey is of signature type 0x%02x; a log signs its checkpoints with an "
            "Ed25519 note key, type 0x01" % (path.name, where, origin, key.sig_type)
        )
    return LogConfig(origin, key)


def parse(raw: dict[str, Any], path: Path) -> WitnessConfig:
    _unknown(raw, ("witness", "log"), "the file (tables)", path)
    table = raw.get("witness")
    if not isinstance(table, dict):
        raise ConfigError(
            "%s: [witness] is missing; it sets name, key, listen and state (see docs/witnesses.md)" % path.name
        )
    _unknown(table, _WITNESS_KEYS, "[witness]", path)
    name = table.get("name")
    if not isinstance(name, str) or not note.valid_key_name(name):
        raise ConfigError(
            '%s: [witness] name must be the cosigner name, without spaces or "+", e.g. "witness.example"' % path.name
        )
    entries = raw.get("log", [])
    if not isinstance(entries, list):
        raise ConfigError("%s: write each log as a [[log]] table (double brackets), with origin and vkey" % path.name)
    logs = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, 1):
        log = _log(entry, number, path)
        if log.origin in seen:
            raise ConfigError("%s: [[log]] %d: origin %r is listed twice" % (path.name, number, log.origin))
        seen.add(log.origin)
        logs.append(log)
    return WitnessConfig(
        path=path,
        name=name,
        key_path=_file(table, "key", "witness.key", path),
        listen=_listen(table.get("listen", DEFAULT_LISTEN), path),
        state_path=_file(table, "state", "witness.sqlite", path),
        logs=tuple(logs),
    )
