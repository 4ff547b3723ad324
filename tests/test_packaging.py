"""Extras per host: a gateway installs no web framework, no InfluxDB client and no demo broker."""

import importlib.metadata
import re
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"fastapi", "uvicorn", "starlette", "amqtt", "influxdb-client", "rich", "python-multipart"}


def closure(extras: set[str]) -> set[str]:
    """The distributions `pip install crev[EXTRAS]` asks for, following crev's own extras."""
    names: set[str] = set()
    todo, seen = set(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for text in importlib.metadata.requires("crev") or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
                continue
            if requirement.marker is None and extra != "":
                continue
            if requirement.name == "crev":
                todo |= set(requirement.extras) - seen
            else:
                names.add(re.sub(r"[-_.]+", "-", requirement.name).lower())
    return names


def test_each_host_installs_only_what_it_runs() -> None:
    core = closure({""})
    assert core == {"cryptography"}
    gateway = closure({"", "gateway"})
    assert {"paho-mqtt", "pymodbus", "pyserial"} <= gateway
    assert not gateway & HEAVY, gateway & HEAVY
    assert {"fastapi", "uvicorn", "influxdb-client", "paho-mqtt"} <= closure({"", "ingest"})
    assert "paho-mqtt" not in closure({"", "market"})
    assert {"amqtt", "rich", "fastapi", "pymodbus"} <= closure({"", "demo"})


# Refuses the import of what a gateway does not install, then runs the gateway's commands.
BLOCKED_RUN = """
import sys
BLOCKED = {"fastapi", "uvicorn", "starlette", "amqtt", "influxdb_client", "rich", "multipart", "cbor2"}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("a gateway does not install " + name)
        return None

sys.meta_path.insert(0, Refuse())
import crev_gateway.service, crev_gateway.orders, crev_gateway.cli, crev_gateway._backends.mqtt  # noqa
from crev_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_gateway_runs_without_what_it_does_not_install(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[device]\nid = "dgc-pack-0001"\nkey = "gw.key"\ninterval_s = 60\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n\n'
        '[outbox]\npath = "outbox.sqlite"\n\n[[meter]]\nname = "pv"\nprofile = "sdm630"\n'
        'url = "tcp://127.0.0.1:1"\nrole = "generation"\nsource = "solar"\ncounter = "export"\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "gateway", "init", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pubkey" in done.stdout
    # And the run starts (it stops at the meter that does not answer, with its one line).
    ran = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert "a gateway does not install" not in ran.stdout + ran.stderr
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr


@pytest.mark.parametrize("unit", ["gateway/systemd/crev-gateway.service", "ingest/systemd/crev-ingest.service",
                                  "market/systemd/crev-market.service"])  # fmt: skip
def test_the_systemd_units_run_the_crev_command(unit: str) -> None:
    parser = ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / unit)
    command = parser["Service"]["ExecStart"].split()
    assert command[0] == "/opt/crev/venv/bin/crev" and command[2] == "run" and "--config" in command
    assert command[1] in unit
    assert parser["Service"]["User"] == "crev" and parser["Install"]["WantedBy"] == "multi-user.target"
