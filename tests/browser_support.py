"""The pages in a real Chromium: a FastAPI app served on loopback, and a Node check script driving the browser."""

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from harness import free_port, port_open, wait_for
from support import ROOT

ARTIFACTS = ROOT / "test-artifacts"  # screenshots, kept for people to look at


def require_chromium() -> None:
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        pytest.fail("Debian's chromium is not installed; .ci/run installs it (apt-get install chromium)")


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on a free loopback port, by a real uvicorn in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: port_open(port), 20, "the page's server to listen")
        yield "http://127.0.0.1:%d" % port
    finally:
        server.should_exit = True
        thread.join(10)


def browser_check(script: Path, *args: str, timeout: float = 180) -> dict[str, Any]:
    """Run a check script under Node; what it saw, from its last line of JSON."""
    done = subprocess.run(["node", str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen["error"]
    return seen
