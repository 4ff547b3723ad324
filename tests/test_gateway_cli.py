"""What an installer sees: `crev gateway init` and one-line configuration errors."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from harness import crev_command, free_port

from crev.keys import SigningKey
from crev.reading import ChainHead
from crev_gateway import OutboxError
from crev_gateway.outbox import Outbox

GOOD = """
[device]
id = "dgc-cli-0001"
key = "device.key"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[meter]]
name = "pv"
profile = "sdm630"
url = "tcp://127.0.0.1:%d"
role = "generation"
source = "solar"
"""


def crev(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(crev_command(*args), capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_init_creates_a_private_key_once(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(GOOD % free_port())
    done = crev(tmp_path, "gateway", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "device.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    pubkey = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("pubkey"))
    assert SigningKey(bytes.fromhex(key_file.read_text().strip())).public_key.hex() == pubkey
    assert "dgc-cli-0001" in done.stdout
    line = one_line_error(crev(tmp_path, "gateway", "init", "--config", str(config)))
    assert "already exists" in line
    assert SigningKey(bytes.fromhex(key_file.read_text().strip())).public_key.hex() == pubkey


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda t: t.replace('profile = "sdm630"', 'profile = "sdm999"'),
            "unknown (available: sdm120, sdm630, sunspec)",
        ),
        (lambda t: t.replace('url = "tcp://127.0.0.1:', 'url = "http://127.0.0.1:'), "is not tcp://HOST:PORT"),
        (lambda t: t.replace('id = "dgc-cli-0001"', 'id = "DGC_1"'), "is not a device id"),
        (lambda t: t.replace('url = "mqtt://127.0.0.1:1"', 'url = "127.0.0.1:1883"'), "must look like mqtt://"),
        (lambda t: t.replace('source = "solar"', 'source = "sunshine"'), "must be one of solar, wind"),
        (lambda t: t + "[outbox]\nmax_readings = -5\n", "max_readings must be between"),
        (lambda t: t.replace('role = "generation"', 'role = "grid"'), "grid meters give an import"),
        (lambda t: t + "[device\n", "is not valid TOML"),
    ],
)
def test_bad_configuration_gets_one_clear_line(tmp_path: Path, change: object, expected: str) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(change(GOOD % free_port()))  # type: ignore[operator]
    line = one_line_error(crev(tmp_path, "gateway", "run", "--config", str(config)))
    assert expected in line


def test_missing_key_and_unreachable_meter_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(GOOD % free_port())
    line = one_line_error(crev(tmp_path, "gateway", "run", "--config", str(config)))
    assert "crev gateway init" in line
    assert crev(tmp_path, "gateway", "init", "--config", str(config)).returncode == 0
    line = one_line_error(crev(tmp_path, "gateway", "run", "--config", str(config)))
    assert "meter 'pv'" in line and "check the wiring" in line
    missing = one_line_error(crev(tmp_path, "gateway", "run", "--config", str(tmp_path / "nope.toml")))
    assert "does not exist" in missing


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(GOOD % free_port())
    assert crev(tmp_path, "gateway", "init", "--config", str(config)).returncode == 0
    os.chmod(tmp_path / "device.key", 0o644)
    assert "chmod 600" in one_line_error(crev(tmp_path, "gateway", "run", "--config", str(config)))


def test_outbox_keeps_the_chain_across_reopen_and_refuses_another_key(tmp_path: Path) -> None:
    key = SigningKey(bytes(range(32)))
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, "dgc-outbox-0001", key.kid)
    channels = [(0, "PV", 1, 1000)]
    head = outbox.head()
    for t1 in (1_790_000_060, 1_790_000_120, 1_790_000_180):
        reading = head.next_reading("dgc-outbox-0001", t1, 1, channels, "t/1", t0=t1 - 60)
        cose = reading.sign(key)
        outbox.commit(reading.seq, t1, cose)
        head = head.advance(reading, cose)
    outbox.acknowledge([0, 1, 2])
    assert outbox.depth() == 0
    outbox.close()

    reopened = Outbox(path, "dgc-outbox-0001", key.kid)
    restored: ChainHead = reopened.head()
    assert restored.next_seq == 3 and restored.prev_hash == head.prev_hash and restored.last_t1 == 1_790_000_180
    reopened.close()
    with pytest.raises(OutboxError, match="belongs to device"):
        Outbox(path, "dgc-outbox-0001", SigningKey(bytes(32)).kid)
