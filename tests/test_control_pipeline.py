"""Site control end to end (SPEC §12): real mosquitto, `crev sim meters`, `crev gateway run`, `crev control send`.

The operator's limit reaches the simulated inverter, whose output ramps
down to it; readings carry CURTAILED; a gateway killed with SIGKILL leaves
the inverter to revert by itself; a restarted gateway resumes the command
only while it has not expired; replayed, forged and misaddressed commands
are refused and acknowledged as such; an inverter that ignores writes is
caught. Revert times are a few seconds, so the test runs in under a minute.
"""

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import (
    Mosquitto,
    ReadingCollector,
    Service,
    free_port,
    gateway_config,
    init_gateway,
    load_truth,
    port_open,
    run_crev,
    wait_for,
    write_toml,
)
from ingest_support import LEDGER_KEY, LocalIngest
from paho.mqtt.enums import CallbackAPIVersion
from registry_support import write_ingest_config
from store_support import location, rows

from crev import cbor, control, dgcc
from crev.control import Ack, command_map, digest, sign_command
from crev.cose import Sign1
from crev.keyfile import load_key
from crev.keys import SigningKey
from crev.registry_format import ROLE_OPERATOR, AccountEvent
from crev_cli.main import main

DEV = "dgc-control-0001"
REVERT_S = 4
RAMP = 30  # %/s
RATING_W = 5000


