"""Helpers shared by tests and benchmarks: vectors and a real MicroPython runner."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors" / "core_vectors.json"
RUNNER_MODULE = ROOT / "tests" / "vectors" / "runner.py"
MICROPYTHON_RUNNER = ROOT / "tests" / "micropython" / "run.mjs"
MICROPYTHON_PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


def load_vectors() -> dict[str, Any]:
    with VECTORS.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def run_micropython(script: Path, files: dict[str, Path] | None = None, heap: int | None = None) -> str:
    """Run ``script`` on the MicroPython WebAssembly port; return its stdout.

    Fails (never skips) when Node or the npm package is missing: `make test`
    installs both, so their absence is a broken setup, not an optional test.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; run `make test` (or .ci/run) to set up Node")
    if not MICROPYTHON_PACKAGE.exists():
        pytest.fail("the MicroPython WebAssembly package is missing; run `npm ci` in the repository root")
    command = [node, str(MICROPYTHON_RUNNER), str(script)]
    for fs_path, host_path in (files or {}).items():
        command += ["--file", "%s=%s" % (fs_path, host_path)]
    if heap is not None:
        command += ["--heap", str(heap)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        pytest.fail("MicroPython failed:\n" + done.stderr)
    return done.stdout
