"""``crev control send``: an operator's signed command to a controller (SPEC §12).

The command is signed here, with the operator's key file, and published
(QoS 1) to ``crev/v1/{dev}/cmd`` on the broker of the ingest configuration.
Its seq comes from a small state file (``--state``, by default
``control-state.json`` beside the key), written and flushed before the
command leaves, so an operator's seqs only ever increase. A seq is also
never below the current Unix time in milliseconds: a lost state file does
not make every controller refuse the next commands as replays.

With ``--wait S`` it also waits for the controller's acknowledgement and
prints it; the exit code is then 0 only when the command was applied.
"""

import argparse
import datetime
import fcntl
import json
import os
import secrets
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from crev.control import (
    ACK_APPLIED,
    CMD_CLEAR,
    CMD_CONNECT,
    CMD_DISCONNECT,
    CMD_LIMIT,
    CMD_SCHEDULE,
    MAX_PCT,
    MAX_REVERT_S,
    MAX_SLOTS,
    MIN_PCT,
    SLOT_S,
    Ack,
    ControlError,
    command_map,
    digest,
    sign_command,
)
from crev.errors import MisuseError
from crev.keyfile import KeyFileError, load_key
from crev.keys import SigningKey
from crev.reading import valid_device_id
from crev_cli import UsageError
from crev_cli.audit_cmd import parse_time

DEFAULT_EXPIRY_S = {CMD_LIMIT: 3600, CMD_DISCONNECT: 3600, CMD_CONNECT: 300, CMD_CLEAR: 300}
DEFAULT_DISCONNECT_REVERT_S = 300
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PUBLISH_TIMEOUT_S = 15.0
STATE_NAME = "control-state.json"