class Traffic:
    """Records the acks of every device and the commands sent to them."""

    def __init__(self, port: int) -> None:
        self.acks: list[bytes] = []
        self.commands: list[bytes] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crev-test-traffic")
        self.client.on_connect = lambda c, *_: c.subscribe([("crev/v1/+/ack", 1), ("crev/v1/+/cmd", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the test's MQTT client")
        time.sleep(0.2)  # the subscription

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            (self.acks if message.topic.endswith("/ack") else self.commands).append(bytes(message.payload))

    def ack_for(self, raw: bytes, device_key: bytes, status: str | None = None, timeout: float = 10) -> Ack:
        wanted = digest(raw)
        found: list[Ack] = []

        def arrived() -> bool:
            with self.lock:
                acks = [Ack.parse(a, device_key) for a in self.acks]
            found[:] = [a for a in acks if a.cmd == wanted and (status is None or a.status_name == status)]
            return bool(found)

        wait_for(arrived, timeout, "the ack of command %s" % wanted.hex()[:16])
        return found[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _site(tmp_path: Path, broker: Mosquitto, faults: str = "") -> tuple[Service, Service, Path, bytes]:
    """A running simulated inverter (and grid meter) and a gateway that lists the operator in op.key."""
    port = free_port()
    sim_toml = write_toml(
        tmp_path / "sim.toml",
        'truth = "truth.jsonl"\n[site]\nseed = 5\nspeed = 60\nstart = "2026-06-21T11:30:00+09:00"\n'
        "pv_peak_w = %d\nload_avg_w = 700\n\n"
        '[[meter]]\nname = "site"\nprofile = "sunspec"\nport = %d\nmeasures = ["pv", "grid"]\nserial = 704001\n'
        "controls = [123]\nramp_pct_per_s = %d\nrating_w = %d\n%s" % (RATING_W, port, RAMP, RATING_W, faults),
    )
    sim = Service("sim", ["sim", "meters", "--config", str(sim_toml)], tmp_path).start()
    wait_for(lambda: port_open(port), 20, "the simulator")
    keygen = run_crev(tmp_path, "registry", "keygen", "--out", "op.key")
    assert keygen.returncode == 0, keygen.stderr
    operator_pubkey = keygen.stdout.split()[1]
    meters = (
        '[[meter]]\nname = "pv"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "generation"\n'
        'source = "solar"\nmax_power_w = 1e8\n\n'
        '[[meter]]\nname = "grid"\nprofile = "sunspec"\nurl = "tcp://127.0.0.1:%d"\nrole = "grid"\nmax_power_w = 1e8\n'
        % (port, port)
    )
    operators = '[[operator]]\nid = "grid-op"\npubkey = "%s"\n' % operator_pubkey
    config = gateway_config(tmp_path, DEV, broker.url, meters, extra=operators)
    device_key = init_gateway(tmp_path, config)
    write_toml(tmp_path / "ingest.toml", '[mqtt]\nurl = "%s"\n' % broker.url)
    gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
    return sim, gateway, config, device_key


def _send(tmp_path: Path, device_key: bytes, *what: str) -> Any:
    return run_crev(
        tmp_path,
        "control",
        "send",
        "--config",
        "ingest.toml",
        "--operator",
        "grid-op",
        "--key",
        "op.key",
        "--device",
        DEV,
        *what,
        "--wait",
        "15",
        "--device-pubkey",
        device_key.hex(),
    )


def _inverter(tmp_path: Path) -> list[dict[str, Any]]:
    """The inverter's state tick by tick, with each tick's wall time."""
    return [
        {"wall": r["wall"], "pv_wh": r["pv_wh"], **r["inverters"]["site"]} for r in load_truth(tmp_path / "truth.jsonl")
    ]


def _latest(tmp_path: Path) -> dict[str, Any]:
    return _inverter(tmp_path)[-1]


@pytest.mark.slow
def test_a_limit_is_applied_refreshed_reverted_resumed_and_guarded(
    tmp_path: Path, broker: Mosquitto, collector: ReadingCollector
) -> None:
    traffic = Traffic(broker.port)
    sim, gateway, config, device_key = _site(tmp_path, broker)
    try:
        wait_for(lambda: len(collector.readings(DEV)) >= 2, 20, "the first readings")

        # The operator sends a 40 % limit; the gateway applies it and reads it back.
        sent_at = time.time()
        done = _send(tmp_path, device_key, "--limit", "40", "--revert", str(REVERT_S), "--expires", "32s")
        assert done.returncode == 0, done.stdout + done.stderr + gateway.log()
        assert "ack: applied" in done.stdout and "limit read back 40.00 %" in done.stdout
        wait_for(lambda: bool(traffic.commands), 5, "the command on the broker")
        command = traffic.commands[0]
        applied = traffic.ack_for(command, device_key, "applied")
        expiry = control.parse_command(Sign1.from_bytes(command)).expires

        # The output ramps down at RAMP %/s and then holds 40 %, which the energy shows.
        wait_for(lambda: _latest(tmp_path)["output_pct"] == 40, 60 / RAMP + 3, "the output to reach 40 %")
        ticks = [t for t in _inverter(tmp_path) if t["wall"] >= sent_at]
        limited = [t for t in ticks if t["limit_pct"] == 40]
        assert limited[0]["output_pct"] > 40, "the output ramps; it does not jump"
        steps = [a["output_pct"] - b["output_pct"] for a, b in itertools.pairwise(limited)]
        assert max(steps) <= RAMP * 1.6, steps  # ticks are about a wall second apart
        at_limit = [t for t in limited if t["output_pct"] == 40]
        assert all(t["pv_wh"] <= RATING_W * 0.4 * 60 / 3600 + 1 for t in at_limit[1:])

        # Held for twice its revert time: the gateway writes it again at half of it.
        time.sleep(2 * REVERT_S)
        state = _latest(tmp_path)
        assert (state["limit_pct"], state["reverts"]) == (40, 0), gateway.log()
        readings = collector.readings(DEV)
        after = [r for r in readings if r.t0 >= applied.time_s]
        before = [r for r in readings if r.t1 < sent_at - 1]
        assert after and all(r.flags & dgcc.CURTAILED for r in after), [dgcc.flag_names(r.flags) for r in after]
        assert before and not any(r.flags & dgcc.CURTAILED for r in before)

        # SIGKILL: nobody refreshes the limit, and the inverter lifts it by itself within its revert time.
        gateway.kill()
        killed = time.monotonic()
        wait_for(lambda: _latest(tmp_path)["limit_pct"] == 100, REVERT_S + 3, "the inverter's own revert")
        assert time.monotonic() - killed <= REVERT_S + 2
        assert _latest(tmp_path)["reverts"] == 1

        # A restart while the command is in force: it is applied again.
        assert time.time() < expiry - 8, "the machine is too slow for this timeline"
        gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
        wait_for(lambda: _latest(tmp_path)["limit_pct"] == 40, 20, "the command resumed after the restart")
        resumed = traffic.ack_for(command, device_key, "applied")
        assert resumed.detail == "resumed after a restart"

        # The same signed bytes again: replayed.
        traffic.publish("crev/v1/%s/cmd" % DEV, command)
        assert traffic.ack_for(command, device_key, "rejected").reason == "REPLAYED"
        # An unenrolled key, and another device: refused and acknowledged.
        now = int(time.time())
        stranger = sign_command(
            command_map(bytes(16), DEV, 1 << 50, now, now - 5, now + 60, control.CMD_LIMIT, 10, 60),
            SigningKey(bytes([0x77] * 32)),
        )
        operator = load_key(tmp_path / "op.key", "account")
        elsewhere = sign_command(
            command_map(bytes(16), "dgc-elsewhere-01", 1 << 51, now, now - 5, now + 60, control.CMD_LIMIT, 10, 60),
            operator,
        )
        for raw, reason in ((stranger, "UNKNOWN_OPERATOR"), (elsewhere, "OTHER_DEVICE")):
            traffic.publish("crev/v1/%s/cmd" % DEV, raw)
            assert traffic.ack_for(raw, device_key, "rejected").reason == reason
        assert _latest(tmp_path)["limit_pct"] == 40, "none of them changed the limit"

        # Killed again, and restarted only after the command expired: not resumed, acknowledged as expired.
        gateway.kill()
        wait_for(lambda: time.time() >= expiry + 1, 45, "the command's expiry")
        restarted_at = time.time()
        gateway = Service("gateway", ["gateway", "run", "--config", str(config)], tmp_path).start()
        traffic.ack_for(command, device_key, "expired", timeout=20)
        wait_for(lambda: len([r for r in collector.readings(DEV) if r.t0 > restarted_at + 1]) >= 2, 20, "new readings")
        assert _latest(tmp_path)["limit_pct"] == 100
        fresh = [r for r in collector.readings(DEV) if r.t0 > restarted_at + 1]
        assert not any(r.flags & dgcc.CURTAILED for r in fresh)
        assert gateway.stop() == 0, gateway.log()
    finally:
        gateway.kill()
        sim.stop()
        traffic.close()


@pytest.mark.slow
def test_an_inverter_that_ignores_writes_is_reported(tmp_path: Path, broker: Mosquitto) -> None:
    sim, gateway, _config, device_key = _site(
        tmp_path, broker, '[[meter.fault]]\nkind = "ignore_writes"\nfrom_h = 0\nto_h = 100\n'
    )
    try:
        wait_for(lambda: "running" in gateway.log(), 20, "the gateway")
        done = _send(tmp_path, device_key, "--limit", "40", "--revert", "30")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "ack: rejected: NOT_TAKEN" in done.stdout and "did not take the limit" in done.stdout
        assert _latest(tmp_path)["limit_pct"] == 100
        assert gateway.alive()
    finally:
        gateway.stop()
        sim.stop()


def test_the_sender_refuses_what_no_controller_would_take(tmp_path: Path) -> None:
    for what, expected in (
        (["--limit", "0", "--revert", "60"], "--limit '0' must be a whole number from 1 to 100"),
        (["--limit", "101", "--revert", "60"], "from 1 to 100"),
        (["--limit", "40.5", "--revert", "60"], "whole number"),
        (["--limit", "40"], "--revert S is needed"),
        (["--clear", "--revert", "60"], "--revert goes with"),
        (["--limit", "40", "--revert", "60", "--expires", "2020-01-01"], "already past"),
    ):
        done = run_crev(
            tmp_path,
            "control",
            "send",
            "--config",
            "ingest.toml",
            "--operator",
            "grid-op",
            "--key",
            "op.key",
            "--device",
            DEV,
            *what,
        )
        assert done.returncode == 2, done
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert run_crev(tmp_path, "registry", "keygen", "--out", "op.key").returncode == 0
    write_toml(tmp_path / "ingest.toml", '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    done = run_crev(
        tmp_path,
        "control",
        "send",
        "--config",
        "ingest.toml",
        "--operator",
        "grid-op",
        "--key",
        "op.key",
        "--device",
        DEV,
        "--limit",
        "40",
        "--revert",
        "60",
    )
    assert done.returncode == 2 and "cannot reach the broker at 127.0.0.1:1" in done.stderr, done.stderr
    assert not (tmp_path / "control-state.json").exists(), "a refused or unsent command spends no seq"


def test_seqs_always_increase_in_the_state_file(tmp_path: Path) -> None:
    from crev_cli.control_cmd import next_seq

    state = tmp_path / "state.json"
    seqs = [next_seq(state, "grid-op") for _ in range(5)]
    assert seqs == sorted(set(seqs)) and len(seqs) == 5
    state.write_text(json.dumps({"seq": {"grid-op": 10**15}}))
    assert next_seq(state, "grid-op") == 10**15 + 1, "a seq above the clock is kept and followed"
    clock_ms = int(time.time() * 1000)
    assert next_seq(state, "other-op") >= clock_ms, "a new operator starts at the clock"


def test_registry_operator_add(tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str | None) -> None:
    """The one test here whose subject is the store: on both."""
    LocalIngest(tmp_path, store_url).store.close()
    config = write_ingest_config(tmp_path, store_url=store_url)
    key = SigningKey(bytes([0x61] * 32))
    code = main(
        [
            "registry",
            "operator",
            "add",
            "--config",
            str(config),
            "--operator",
            "kansai-grid",
            "--pubkey",
            key.public_key.hex(),
            "--name",
            "Kansai grid operations",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert 'id = "kansai-grid"' in out and key.public_key.hex() in out
    ((data,),) = rows(location(tmp_path, store_url), "SELECT data FROM leaves WHERE type = 4")
    leaf = cbor.loads(bytes(data))  # [type, received_ms, data] (SPEC §5)
    assert isinstance(leaf, list) and isinstance(leaf[2], bytes)
    event = AccountEvent.parse(leaf[2], LEDGER_KEY.public_key)
    assert (event.account, event.role, event.pubkey) == ("kansai-grid", ROLE_OPERATOR, key.public_key)
    assert main(["audit", "ledger", "--config", str(config)]) == 0, "the ledger's check replays the operator's event"
    capsys.readouterr()
    code = main(
        [
            "registry",
            "operator",
            "add",
            "--config",
            str(config),
            "--operator",
            "kansai-grid",
            "--pubkey",
            key.public_key.hex(),
        ]
    )
    _out, err = capsys.readouterr()
    assert code == 2 and "already exists" in err
