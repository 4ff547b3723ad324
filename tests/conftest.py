"""Shared fixtures: core vectors, a real mosquitto, and an MQTT collector."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Mosquitto, ReadingCollector
from support import load_vectors


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return load_vectors()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free loopback port, with persistence."""
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[ReadingCollector]:
    client = ReadingCollector(broker.port)
    yield client
    client.close()