def add_commands(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    control = commands.add_parser("control", help="signed commands to controllers' inverters (SPEC §12)")
    sub = control.add_subparsers(dest="control_command", metavar="SUBCOMMAND", parser_class=parser_class)
    sub.required = True
    send_cmd = sub.add_parser(
        "send",
        help="sign a command with an operator key and publish it to a controller",
        description="Sign a command with an operator's key (enrolled with `crev registry operator add` and listed "
        "in the controller's [[operator]]) and publish it to the broker of the ingest configuration.",
    )
    send_cmd.add_argument("--config", required=True, metavar="FILE", help="the ingest TOML configuration (its broker)")
    send_cmd.add_argument("--operator", required=True, metavar="ID", help="the operator id")
    send_cmd.add_argument("--key", required=True, metavar="FILE", help="the operator's key file")
    send_cmd.add_argument("--device", required=True, metavar="DEV", help="the controller's device id")
    what = send_cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--limit", metavar="PCT", help="limit the inverters' output to PCT %% of their rating (1-100)")
    what.add_argument("--connect", action="store_true", help="end this operator's disconnect")
    what.add_argument("--disconnect", action="store_true", help="disconnect the inverters from the grid")
    what.add_argument("--schedule", metavar="FILE", help="a JSON schedule of 30-minute limits (see the docs)")
    what.add_argument("--clear", action="store_true", help="lift every command of this operator")
    send_cmd.add_argument(
        "--revert",
        "--revert-s",
        dest="revert",
        metavar="S",
        help="seconds after which the inverter lifts the command by itself if the controller falls silent",
    )
    send_cmd.add_argument("--expires", metavar="T", help="when the command ends: Unix s, ISO 8601, or a duration: 2h")
    send_cmd.add_argument("--state", metavar="FILE", help="the seq state file (default: %s beside --key)" % STATE_NAME)
    send_cmd.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S s for the ack")
    send_cmd.add_argument("--device-pubkey", metavar="HEX", help="with --wait: check the ack's signature")
    send_cmd.set_defaults(handler=send)


# ------------------------------------------------------------------ arguments


def _whole(text: str, option: str, low: int, high: int, hint: str) -> int:
    value = text.strip()
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise UsageError("%s %r must be a whole number from %d to %d%s" % (option, text, low, high, hint))
    return int(value)


def _limit(text: str) -> int:
    return _whole(text, "--limit", MIN_PCT, MAX_PCT, " (percent of rating; to stop output use --disconnect)")


def _revert(text: str | None, default: int | None, option: str = "--revert") -> int:
    if text is None:
        if default is None:
            raise UsageError(
                "%s S is needed: the inverter lifts the command by itself after S seconds of silence" % option
            )
        return default
    return _whole(text, option, 1, MAX_REVERT_S, " seconds")


def _expires(text: str | None, now: int, default: int) -> int:
    if text is None:
        return default
    value = text.strip().lstrip("+")
    if len(value) >= 2 and value[-1] in DURATION_UNITS and value[:-1].isascii() and value[:-1].isdigit():
        return now + int(value[:-1]) * DURATION_UNITS[value[-1]]
    expires = parse_time(text, "--expires")
    if expires <= now:
        raise UsageError("--expires %s is already past; give a later time or a duration such as 30m" % text)
    return expires


def _schedule(path: Path, revert_text: str | None) -> tuple[int, list[int], int]:
    """``{"start": T, "limits_pct": [..], "revert_s": S}``: one limit per 30-minute slot from start."""
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise UsageError("cannot read the schedule %s: %s" % (path, err.strerror)) from err
    except ValueError as err:
        raise UsageError("the schedule %s is not JSON: %s" % (path, err)) from err
    if not isinstance(raw, dict) or "start" not in raw or "limits_pct" not in raw:
        raise UsageError('the schedule %s must be {"start": T, "limits_pct": [80, 60, ...], "revert_s": S}' % path)
    start_raw = raw["start"]
    start = int(start_raw) if isinstance(start_raw, int) and not isinstance(start_raw, bool) else None
    if start is None:
        start = parse_time(str(start_raw), "the schedule's start")
    if start % SLOT_S:
        raise UsageError("the schedule's start must be on a 30-minute boundary (:00 or :30), got %s" % start_raw)
    limits = raw["limits_pct"]
    if not isinstance(limits, list) or not 0 < len(limits) <= MAX_SLOTS:
        raise UsageError("the schedule's limits_pct must list 1 to %d limits, one per 30-minute slot" % MAX_SLOTS)
    for pct in limits:
        if isinstance(pct, bool) or not isinstance(pct, int) or not MIN_PCT <= pct <= MAX_PCT:
            raise UsageError("every limit in the schedule must be a whole percentage from 1 to 100, got %r" % (pct,))
    revert = revert_text if revert_text is not None else raw.get("revert_s")
    return start, list(limits), _revert(None if revert is None else str(revert), None, "revert_s")


# ------------------------------------------------------------------ the seq state


def next_seq(state_path: Path, operator: str) -> int:
    """The operator's next seq, recorded (flushed to disk) before it is returned."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state_path.with_name(state_path.name + ".lock")
    with lock_path.open("a") as lock:
        # Two sends at once must not take the same seq.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
        except ValueError as err:
            raise UsageError("the seq state %s is not JSON; fix it or move it away" % state_path) from err
        seqs = state.setdefault("seq", {})
        if not isinstance(seqs, dict):
            raise UsageError("the seq state %s has no seq table; fix it or move it away" % state_path)
        last = seqs.get(operator, 0)
        seq = max(int(last) + 1, int(time.time() * 1000))
        seqs[operator] = seq
        temporary = state_path.with_name(state_path.name + ".tmp")
        with temporary.open("w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, state_path)
    return seq


# ------------------------------------------------------------------ publishing


def _client(config: Any, operator: str) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="crev-control-%s-%s" % (operator, secrets.token_hex(4)),
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if config.mqtt_username is not None:
        password = None
        if config.mqtt_password_file is not None:
            try:
                password = Path(config.mqtt_password_file).read_text().strip()
            except OSError as err:
                raise UsageError("cannot read [mqtt] password_file: %s" % err.strerror) from err
        client.username_pw_set(config.mqtt_username, password)
    if config.mqtt_tls:
        client.tls_set_context(ssl.create_default_context())
    return client


def _iso(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(kind: int, pct: int | None, revert: int | None, limits: list[int] | None) -> str:
    if kind == CMD_LIMIT:
        return "limit %d %% (revert %d s)" % (pct or 0, revert or 0)
    if kind == CMD_SCHEDULE:
        return "schedule of %d slots (revert %d s)" % (len(limits or []), revert or 0)
    if kind == CMD_DISCONNECT:
        return "disconnect (revert %d s)" % (revert or 0)
    return "connect" if kind == CMD_CONNECT else "clear"


def _ack_text(ack: Ack) -> str:
    text = ack.status_name
    if ack.reason:
        text += ": %s" % ack.reason
    if ack.detail:
        text += " (%s)" % ack.detail
    if ack.limit_centi is not None:
        text += ", limit read back %d.%02d %%" % (ack.limit_centi // 100, ack.limit_centi % 100)
    if ack.connected is not None:
        text += ", connected" if ack.connected else ", disconnected"
    return text


def send(args: argparse.Namespace) -> int:
    if not valid_device_id(args.device):
        raise UsageError("--device %r is not a device id (3-63 of a-z, 0-9 and '-')" % args.device)
    if not valid_device_id(args.operator):
        raise UsageError("--operator %r is not an operator id (3-63 of a-z, 0-9 and '-')" % args.operator)
    if args.wait < 0 or args.wait > 3600:
        raise UsageError("--wait must be between 0 and 3600 seconds")
    device_key = None
    if args.device_pubkey is not None:
        try:
            device_key = bytes.fromhex(args.device_pubkey)
        except ValueError:
            device_key = b""
        if len(device_key) != 32:
            raise UsageError("--device-pubkey must be 64 hex digits: the key `crev gateway init` printed")
    now = int(time.time())
    pct = revert = start = None
    limits: list[int] | None = None
    if args.limit is not None:
        kind, pct, revert = CMD_LIMIT, _limit(args.limit), _revert(args.revert, None)
    elif args.disconnect:
        kind, revert = CMD_DISCONNECT, _revert(args.revert, DEFAULT_DISCONNECT_REVERT_S)
    elif args.schedule is not None:
        kind = CMD_SCHEDULE
        start, limits, revert = _schedule(Path(args.schedule), args.revert)
    else:
        if args.revert is not None:
            raise UsageError("--revert goes with --limit, --disconnect or --schedule")
        kind = CMD_CONNECT if args.connect else CMD_CLEAR
    if kind == CMD_SCHEDULE:
        assert start is not None and limits is not None
        expires = _expires(args.expires, now, start + SLOT_S * len(limits))
    else:
        expires = _expires(args.expires, now, now + DEFAULT_EXPIRY_S[kind])
    try:
        key: SigningKey = load_key(args.key, "account")
    except KeyFileError as err:
        raise UsageError(str(err)) from err

    from crev_ingest import IngestError
    from crev_ingest import config as ingest_config

    try:
        config = ingest_config.load(Path(args.config))
    except IngestError as err:
        raise UsageError(str(err)) from err
    state_path = Path(args.state) if args.state else Path(args.key).resolve().parent / STATE_NAME
    # A controller whose clock is a little behind ours must not see it as not yet valid.
    not_before = now - 30
    try:
        command_map(bytes(16), args.device, 0, now, not_before, expires, kind, pct, revert, start, limits)
    except MisuseError as err:
        raise UsageError("the controller would refuse this command: %s" % err.detail) from err
    client = _client(config, args.operator)
    got: list[Ack] = []
    arrived = threading.Event()
    wanted = b""

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        try:
            ack = Ack.parse(bytes(message.payload), device_key)
        except ControlError:
            return
        if ack.cmd == wanted:
            got.append(ack)
            arrived.set()

    ack_topic = "crev/v1/%s/ack" % args.device
    client.on_message = on_message
    try:
        client.connect(config.mqtt_host, config.mqtt_port, keepalive=30)
    except OSError as err:
        raise UsageError(
            "cannot reach the broker at %s:%d ([mqtt] url in %s): %s"
            % (config.mqtt_host, config.mqtt_port, args.config, err)
        ) from err
    client.loop_start()
    try:
        # The seq is taken once the broker is reachable, so an outage spends none.
        seq = next_seq(state_path, args.operator)
        command_id = secrets.token_bytes(16)
        fields = command_map(command_id, args.device, seq, now, not_before, expires, kind, pct, revert, start, limits)
        signed = sign_command(fields, key)
        wanted = digest(signed)
        if args.wait:
            # The broker handles one client's packets in order: the subscription is in place
            # before the command is routed, so the ack cannot slip past.
            client.subscribe(ack_topic, qos=1)
        info = client.publish("crev/v1/%s/cmd" % args.device, signed, qos=1)
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise UsageError("the broker did not acknowledge the command within %.0f s" % PUBLISH_TIMEOUT_S)
        print(
            "sent %s to %s: command %s, seq %d, in force until %s"
            % (_describe(kind, pct, revert, limits), args.device, command_id.hex(), seq, _iso(expires))
        )
        if not args.wait:
            return 0
        if not arrived.wait(args.wait):
            print("no acknowledgement from %s within %g s" % (args.device, args.wait))
            return 1
        ack = got[0]
        print("ack: %s%s" % (_ack_text(ack), "" if device_key is not None else " (signature not checked)"))
        return 0 if ack.status == ACK_APPLIED else 1
    finally:
        client.loop_stop()
        client.disconnect()
